"""Initialisation: quality of k-means|| vs scikit-learn's k-means++, and its cost at scale.

    python benchmarks/bench_init.py quality    # final inertia over 10 seeds: blobs, digits, pixels
    python benchmarks/bench_init.py speed      # init time in Lloyd passes, 4M x 16 .. 20M x 32
    python benchmarks/bench_init.py plusplus   # greedy k-means++ vs scikit-learn's, in memory
    python benchmarks/bench_init.py restarts   # n_init=R sharing passes vs R separate fits
    python benchmarks/bench_init.py all

``--init 3:2 5:2`` compares k-means|| settings (rounds:oversampling) in the
quality and speed suites (default: KMeans' own defaults).

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


def init_kwargs(config: tuple[int, float] | None, rounds: str, oversampling: str) -> dict:
    """Keyword arguments setting k-means|| (rounds, l/k); none for the defaults."""
    return {} if config is None else {rounds: config[0], oversampling: config[1]}


def describe_init(config: tuple[int, float] | None) -> str:
    return "defaults" if config is None else f"rounds={config[0]} l={config[1]:g}k"


def quality_on(name: str, X: np.ndarray, k: int, chunk_rows: int, configs: list) -> list:
    """Final inertia over SEEDS: dkmeans for each (rounds, oversampling), scikit-learn once."""
    import dask.array as da
    from sklearn.cluster import KMeans as SKKMeans

    import dkmeans

    arr = da.from_array(X, chunks=(chunk_rows, -1))
    ours = {config: ([], []) for config in configs}
    theirs, theirs_s = [], []
    for seed in SEEDS:
        for config in configs:
            kwargs = init_kwargs(config, "init_rounds", "init_oversampling")
            model = dkmeans.KMeans(k, random_state=seed, **kwargs)
            start = time.perf_counter()
            ours[config][0].append(model.fit(arr).inertia_)
            ours[config][1].append(time.perf_counter() - start)
        start = time.perf_counter()
        sk = SKKMeans(k, init="k-means++", n_init=1, algorithm="lloyd", random_state=seed)
        theirs.append(sk.fit(X).inertia_)
        theirs_s.append(time.perf_counter() - start)
    rows = [("sklearn k-means++", theirs, theirs_s)]
    rows += [
        (f"dkmeans k-means|| {describe_init(config)}", values, seconds)
        for config, (values, seconds) in ours.items()
    ]
    results = []
    for label, values, seconds in rows:
        ratio = statistics.median(values) / statistics.median(theirs)
        print(
            f"{name}: {label:<30} {describe(values)}  ratio of medians {ratio:.4f}  "
            f"(median fit {np.median(seconds):.2f}s)",
            flush=True,
        )
        results.append({"name": name, "config": label, "ratio": ratio})
    return results


def quality(quick: bool, configs: list) -> None:
    from sklearn.datasets import load_digits, load_sample_image, make_blobs

    n = 100_000 if quick else 1_000_000
    X, _ = make_blobs(n_samples=n, n_features=32, centers=64, cluster_std=4.0, random_state=0)
    quality_on(f"blobs {n:,} x 32 f32, k=64", X.astype(np.float32), 64, 250_000, configs)
    digits = load_digits().data.astype(np.float64)
    quality_on("digits 1,797 x 64, k=10", digits, 10, 500, configs)
    pixels = load_sample_image("china.jpg").reshape(-1, 3) / 255.0
    quality_on(f"china pixels {len(pixels):,} x 3, k=16", pixels, 16, 50_000, configs)


# The shapes of the issue "Initialisation at the speed of a pass": the demo's
# data (4M x 16, k=8, blobs of spread 5) and 32 features at k=64 (spread 4),
# float32 Zarr on disk, chunks of 250,000 rows.
SPEED_SHAPES = [(4_000_000, 16, 8, 5.0), (2_000_000, 32, 64, 4.0), (20_000_000, 32, 64, 4.0)]


def init_speed(path: str, n: int, d: int, k: int, spread: float, repeats: int, configs) -> list:
    """k-means|| in Lloyd passes' worth of time, threaded scheduler, for each (rounds, l/k).

    In the same run and alternating: a bare read (``X.sum(axis=0)``), a
    Lloyd iteration (the median of a fit's iterations from the centers found
    here, ``history_``; the fits at these shapes reach a fixed point in a few
    iterations) and k-means||; medians of ``repeats``. Passes are row-block
    reads of X / its number of blocks.
    """
    import dask
    import zarr

    import dkmeans
    from dkmeans.datasets import make_blobs_zarr
    from dkmeans.seeding import initial_centers, spawn_generators

    if not os.path.exists(path) or zarr.open_array(path, mode="r").shape != (n, d):
        make_blobs_zarr(
            path, n_samples=n, n_features=d, n_centers=k, chunk_rows=250_000, cluster_std=spread
        )
    array = zarr.open_array(path, mode="r")
    name = f"{n:,} x {d} float32 Zarr, k={k}"
    with dask.config.set(scheduler="threads"):
        source, X = counting_dask_array(array, array.chunks[0])
        n_blocks = X.numblocks[0]

        def init(config) -> tuple[float, float, np.ndarray]:
            source.reads = 0
            start = time.perf_counter()
            (centers,) = initial_centers(
                X,
                k,
                "k-means||",
                rngs=spawn_generators(np.random.default_rng(0), 1),
                **init_kwargs(config, "rounds", "oversampling"),
            )
            return time.perf_counter() - start, source.reads / n_blocks, centers

        def read() -> float:
            start = time.perf_counter()
            X.sum(axis=0).compute()
            return time.perf_counter() - start

        passes = {config: init(config)[1] for config in configs}  # also compiles, warms up
        centers = init(configs[0])[2]

        def lloyd_pass() -> float:
            """Median seconds of a fit's iterations after the first (up to 10, tol=0)."""
            model = dkmeans.KMeans(k, init=centers, max_iter=10, tol=0).fit(X)
            return statistics.median(record["seconds"] for record in model.history_[1:])

        reads, lloyds = [], []
        inits: dict = {config: [] for config in configs}
        for _ in range(repeats):
            reads.append(read())
            for config in configs:
                inits[config].append(init(config)[0])
            lloyds.append(lloyd_pass())
    read_s, lloyd_s = statistics.median(reads), statistics.median(lloyds)
    print(f"{name:<34} read {read_s:6.2f}s  Lloyd pass {lloyd_s:6.2f}s", flush=True)
    rows = []
    for config, times in inits.items():
        init_s = statistics.median(times)
        print(
            f"  k-means|| {describe_init(config)}  {init_s:6.2f}s in "
            f"{passes[config]:.0f} passes = {init_s / lloyd_s:5.1f} Lloyd passes, "
            f"{init_s / read_s:5.1f} reads",
            flush=True,
        )
        rows.append({"name": name, "read": read_s, "lloyd": lloyd_s, "init": init_s})
    return rows


