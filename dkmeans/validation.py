"""Checks on user input: one table of parameters, and checks on the data.

:data:`PARAMETERS` is the one description of every parameter of
:class:`~dkmeans.KMeans`: its default, its check and what it means. The
estimator checks its parameters with it when it fits; the job files of the
``dkmeans`` command take the same keys in their ``model`` section
(:mod:`dkmeans.jobs`). A value of the wrong type raises
:class:`~dkmeans.errors.ParameterTypeError` (a ``TypeError``), a value of the
right type but out of range a ``ValueError``, both naming the parameter.

Everything that can be checked without reading the data is checked before
any work starts (shape, dtype, parameters, NumPy inputs in full). What needs
the data of a lazy input (NaN/inf in a Zarr block, negative weights in a
dask array) is checked by the first pass, block by block, and the error
names the block and the row.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dkmeans.errors import ParameterTypeError

INIT_METHODS = ("k-means||", "k-means++", "random")
LABEL_STORES = ("auto", "memory", "zarr")
ALGORITHMS = ("auto", "lloyd", "bounded")
METRICS = ("euclidean", "cosine")


def integer_check(minimum: int, allow_none: bool = False) -> Callable[[Any, str], Any]:
    """Check: an integer >= ``minimum`` (or None)."""
    kind = "an integer" + (" or None" if allow_none else "")

    def check(value, name):
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ParameterTypeError(
                f"{name} must be {kind}, got {value!r} ({type(value).__name__})"
            )
        if value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    return check


def _non_negative_real(value, name):
    message = f"{name} must be a real number >= 0, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterTypeError(message)
    if not value >= 0:  # NaN too
        raise ValueError(message)
    return float(value)


def _positive_real(value, name):
    message = f"{name} must be a real number > 0, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterTypeError(message)
    if not 0 < value < math.inf:  # NaN too
        raise ValueError(message)
    return float(value)


def _init(value, name):
    message = f"{name} must be 'k-means||', 'k-means++', 'random' or an array, got {value!r}"
    if isinstance(value, str):
        if value not in INIT_METHODS:
            raise ValueError(message)
        return value
    if isinstance(value, np.ndarray | list | tuple) or hasattr(value, "__array__"):
        return value  # its shape and values are checked against X (dkmeans.seeding)
    raise ParameterTypeError(message)


def _n_init(value, name):
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{name} must be 'auto' or an integer >= 1, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterTypeError(f"{name} must be 'auto' or an integer, got {value!r}")
    return integer_check(1)(value, name)


def _random_state(value, name):
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if value is None or integer or isinstance(value, np.random.Generator | np.random.RandomState):
        return value
    raise ParameterTypeError(
        f"{name} must be None, an int, a numpy Generator or RandomState, got {value!r}"
    )


def choice_check(choices: tuple[str, ...]) -> Callable[[Any, str], Any]:
    """Check: one of the strings ``choices``."""
    quoted = [repr(choice) for choice in choices]
    allowed = f"{', '.join(quoted[:-1])} or {quoted[-1]}"

    def check(value, name):
        message = f"{name} must be {allowed}, got {value!r}"
        if not isinstance(value, str):
            raise ParameterTypeError(message)
        if value not in choices:
            raise ValueError(message)
        return value

    return check


def _label_store(value, name):
    if isinstance(value, str | os.PathLike):
        return value  # a name of LABEL_STORES, or a path or URL
    raise ParameterTypeError(
        f"{name} must be 'auto', 'memory', 'zarr' or a path/URL, got {value!r}"
    )


def _scratch(value, name):
    if value is None or isinstance(value, str | os.PathLike):
        return value
    raise ParameterTypeError(f"{name} must be None or a path/URL, got {value!r}")


def _verbose(value, name):
    if isinstance(value, bool):
        return value
    return bool(integer_check(0)(value, name))


@dataclass(frozen=True)
class Parameter:
    """One parameter of KMeans: default, check, meaning, and whether job files take it."""

    default: Any
    check: Callable[[Any, str], Any]  # (value, name) -> value (normalised), or raises
    doc: str
    in_job: bool = True  # a key of the job file's model section
    job_default: Any = None  # the job file's default, where it differs (see job_defaults)


PARAMETERS: dict[str, Parameter] = {
    "n_clusters": Parameter(8, integer_check(1), "number of clusters, k"),
    "init": Parameter(
        "k-means||",
        _init,
        "'k-means||', 'k-means++', 'random', or initial centers (k, d) "
        "(in a job file: the path of a Zarr array)",
    ),
    "n_init": Parameter(
        "auto", _n_init, "runs from different seeds, sharing each pass; the best is kept"
    ),
    "max_iter": Parameter(300, integer_check(1), "most Lloyd iterations"),
    "tol": Parameter(1e-4, _non_negative_real, "center-shift tolerance (scikit-learn's meaning)"),
    "algorithm": Parameter(
        "auto",
        choice_check(ALGORITHMS),
        "'lloyd' (every row every iteration), 'bounded' (the same labels, reading only the "
        "rows that can change) or 'auto' ('bounded' where it pays, see KMeans)",
    ),
    "metric": Parameter(
        "euclidean",
        choice_check(METRICS),
        "'euclidean' (k-means) or 'cosine' (spherical k-means: rows compared by direction)",
    ),
    "random_state": Parameter(
        None,
        _random_state,
        "seed of the initialisation (None: fresh entropy; job files default to 0)",
        job_default=0,
    ),
    "split_every": Parameter(8, integer_check(2), "fan-in of the reduction tree"),
    "label_store": Parameter(
        "auto",
        _label_store,
        "where labels live between passes: 'auto', 'memory', 'zarr' or a path/URL",
        in_job=False,  # a job keeps them in its output group
    ),
    "scratch": Parameter(
        None,
        _scratch,
        "where temporary per-row state goes when it is not kept in memory: a path or URL "
        "every worker can reach (None: a temporary directory of the machine that runs the fit)",
    ),
    "init_sample_size": Parameter(
        None, integer_check(1, allow_none=True), "rows k-means++ samples from a large X"
    ),
    "init_rounds": Parameter(
        3, integer_check(1), "k-means|| rounds of oversampling (passes over X: rounds + 1)"
    ),
    "init_oversampling": Parameter(
        2.0, _positive_real, "k-means|| candidates drawn per round, as a multiple of k"
    ),
    "retries": Parameter(
        2, integer_check(0), "times a failed task (distributed) or I/O-failed pass is re-run"
    ),
    "verbose": Parameter(False, _verbose, "report every iteration", in_job=False),
}


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter checked (and normalised) by its entry in :data:`PARAMETERS`."""
    return {name: PARAMETERS[name].check(value, name) for name, value in params.items()}


