"""Checks on user input, with errors that say what is wrong and where.

Everything that can be checked without reading the data is checked before
any work starts (shape, dtype, parameters, NumPy inputs in full). What needs
the data of a lazy input (NaN/inf in a Zarr block, negative weights in a
dask array) is checked by the first pass, block by block, and the error
names the block and the row.
"""

from __future__ import annotations

import numbers

import numpy as np


def check_n_clusters(n_clusters, n_samples: int) -> int:
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, numbers.Integral):
        raise TypeError(f"n_clusters must be an integer, got {n_clusters!r}")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got n_clusters={n_clusters}")
    if n_clusters > n_samples:
        raise ValueError(
            f"n_clusters={n_clusters} is larger than the number of samples, "
            f"n_samples={n_samples}: every cluster needs at least one point"
        )
    return int(n_clusters)


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"tol must be a real number >= 0, got {tol!r}")
    return float(tol)


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
