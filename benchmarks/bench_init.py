"""Initialisation: quality of k-means|| vs scikit-learn's k-means++, and its cost at scale.

    python benchmarks/bench_init.py quality    # final inertia over 10 seeds: blobs, digits
    python benchmarks/bench_init.py scale      # 20M x 32 Zarr: init time and passes vs dask-ml
    python benchmarks/bench_init.py restarts   # n_init=R sharing passes vs R separate fits
    python benchmarks/bench_init.py all

Everything runs in this one process, so the machine's noise hits all
competitors alike. Quality: each seed fits dkmeans (k-means|| + Lloyd) and
scikit-learn (k-means++ + Lloyd, ``algorithm="lloyd"``, ``n_init=1``) with
the default ``tol``, and the distributions of final inertia are printed side
by side with the ratio of the medians (dkmeans / scikit-learn). Passes are
counted as row-block reads of X divided by its number of blocks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import psutil

from dkmeans.testing import counting_dask_array

SEEDS = range(10)


def describe(values: list[float]) -> str:
    q = np.quantile(values, [0, 0.25, 0.5, 0.75, 1])
    return "min {:.6g}  q1 {:.6g}  median {:.6g}  q3 {:.6g}  max {:.6g}".format(*q)


def quality_on(name: str, X: np.ndarray, k: int, chunk_rows: int) -> dict:
    import dask.array as da
    from sklearn.cluster import KMeans as SKKMeans

    import dkmeans

    arr = da.from_array(X, chunks=(chunk_rows, -1))
    ours, theirs, ours_s, theirs_s = [], [], [], []
    for seed in SEEDS:
        start = time.perf_counter()
        ours.append(dkmeans.KMeans(k, random_state=seed).fit(arr).inertia_)
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        sk = SKKMeans(k, init="k-means++", n_init=1, algorithm="lloyd", random_state=seed)
        theirs.append(sk.fit(X).inertia_)
        theirs_s.append(time.perf_counter() - start)
        print(f"  {name} seed {seed}: dkmeans {ours[-1]:.6g}  scikit-learn {theirs[-1]:.6g}")
    ratio = statistics.median(ours) / statistics.median(theirs)
    for label, values, seconds in [
        ("dkmeans k-means||", ours, ours_s),
        ("sklearn k-means++", theirs, theirs_s),
    ]:
        print(f"{name}: {label}  {describe(values)}  (median fit {np.median(seconds):.2f}s)")
    print(f"{name}: median inertia ratio dkmeans / scikit-learn = {ratio:.4f}", flush=True)
    return {"name": name, "ours": ours, "theirs": theirs, "ratio": ratio}


def quality(quick: bool) -> None:
    from sklearn.datasets import load_digits, make_blobs

    n = 100_000 if quick else 1_000_000
    X, _ = make_blobs(n_samples=n, n_features=32, centers=64, cluster_std=4.0, random_state=0)
    quality_on(f"blobs {n:,} x 32 float32, k=64", X.astype(np.float32), 64, 250_000)
    digits = load_digits().data.astype(np.float64)
    quality_on("digits 1,797 x 64, k=10", digits, 10, 500)


def init_at_scale(path: str, n: int, k: int) -> None:
    """k-means|| of dkmeans and of dask-ml on the same Zarr array, threaded scheduler."""
    import dask
    import zarr

    from dkmeans.datasets import make_blobs_zarr
    from dkmeans.seeding import initial_centers, spawn_generators

    d, chunk_rows = 32, 250_000
    if not os.path.exists(path) or zarr.open_array(path, mode="r").shape != (n, d):
        make_blobs_zarr(
            path, n_samples=n, n_features=d, n_centers=64, chunk_rows=chunk_rows, cluster_std=4.0
        )
    array = zarr.open_array(path, mode="r")
    print(f"{path}: {array.shape[0]:,} x {d} {array.dtype}, {array.nbytes / 2**30:.2f} GiB, k={k}")
    results = {}
    with dask.config.set(scheduler="threads"):
        source, X = counting_dask_array(array, array.chunks[0])
        n_blocks = X.numblocks[0]
        start = time.perf_counter()
        X.sum(axis=0).compute()
        read = time.perf_counter() - start
        print(f"bare read pass (X.sum(axis=0)): {read:.1f}s", flush=True)

        source.reads = 0
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        initial_centers(X, k, "k-means||", rngs=spawn_generators(rng, 1))
        results["dkmeans k-means||"] = (time.perf_counter() - start, source.reads / n_blocks)
        try:
            from dask_ml.cluster.k_means import k_init
        except ImportError:
            print("dask-ml not installed: skipped", file=sys.stderr)
        else:
            source.reads = 0
            start = time.perf_counter()
            k_init(X, k, init="k-means||", random_state=0)
            results["dask-ml k-means||"] = (time.perf_counter() - start, source.reads / n_blocks)
    ours_seconds = results["dkmeans k-means||"][0]
    for name, (seconds, passes) in results.items():
        print(
            f"{name:<20} {seconds:8.1f}s  {passes:5.2f} passes  {seconds / read:6.1f} read passes"
            f"  ratio ours/theirs {ours_seconds / seconds:5.2f}",
            flush=True,
        )


def restarts(path: str, n: int) -> None:
    """n_init=R restarts sharing each pass vs R separate fits, on a Zarr array on disk.

    tol=0 and a fixed max_iter, so every run does the same number of
    iterations whatever its seed: the two sides do the same arithmetic, and
    differ in how often they read X.
    """
    import dask
    import zarr

    import dkmeans
    from dkmeans.datasets import make_blobs_zarr

    k, iters = 16, 10
    if not os.path.exists(path) or zarr.open_array(path, mode="r").shape != (n, 32):
        make_blobs_zarr(path, n_samples=n, n_features=32, n_centers=k, chunk_rows=250_000)
    array = zarr.open_array(path, mode="r")
    print(f"{path}: {n:,} x 32 float32 Zarr, k={k}, {iters} iterations per run, init='random'")
    with dask.config.set(scheduler="threads"):
        source, X = counting_dask_array(array, array.chunks[0])
        n_blocks = X.numblocks[0]

        def fit(runs: int, seed: int) -> float:
            model = dkmeans.KMeans(
                k, init="random", n_init=runs, max_iter=iters, tol=0, random_state=seed
            )
            return model.fit(X).inertia_

        for runs in (1, 4, 10):
            source.reads = 0
            start = time.perf_counter()
            fit(runs, 0)
            shared_s, shared_passes = time.perf_counter() - start, source.reads / n_blocks
            source.reads = 0
            start = time.perf_counter()
            for seed in range(runs):
                fit(1, seed)
            separate_s, separate_passes = time.perf_counter() - start, source.reads / n_blocks
            print(
                f"n_init={runs:<3} shared: {shared_s:6.1f}s {shared_passes:5.1f} passes | "
                f"{runs} separate fits: {separate_s:6.1f}s {separate_passes:5.1f} passes | "
                f"time ratio shared/separate {shared_s / separate_s:.2f}",
                flush=True,
            )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["quality", "scale", "restarts", "all"])
    parser.add_argument(
        "--data",
        default=os.path.join(tempfile.gettempdir(), "dkmeans-bench"),
        help="directory for the Zarr array of the scale suite (kept between runs)",
    )
    parser.add_argument("--k", type=int, default=64, help="clusters for the scale suite")
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    args = parser.parse_args(argv)
    print(
        f"machine: {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; python {sys.version.split()[0]}"
    )
    if args.suite in ("quality", "all"):
        quality(args.quick)
    if args.suite in ("scale", "all"):
        os.makedirs(args.data, exist_ok=True)
        n = 2_000_000 if args.quick else 20_000_000
        init_at_scale(os.path.join(args.data, f"blobs-{n}x32.zarr"), n, args.k)
    if args.suite in ("restarts", "all"):
        os.makedirs(args.data, exist_ok=True)
        n = 1_000_000 if args.quick else 8_000_000
        restarts(os.path.join(args.data, f"blobs-{n}x32-k16.zarr"), n)


if __name__ == "__main__":
    main()