def job_defaults() -> dict[str, Any]:
    """The defaults of the parameters a job file's model section takes."""
    return {
        name: p.default if p.job_default is None else p.job_default
        for name, p in PARAMETERS.items()
        if p.in_job
    }


def n_runs(n_init: str | int, init: Any) -> int:
    """``n_init`` resolved: "auto" by scikit-learn's rule, one run for an array ``init``."""
    explicit = not isinstance(init, str)
    if n_init == "auto":
        return 10 if (not explicit and init == "random") else 1
    if explicit and n_init != 1:
        warnings.warn(
            f"Explicit initial center position passed: performing only one init in "
            f"KMeans instead of n_init={n_init}.",
            RuntimeWarning,
            stacklevel=3,  # the caller of KMeans.fit
        )
        return 1
    return n_init


def check_n_clusters(n_clusters: int, n_samples: int) -> int:
    """k against the data: every cluster needs a point."""
    if n_clusters > n_samples:
        raise ValueError(
            f"n_clusters={n_clusters} is larger than the number of samples, "
            f"n_samples={n_samples}: every cluster needs at least one point"
        )
    return n_clusters


def working_dtype(dtype: np.dtype, name: str = "X") -> np.dtype:
    """The float dtype the data is clustered in: float32 stays, others go to float64."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {dtype}")
    if dtype == np.float32 or dtype == np.float16:
        return np.dtype(np.float32)
    if dtype.kind in "biuf":
        return np.dtype(np.float64)
    if dtype.kind == "O":  # converted by NumPy, which says what it cannot convert
        return np.dtype(np.float64)
    raise TypeError(
        f"{name} must hold numbers, got dtype {dtype} ({dtype.kind!r} kind); "
        "convert it to float32 or float64 first"
    )


def check_shape(shape: tuple, name: str = "X") -> tuple[int, int]:
    if len(shape) != 2:
        hint = (
            " Reshape your data either using array.reshape(-1, 1) if your data has a "
            "single feature or array.reshape(1, -1) if it contains a single sample."
            if len(shape) == 1
            else ""
        )
        raise ValueError(
            f"Expected 2D array {name} of shape (n_samples, n_features), "
            f"got {len(shape)}-D array of shape {shape} instead.{hint}"
        )
    n, d = shape
    if any(isinstance(s, float) and np.isnan(s) for s in shape):
        raise ValueError(
            f"{name} has unknown chunk sizes (shape {shape}); call "
            f"{name}.compute_chunk_sizes() first"
        )
    if n < 1:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={shape}) while a minimum of 1 is required: "
            f"{name} is empty"
        )
    if d < 1:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={shape}) while a minimum of 1 is required: "
            f"{name} has no columns"
        )
    return int(n), int(d)


def check_finite_block(x: np.ndarray, block: int, row_offset: int, name: str = "X") -> None:
    """Raise if a block holds NaN or infinity, naming the block and first bad row."""
    if x.size == 0 or (np.isfinite(x.min()) and np.isfinite(x.max())):
        return  # min/max propagate NaN and reach ±inf: two reductions, no mask
    finite = np.isfinite(x)
    bad_row = int(np.flatnonzero(~finite.all(axis=tuple(range(1, x.ndim))))[0])
    raise ValueError(
        f"{name} contains NaN or infinity: block {block} (rows {row_offset}"
        f"-{row_offset + len(x) - 1}), first at row {row_offset + bad_row}"
    )


def check_weights_block(w: np.ndarray, block: int, row_offset: int) -> None:
    """Raise if sample weights are negative or not finite, naming the row."""
    check_finite_block(w, block, row_offset, name="sample_weight")
    if (w < 0).any():
        first = int(np.flatnonzero(w < 0)[0])
        raise ValueError(
            f"sample_weight must be non-negative: block {block}, row {row_offset + first} "
            f"is {w[first]}"
        )


def check_features(n_features: int, expected: int, estimator: str = "KMeans") -> None:
    if n_features != expected:
        raise ValueError(
            f"X has {n_features} features, but {estimator} is expecting {expected} "
            "features as input."
        )
