"""Exact labels: how many rows the certificate sends to the slow path, and what it fixes.

    python benchmarks/bench_exact.py [--quick]

For each dataset, at the initial centers and after a fit (20 iterations): the
fraction of rows whose label the fast path (GEMM scores with a rounding bound)
could not certify and that were decided again (direct float64 distances, then
exact arithmetic), and how many rows a plain GEMM argmin in the data's dtype
(what scikit-learn and dkmeans before its certified labels computed) labels
differently from the exact argmin. Datasets: the in-memory shapes of
bench_lloyd.py (float32 blobs, initial centers drawn from the rows) and the
pixels of scikit-learn's china.jpg as k/255 in float64, k=16, initial
centers drawn from the pixels (where exact ties are common).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_lloyd import blobs

import dkmeans
from dkmeans import kernel
from dkmeans.inputs import default_block_rows


def slow_fraction(X: np.ndarray, centers: np.ndarray) -> float:
    """Rows that took the slow path, over all blocks as a fit cuts NumPy input."""
    rows = default_block_rows(len(X), X[0].nbytes)
    slow = sum(
        kernel.block_stats(X[i : i + rows], centers, label_dtype=np.int32)[0].slow_rows
        for i in range(0, len(X), rows)
    )
    return slow / len(X)


def gemm_disagreements(X: np.ndarray, centers: np.ndarray) -> int:
    """Rows where the GEMM expansion's argmin (in X's dtype) is not the exact label."""
    disagree = 0
    for i in range(0, len(X), 1 << 16):
        block = X[i : i + (1 << 16)]
        scores = np.einsum("ij,ij->i", centers, centers) - 2 * (block @ centers.T)
        disagree += int(np.count_nonzero(scores.argmin(axis=1) != kernel.nearest(block, centers)))
    return disagree


def report(name: str, X: np.ndarray, init: np.ndarray) -> None:
    start = time.perf_counter()
    model = dkmeans.KMeans(len(init), init=init, max_iter=20).fit(X)
    final = model.cluster_centers_.astype(X.dtype)
    for when, centers in (("initial centers", init.astype(X.dtype)), ("after the fit", final)):
        print(
            f"{name:<38} {when:<16} slow path {slow_fraction(X, centers):9.2e} of rows   "
            f"GEMM argmin wrong on {gemm_disagreements(X, centers):6d} of {len(X):,} rows",
            flush=True,
        )
    print(f"{'':<38} ({model.n_iter_} iterations, {time.perf_counter() - start:.1f}s)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows per blob dataset")
    args = parser.parse_args(argv)
    n = 100_000 if args.quick else 1_000_000
    for d, k in ((32, 64), (2, 8), (128, 256)):
        X, init = blobs(n, d, k)
        report(f"blobs {n:,} x {d}, k={k}, float32", X, init)
    from sklearn.datasets import load_sample_image

    pixels = load_sample_image("china.jpg").reshape(-1, 3) / 255.0
    rng = np.random.default_rng(0)
    init = pixels[rng.choice(len(pixels), 16, replace=False)]
    report(f"china.jpg pixels {len(pixels):,} x 3, k=16", pixels, init)


if __name__ == "__main__":
    main()
