"""Fit a fixed set of problems and print a digest of each result (one JSON object).

    python tests/determinism_driver.py WORKDIR

Run by tests/test_determinism.py in subprocesses whose environment selects
another BLAS kernel (OPENBLAS_CORETYPE), another numba target
(NUMBA_CPU_NAME=generic) or fewer of NumPy's SIMD paths
(NPY_DISABLE_CPU_FEATURES): the digests must not change. WORKDIR holds the
Zarr inputs (written by the first run, read by the others).
"""

import hashlib
import json
import os
import sys

import dask.array as da
import numpy as np
import zarr

from dkmeans import KMeans


def digest(model) -> dict[str, str]:
    history = [
        (r["objective"], r["labels_changed"], r["center_shift"], r["reseeded"])
        for r in model.history_
    ]
    parts = {
        "centers": model.cluster_centers_.tobytes(),
        "labels": np.asarray(model.labels_.compute(), dtype=np.int32).tobytes(),
        "inertia": repr(float(model.inertia_)).encode(),
        "history": repr(history).encode(),
    }
    return {key: hashlib.sha256(value).hexdigest()[:16] for key, value in parts.items()}


def pixels(dtype) -> np.ndarray:
    """Image-like colours stored as k/255: exact ties between centers are common."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(24, 3))
    values = palette[rng.integers(24, size=30_000)] + rng.integers(-9, 10, size=(30_000, 3))
    return (values.clip(0, 255) / 255.0).astype(dtype)


def blobs(dtype) -> np.ndarray:
    rng = np.random.default_rng(1)
    centers = rng.uniform(-10, 10, size=(9, 12))
    X = centers[rng.integers(9, size=40_000)] + rng.normal(scale=3.0, size=(40_000, 12))
    return X.astype(dtype)


def wide_blobs() -> np.ndarray:
    rng = np.random.default_rng(5)
    centers = rng.uniform(-10, 10, size=(64, 32))
    X = centers[rng.integers(64, size=300_000)] + rng.normal(scale=4.0, size=(300_000, 32))
    return X.astype(np.float32)


def directions(dtype) -> np.ndarray:
    """Embedding-like rows (metric="cosine"): 12 mean directions, lengths spread widely."""
    rng = np.random.default_rng(6)
    means = rng.normal(size=(12, 24))
    X = means[rng.integers(12, size=15_000)] + rng.normal(scale=0.8, size=(15_000, 24))
    return (X * rng.lognormal(size=(15_000, 1))).astype(dtype)


def zarr_input(workdir: str, name: str, X: np.ndarray) -> str:
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        zarr.create_array(path, shape=X.shape, chunks=(7_000, X.shape[1]), dtype=X.dtype)[:] = X
    return path


def main(workdir: str) -> None:
    weights = np.random.default_rng(2).uniform(0, 2, size=30_000)
    fits = {
        "pixels f32, NumPy, k-means||, n_init=2": lambda: KMeans(
            16, n_init=2, random_state=0, tol=0, max_iter=40
        ).fit(pixels(np.float32)),
        "pixels f64, Zarr, k-means++, weights, tol": lambda: KMeans(
            16, init="k-means++", random_state=1, tol=1e-4
        ).fit(
            zarr_input(workdir, "pixels64.zarr", pixels(np.float64)),
            sample_weight=da.from_array(weights, chunks=7_000),
        ),
        "blobs f32, Zarr, k-means|| weighted, n_init=2": lambda: KMeans(
            9, n_init=2, random_state=2, tol=0, max_iter=25
        ).fit(
            zarr_input(workdir, "blobs32.zarr", blobs(np.float32)),
            sample_weight=np.random.default_rng(3).uniform(0, 2, size=40_000),
        ),
        "blobs f64, NumPy, random, n_init=3, max_iter": lambda: KMeans(
            9, init="random", n_init=3, random_state=3, max_iter=8
        ).fit(blobs(np.float64)),
        "directions f32, Zarr, cosine, k-means|| weighted": lambda: KMeans(
            12, metric="cosine", random_state=5, tol=0, max_iter=30
        ).fit(
            zarr_input(workdir, "directions32.zarr", directions(np.float32)),
            sample_weight=weights[:15_000],
        ),
        "directions f64, NumPy, cosine, random, n_init=2": lambda: KMeans(
            12, init="random", n_init=2, metric="cosine", random_state=6, max_iter=30
        ).fit(directions(np.float64)),
        # The example: GEMM rounding changed this fit's centers and labels.
        "blobs f32 300,000 x 32, k=64, random": lambda: KMeans(
            64, init="random", n_init=1, random_state=4, tol=0, max_iter=30
        ).fit(wide_blobs()),
    }
    print(json.dumps({name: digest(fit()) for name, fit in fits.items()}))


if __name__ == "__main__":
    main(sys.argv[1])
