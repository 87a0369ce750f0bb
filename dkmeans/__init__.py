"""dkmeans: exact k-means (Lloyd) for arrays larger than memory, on Dask.

Where each part lives (a newcomer finds the algorithm in ``lloyd.py`` and
``kernel.py``):

- ``estimator``: :class:`KMeans`, the scikit-learn compatible front, and :func:`load`
- ``lloyd``: the iteration loop, convergence, history; one pass per iteration
- ``kernel``: per-block kernels, assignment and partial statistics (NumPy/numba, no Dask)
- ``stats``: the per-block statistics and their associative combine (no Dask)
- ``passes``: how every pass runs (task per block, fixed reduction tree, graph or
  in-process, retries, one BLAS thread per task)
- ``state``: per-row state kept between passes (labels, ...), in memory or Zarr
- ``seeding``: initial centers (k-means||, k-means++, random, an array)
- ``sweeps``: :func:`sweep`, choosing k (all k in the same passes, cluster-quality scores)
- ``checkpoint``: the fit's workspace, checkpoints and resume
- ``results``: the result-group format (save, load, describe); ``storage``: groups and
  arrays at paths or fsspec URLs, with storage options
- ``inputs``: opening X and weights (and its unit rows, ``metric="cosine"``);
  ``validation``: the parameter table and data checks
- ``errors``: every public exception and warning
- ``jobs``, ``cli``: YAML job files and the ``dkmeans`` command; ``progress``: reports
- ``datasets``, ``demo``: synthetic data and the demo; ``testing``: helpers for tests
"""

__version__ = "0.1.0"

from dkmeans.errors import (
    CheckpointMismatchError,
    ChunkReadError,
    InputNotFoundError,
    JobError,
    ObjectiveIncreaseWarning,
    ParameterTypeError,
)
from dkmeans.estimator import KMeans, load
from dkmeans.sweeps import Sweep, load_sweep, sweep

__all__ = [
    "CheckpointMismatchError",
    "ChunkReadError",
    "ConvergenceWarning",
    "InputNotFoundError",
    "JobError",
    "KMeans",
    "NotFittedError",
    "ObjectiveIncreaseWarning",
    "ParameterTypeError",
    "Sweep",
    "__version__",
    "load",
    "load_sweep",
    "sweep",
]


def __getattr__(name: str):
    if name in ("NotFittedError", "ConvergenceWarning"):  # made on first use: dkmeans.errors
        from dkmeans import errors

        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
