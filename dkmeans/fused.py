"""The compiled fused hint check (``dkmeans/_fused.c``), where this install and CPU have it.

:func:`hints_hold` flags the rows of a float32 tile whose previous label is
not certain, as :func:`dkmeans.kernel._hints_hold` does from BLAS's products,
but forms the scores itself, in registers (AVX-512). The labels never depend
on whether it runs: the rows it flags are decided as before. Where the
extension was not built (no C compiler at install), the CPU lacks AVX-512, or
``DKMEANS_FUSED=0`` is set in the environment, :data:`AVAILABLE` is false and
the kernels use BLAS and numba alone.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

# The largest k the kernel takes (its score buffer); larger k use BLAS.
MAX_CLUSTERS = 256
LANES = 16  # float32 scores per vector register


def _load() -> ctypes._CFuncPtr | None:
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
    function = library.dk_hints_hold_f32
    pointer = ctypes.c_void_p
    function.argtypes = [
        pointer,  # x
        ctypes.c_int64,  # m
        ctypes.c_int64,  # d
        pointer,  # centers transposed, padded
        pointer,  # squared norms, padded
        ctypes.c_int64,  # k
        pointer,  # hint
        ctypes.c_int64,  # hint's item size
        ctypes.c_double,  # margin
        pointer,  # flagged (bytes)
    ]
    function.restype = ctypes.c_int64
    return function


_HINTS_HOLD = _load()
AVAILABLE = _HINTS_HOLD is not None


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


def hints_hold(
    tile: np.ndarray,
    centers: tuple[np.ndarray, np.ndarray],
    n_clusters: int,
    hint: np.ndarray,
    margin: float,
    flagged: np.ndarray,
) -> int:
    """Flag (in ``flagged``, bool) the rows of ``tile`` whose ``hint`` is not certain.

    ``tile``: float32 rows, C order; ``centers``: from :func:`padded_centers`;
    ``margin``: the tile's (``kernel._tile_margin``), positive. A row is
    certain when every other center's score is ahead of its hint's by more
    than ``margin``. Returns the flagged count, or -1 where the kernel cannot
    run or would certify nothing (then nothing is written).
    """
    if _HINTS_HOLD is None or not 0.0 < margin < np.inf:  # inf: no row is certain
        return -1
    if not (tile.flags.c_contiguous and hint.flags.c_contiguous and len(hint) == len(tile)):
        return -1
    transposed, squared = centers
    m, d = tile.shape
    return _HINTS_HOLD(
        tile.ctypes.data,
        m,
        d,
        transposed.ctypes.data,
        squared.ctypes.data,
        n_clusters,
        hint.ctypes.data,
        hint.itemsize,
        margin,
        flagged.ctypes.data,
    )
