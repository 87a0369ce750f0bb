"""Demo: write a few million blob points to Zarr, cluster them, print the result.

Run with ``python -m dkmeans.demo`` (``--help`` for sizes). Uses Dask's
default threaded scheduler; nothing to start.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from dkmeans import KMeans
from dkmeans.datasets import make_blobs_zarr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dkmeans.demo", description=__doc__)
    parser.add_argument("--n-samples", type=int, default=4_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument(
        "--path",
        default=None,
        help="where to write the Zarr data (default: a temporary directory)",
    )
    parser.add_argument(
        "--cluster-std", type=float, default=5.0, help="spread of each blob (they overlap)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dkmeans-demo-") as tmp:
        path = args.path or os.path.join(tmp, "blobs.zarr")
        start = time.perf_counter()
        data = make_blobs_zarr(
            path,
            n_samples=args.n_samples,
            n_features=args.n_features,
            n_centers=args.n_clusters,
            chunk_rows=args.chunk_rows,
            cluster_std=args.cluster_std,
            seed=args.seed,
        )
        size_mb = data.nbytes / 2**20
        print(
            f"wrote {path}: {data.shape[0]:,} x {data.shape[1]} {data.dtype} "
            f"({size_mb:.0f} MiB, chunks of {data.chunks[0]:,} rows) "
            f"in {time.perf_counter() - start:.1f}s"
        )
        model = KMeans(args.n_clusters, random_state=args.seed, verbose=True)
        start = time.perf_counter()
        model.fit(path)
        elapsed = time.perf_counter() - start
        sizes = np.bincount(model.labels_.compute(), minlength=args.n_clusters)
        truth = np.asarray(data.attrs["centers"])
        # Distance from each true blob center to the nearest fitted center.
        gap = np.sqrt(((truth[:, None] - model.cluster_centers_[None]) ** 2).sum(-1)).min(1)
        print(
            f"fit: {elapsed:.1f}s, {model.n_iter_} iterations, stop reason: {model.stop_reason_}"
        )
        print(f"inertia: {model.inertia_:.6g}")
        print(f"cluster sizes: {sizes.tolist()}")
        print(f"distance of each true center to the nearest fitted one: max {gap.max():.3f}")


if __name__ == "__main__":
    main()
