"""The compiled labelling of float32 tiles (``dkmeans/_fused.c``), where it was built and runs.

:func:`label` labels the rows of a float32 tile whose label its scores make
certain, as :func:`dkmeans.kernel._hints_hold` and
:func:`dkmeans.kernel._top2_by_row` do from BLAS's products, but forms the
scores itself, in registers (AVX-512), and flags the others. The labels never
depend on whether it runs: the rows it flags are decided as before. Where the
extension was not built (no C compiler at install), the CPU lacks AVX-512, or
``DKMEANS_FUSED=0`` is set in the environment, :data:`AVAILABLE` is false and
the kernels use BLAS and numba alone.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

LANES = 16  # float32 scores per vector register (the C kernel takes k <= 256)


def _load() -> ctypes._CFuncPtr | None:
    """The C function ``dk_label_f32``, where the library loads and this CPU runs it."""
    if os.environ.get("DKMEANS_FUSED", "1") == "0":
        return None
    try:
        from dkmeans import _fused
    except ImportError:  # built without a C compiler (optional extension)
        return None
    try:
        library = ctypes.CDLL(_fused.__file__)
    except OSError:
        return None
    if not library.dk_fused_available():
        return None
    function = library.dk_label_f32
    pointer = ctypes.c_void_p
    function.argtypes = [
        pointer,  # x
        ctypes.c_int64,  # m
        ctypes.c_int64,  # d
        pointer,  # centers transposed, padded
        pointer,  # squared norms, padded
        ctypes.c_int64,  # k
        pointer,  # hint
        ctypes.c_int64,  # hint's item size (0: no hints)
        ctypes.c_double,  # margin
        pointer,  # labels
        ctypes.c_int64,  # labels' item size
        pointer,  # flagged (bytes)
    ]
    function.restype = ctypes.c_int64
    return function


_LABEL = _load()
AVAILABLE = _LABEL is not None


def padded_centers(values: np.ndarray, squared_norms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float32 centers as the kernel takes them: transposed (d, width) and squared norms.

    ``width`` is k rounded up to whole vector registers, the extra columns zero
    (the kernel masks them out).
    """
    k, d = values.shape
    width = -(-k // LANES) * LANES
    transposed = np.zeros((d, width), dtype=np.float32)
    transposed[:, :k] = values.T
    squared = np.zeros(width, dtype=np.float32)
    squared[:k] = squared_norms
    return transposed, squared


def label(
    tile: np.ndarray,
    centers: tuple[np.ndarray, np.ndarray],
    n_clusters: int,
    hint: np.ndarray,
    margin: float,
    labels: np.ndarray,
    flagged: np.ndarray,
) -> int:
    """Label the rows of ``tile`` that their scores make certain; flag the others.

    ``tile``: float32 rows, C order; ``centers``: from :func:`padded_centers`;
    ``hint``: the rows' previous labels, or empty; ``margin``: the tile's
    (``kernel._tile_margin``). A hint is a row's label where every other
    center's score is ahead of its by more than ``margin``; otherwise the best
    score's center is, where the second-best is that far ahead. ``labels``
    receives those; ``flagged`` (bool) marks the rows left undecided, whose
    count is returned; -1 where the kernel cannot run or would certify
    nothing (an infinite margin), and then nothing is written.
    """
    if _LABEL is None or not 0.0 < margin < np.inf:  # inf: no row is certain
        return -1
    m, d = tile.shape
    hinted = len(hint) > 0
    contiguous = tile.flags.c_contiguous and labels.flags.c_contiguous
    if not contiguous or len(labels) != m or (hinted and not hint.flags.c_contiguous):
        return -1
    if hinted and len(hint) != m:
        return -1
    transposed, squared = centers
    return _LABEL(
        tile.ctypes.data,
        m,
        d,
        transposed.ctypes.data,
        squared.ctypes.data,
        n_clusters,
        hint.ctypes.data if hinted else None,
        hint.itemsize if hinted else 0,
        margin,
        labels.ctypes.data,
        labels.itemsize,
        flagged.ctypes.data,
    )
