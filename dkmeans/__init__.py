"""dkmeans: exact k-means (Lloyd) for arrays larger than memory, on Dask."""

__version__ = "0.1.0"

from dkmeans.checkpoint import CheckpointMismatchError
from dkmeans.estimator import KMeans, NotFittedError, load
from dkmeans.io import ChunkReadError, InputNotFoundError
from dkmeans.lloyd import ObjectiveIncreaseWarning

__all__ = [
    "CheckpointMismatchError",
    "ChunkReadError",
    "InputNotFoundError",
    "KMeans",
    "NotFittedError",
    "ObjectiveIncreaseWarning",
    "__version__",
    "load",
]