def plusplus(repeats: int, quick: bool) -> None:
    """Greedy k-means++ on in-memory rows: dkmeans' against scikit-learn's ``kmeans_plusplus``.

    The same rows (1M x 16 float32 blobs, k=32), the same number of local
    trials (scikit-learn's 2 + ln k), alternating, medians of ``repeats``.
    """
    from sklearn.cluster import kmeans_plusplus
    from sklearn.datasets import make_blobs

    from dkmeans.seeding import greedy_kmeans_plusplus

    n, k = (100_000 if quick else 1_000_000), 32
    X, _ = make_blobs(n_samples=n, n_features=16, centers=k, random_state=0)
    X = X.astype(np.float32)
    ours, theirs = [], []
    for seed in range(repeats + 1):  # the first compiles
        start = time.perf_counter()
        greedy_kmeans_plusplus(X, k, np.random.default_rng(seed))
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        kmeans_plusplus(X, k, random_state=seed)
        theirs.append(time.perf_counter() - start)
    ours_s, theirs_s = statistics.median(ours[1:]), statistics.median(theirs[1:])
    print(
        f"greedy k-means++ {n:,} x 16 float32, k={k}: dkmeans {ours_s:.3f}s  "
        f"scikit-learn kmeans_plusplus {theirs_s:.3f}s  ratio {ours_s / theirs_s:.2f}",
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
    parser.add_argument("suite", choices=["quality", "speed", "plusplus", "restarts", "all"])
    parser.add_argument(
        "--data",
        default=os.path.join(tempfile.gettempdir(), "dkmeans-bench"),
        help="directory for the Zarr arrays of the speed and restarts suites (kept between runs)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (medians)")
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument(
        "--init",
        nargs="+",
        default=[],
        metavar="ROUNDS:OVERSAMPLING",
        help="k-means|| settings to compare in the quality suite (default: KMeans' own)",
    )
    args = parser.parse_args(argv)
    print(
        f"machine: {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; python {sys.version.split()[0]}"
    )
    # None: KMeans' defaults (which also runs against trees without the parameters)
    configs = [(int(r), float(o)) for r, o in (c.split(":") for c in args.init)] or [None]
    if args.suite in ("quality", "all"):
        quality(args.quick, configs)
    if args.suite in ("speed", "all"):
        os.makedirs(args.data, exist_ok=True)
        for n, d, k, spread in SPEED_SHAPES:
            n = n // 20 if args.quick else n
            path = os.path.join(args.data, f"blobs-{n}x{d}-k{k}.zarr")
            init_speed(path, n, d, k, spread, args.repeats, configs)
    if args.suite in ("plusplus", "all"):
        plusplus(args.repeats, args.quick)
    if args.suite in ("restarts", "all"):
        os.makedirs(args.data, exist_ok=True)
        n = 1_000_000 if args.quick else 8_000_000
        restarts(os.path.join(args.data, f"blobs-{n}x32-k16.zarr"), n)


if __name__ == "__main__":
    main()
