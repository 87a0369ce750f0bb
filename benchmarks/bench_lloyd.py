"""Per-iteration speed and peak memory of dkmeans vs the systems a user would otherwise pick.

    python benchmarks/bench_lloyd.py inmemory   # vs scikit-learn, dask-ml, faiss
    python benchmarks/bench_lloyd.py outofcore  # 20M x 32 Zarr on a 2 x 1 GB LocalCluster
    python benchmarks/bench_lloyd.py scaling    # n = 1M..8M, and time outside the kernels
    python benchmarks/bench_lloyd.py all

Every competitor fits from the same initial centers with tol=0, in this same
process, so the machine's noise hits all alike. Per-iteration time is the
marginal cost of iterations: (T(max_iter=short+extra) - T(max_iter=short)) /
extra, which removes each system's fixed costs (validation, copies, final
assignment pass) from all of them the same way, with the median of
``--repeats`` short fits and of as many long ones (see ``marginal``); ratios
are dkmeans / other (below 1: dkmeans is faster).
Peak memory in memory: tracemalloc's peak over one extra, untimed fit (what
NumPy allocates; faiss allocates in C++ and shows n/a). Out of core: the
workers' peak resident memory, as their monitors report it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import psutil

SHORT, EXTRA = 2, 6  # iterations: marginal cost of EXTRA iterations beyond SHORT
# In memory, fast shapes run more extra iterations (the same number for every
# system, see extra_for); the benchmark's blobs reach a fixed point only after
# 100+ iterations at the default shapes.
MIN_EXTRA_SECONDS, MAX_EXTRA = 0.5, 60


def peak_traced_mib(fit: Callable[[int], int]) -> float:
    """Peak of the memory NumPy (and Python) allocate during one untimed fit, in MiB.

    tracemalloc sees every NumPy array (scikit-learn, dask-ml and dkmeans
    allocate through NumPy) but not memory a C++ library allocates itself
    (faiss), which is reported as n/a.
    """
    tracemalloc.start()
    try:
        fit(SHORT + EXTRA)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def timed_fits(fit: Callable[[int], int], extra: int = EXTRA) -> tuple[float, float]:
    """Seconds of one fit of SHORT iterations and one of SHORT + ``extra``."""
    start = time.perf_counter()
    done_short = fit(SHORT)
    short = time.perf_counter() - start
    start = time.perf_counter()
    done_long = fit(SHORT + extra)
    long = time.perf_counter() - start
    if (done_short, done_long) != (SHORT, SHORT + extra):
        raise RuntimeError(f"a fit stopped early: {done_short}, {done_long} iterations")
    return short, long


def marginal(samples: list[tuple[float, float]], extra: int = EXTRA) -> float:
    """Seconds per iteration from (short, long) fit times: the medians' difference / extra.

    Differencing the medians, not each pair: a hiccup in one short fit (a
    system's fixed costs include copying X, hundreds of MiB of page faults)
    would otherwise shrink that repeat's estimate by hiccup / extra, which
    made single scikit-learn figures look a third faster than it runs.
    """
    shorts, longs = zip(*samples, strict=True)
    return (statistics.median(longs) - statistics.median(shorts)) / extra


def per_iteration(fit: Callable[[int], int], repeats: int) -> float:
    """Marginal seconds per iteration over ``repeats`` pairs of fits."""
    return marginal([timed_fits(fit) for _ in range(repeats)])


def extra_for(fit: Callable[[int], int]) -> int:
    """Extra iterations that take about MIN_EXTRA_SECONDS with ``fit``, within [EXTRA, MAX_EXTRA].

    At a few milliseconds per iteration, EXTRA iterations are shorter than the
    machine's hiccups; more of them keep the difference of two fits well above
    the noise. At most half the iterations ``fit`` runs before a fixed point,
    so that no system (same start, other rounding) stops early.
    """
    seconds = marginal([timed_fits(fit)])
    wanted = int(min(MAX_EXTRA, np.ceil(MIN_EXTRA_SECONDS / max(seconds, 1e-9))))
    if wanted <= EXTRA:
        return EXTRA
    room = fit(SHORT + 2 * wanted) - SHORT  # iterations before a fixed point, up to 2 * wanted
    return max(EXTRA, min(wanted, room // 2))


def blobs(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping float32 blobs (labels keep changing for many iterations) and k init rows."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10, 10, size=(k, d))
    X = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 1 << 20):  # in pieces: no float64 copy of all of X
        stop = min(n, start + (1 << 20))
        X[start:stop] = centers[rng.integers(k, size=stop - start)] + rng.normal(
            scale=4.0, size=(stop - start, d)
        )
    return X, X[rng.choice(n, size=k, replace=False)].copy()


def competitors(
    X: np.ndarray, init: np.ndarray, systems: set[str] | None = None
) -> dict[str, Callable]:
    """Fit functions (iterations -> iterations run) of dkmeans and the ``systems`` asked for."""
    import dask.array as da

    import dkmeans

    n, d = X.shape
    k = len(init)
    wanted = systems or {"scikit-learn", "dask-ml", "faiss"}

    def ours(iters):
        return dkmeans.KMeans(k, init=init, max_iter=iters, tol=0).fit(X).n_iter_

    fits = {"dkmeans": ours}
    try:
        from sklearn.cluster import KMeans as SKKMeans

        def sklearn(iters):
            model = SKKMeans(k, init=init, n_init=1, max_iter=iters, tol=0, algorithm="lloyd")
            return model.fit(X).n_iter_

        fits["scikit-learn"] = sklearn
    except ImportError:
        print("scikit-learn not installed: skipped", file=sys.stderr)
    try:
        if "dask-ml" not in wanted:
            raise ImportError("not asked for")
        from dask_ml.cluster import KMeans as DMKMeans

        from dkmeans.inputs import default_block_rows

        # dask-ml gets dkmeans' blocks (NumPy input is cut into these).
        Xd = da.from_array(X, chunks=(default_block_rows(n, X[0].nbytes), -1))

        def dask_ml(iters):
            return DMKMeans(k, init=init, max_iter=iters, tol=0).fit(Xd).n_iter_

        fits["dask-ml"] = dask_ml
    except ImportError:
        print("dask-ml skipped (not installed or not asked for)", file=sys.stderr)
    try:
        import faiss

        def faiss_kmeans(iters):
            # max_points_per_centroid: use every row (faiss subsamples by default).
            model = faiss.Kmeans(d, k, niter=iters, max_points_per_centroid=n, seed=0)
            model.train(X, init_centroids=init)
            return iters

        fits["faiss"] = faiss_kmeans
    except ImportError:
        print("faiss not installed: skipped", file=sys.stderr)
    return {name: fit for name, fit in fits.items() if name == "dkmeans" or name in wanted}


def in_memory(repeats: int, shapes, systems: set[str] | None = None) -> list[dict]:
    rows = []
    for n, d, k in shapes:
        X, init = blobs(n, d, k)
        fits = competitors(X, init, systems)
        peaks = {}
        for name, fit in fits.items():
            fit(1)  # warm-up: JIT compilation, imports, thread pools
            peaks[name] = float("nan") if name == "faiss" else peak_traced_mib(fit)
        extra = extra_for(fits["dkmeans"])
        # Round robin: each repeat times every system once, so that a slow
        # spell of the machine hits all of them, not one.
        samples = {name: [] for name in fits}
        for _ in range(repeats):
            for name, fit in fits.items():
                # Untimed first: a system's first fit after another system's
                # pays switching costs (0.2-0.3 s for scikit-learn after
                # dask-ml and faiss), which would fall on the short fit only.
                fit(1)
                samples[name].append(timed_fits(fit, extra))
        results = {name: (marginal(samples[name], extra), peaks[name]) for name in fits}
        ours = results["dkmeans"][0]
        for name, (seconds, peak) in results.items():
            row = {
                "suite": "in memory, float32",
                "shape": f"{n:,} x {d}, k={k}",
                "system": name,
                "s/iter": seconds,
                "ours/theirs": ours / seconds,
                "peak MiB": peak,
            }
            rows.append(row)
            print_row(row)
    return rows


def out_of_core(
    repeats: int, path: str, n: int = 20_000_000, systems: set[str] | None = None
) -> list[dict]:
    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster

    import dkmeans
    from dkmeans.datasets import make_blobs_zarr

    d, k, chunk_rows = 32, 64, 250_000
    if not os.path.exists(path) or zarr.open_array(path, mode="r").shape != (n, d):
        start = time.perf_counter()
        make_blobs_zarr(
            path, n_samples=n, n_features=d, n_centers=k, chunk_rows=chunk_rows, cluster_std=4.0
        )
        print(f"wrote {path} in {time.perf_counter() - start:.0f}s", flush=True)
    size = zarr.open_array(path, mode="r").nbytes / 2**30
    init = zarr.open_array(path, mode="r")[:k]
    rows = []
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit="1GB", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):

        def read_pass(_iters):
            da.from_zarr(path).sum(axis=0).compute()
            return _iters

        def ours(iters):
            return dkmeans.KMeans(k, init=init, max_iter=iters, tol=0).fit(path).n_iter_

        times = {}
        read_samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            read_pass(1)
            read_samples.append(time.perf_counter() - start)
        times["bare read pass (X.sum(axis=0))"] = statistics.median(read_samples)
        times["dkmeans"] = per_iteration(ours, repeats)
        try:
            if systems is not None and "dask-ml" not in systems:
                raise ImportError("not asked for")
            from dask_ml.cluster import KMeans as DMKMeans

            def dask_ml(iters):
                return (
                    DMKMeans(k, init=init, max_iter=iters, tol=0).fit(da.from_zarr(path)).n_iter_
                )

            times["dask-ml"] = per_iteration(dask_ml, max(1, repeats // 2))
        except ImportError:
            print("dask-ml not installed: skipped", file=sys.stderr)

        def report(dask_worker):
            return {
                "peak": max(dask_worker.monitor.quantities["memory"]),
                "spilled": dask_worker.data.cumulative_metrics.get(("disk-write", "count"), 0),
            }

        workers = client.run(report)
    peak = max(w["peak"] for w in workers.values()) / 2**20
    spilled = sum(w["spilled"] for w in workers.values())
    ours = times["dkmeans"]
    for name, seconds in times.items():
        row = {
            "suite": f"out of core ({size:.1f} GiB Zarr, 2 workers x 1 GB)",
            "shape": f"{n:,} x {d}, k={k}",
            "system": name,
            "s/iter": seconds,
            "ours/theirs": ours / seconds,
            "peak MiB": peak if name == "dkmeans" else float("nan"),
        }
        rows.append(row)
        print_row(row)
    print(f"worker peak memory (all runs): {peak:.0f} MiB of 954; spilled chunks: {spilled}")
    return rows


def scaling(repeats: int) -> list[dict]:
    """Time per iteration vs n, and the share of it spent outside the kernels.

    Twice: NumPy input as a user passes it (its passes run in-process, no
    graph), and the same blocks run as a Dask graph per pass (what dask and
    Zarr inputs get; forced here by handing Dask a thread pool of our own,
    which dkmeans leaves to Dask).
    """
    import contextlib
    from concurrent.futures import ThreadPoolExecutor

    import dask

    import dkmeans
    from dkmeans import kernel

    spent: list[float] = []
    original = kernel.block_stats

    def timed_block_stats(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    rows = []
    threads = os.cpu_count() or 1
    graph_pool = ThreadPoolExecutor(threads)
    variants = {
        "dkmeans": contextlib.nullcontext,
        "dkmeans, a Dask graph per pass": lambda: dask.config.set(pool=graph_pool),
    }
    base = dict.fromkeys(variants)
    for n in (1_000_000, 2_000_000, 4_000_000, 8_000_000):
        X, init = blobs(n, 32, 64)
        for system, context in variants.items():
            with context():
                dkmeans.KMeans(64, init=init, max_iter=1, tol=0).fit(X)  # warm-up
                seconds, shares = [], []
                kernel.block_stats = timed_block_stats
                try:
                    for _ in range(repeats):
                        spent.clear()
                        model = dkmeans.KMeans(64, init=init, max_iter=SHORT + EXTRA, tol=0)
                        model.fit(X)
                        # Passes 2..n are steady-state iterations (the first also checks the data).
                        walls = [rec["seconds"] for rec in model.history_[1:]]
                        per_pass_kernel = sum(spent) / (model.n_iter_ + 1)  # + final assignment
                        seconds.append(statistics.median(walls))
                        shares.append(1 - per_pass_kernel / threads / statistics.median(walls))
                finally:
                    kernel.block_stats = original
            median = statistics.median(seconds)
            base[system] = base[system] or median / n
            row = {
                "suite": "scaling, float32, d=32, k=64",
                "shape": f"{n:,}",
                "system": system,
                "s/iter": median,
                "ours/theirs": median / (base[system] * n),  # vs linear from 1M
                "peak MiB": float("nan"),
                "outside kernels": statistics.median(shares),
            }
            rows.append(row)
            print_row(row)
    graph_pool.shutdown()
    return rows


def print_row(row: dict) -> None:
    extra = f"  outside kernels {row['outside kernels']:.1%}" if "outside kernels" in row else ""
    print(
        f"{row['suite']:<42} {row['shape']:<24} {row['system']:<32} "
        f"{row['s/iter']:8.4f} s/iter  ratio {row['ours/theirs']:6.2f}  "
        f"peak {row['peak MiB']:7.0f} MiB{extra}",
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["inmemory", "outofcore", "scaling", "all"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--data",
        default=os.path.join(tempfile.gettempdir(), "dkmeans-bench"),
        help="directory for the out-of-core Zarr array (kept between runs)",
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument(
        "--systems",
        help="competitors besides dkmeans, comma-separated (default: scikit-learn,dask-ml,faiss)",
    )
    args = parser.parse_args(argv)
    systems = None if args.systems is None else set(args.systems.split(","))
    print(
        f"machine: {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; python {sys.version.split()[0]}"
    )
    shapes = [(1_000_000, 32, 64), (1_000_000, 2, 8), (1_000_000, 128, 256)]
    if args.quick:
        shapes = [(100_000, 32, 64), (100_000, 2, 8)]
    if args.suite in ("inmemory", "all"):
        in_memory(args.repeats, shapes, systems)
    if args.suite in ("outofcore", "all"):
        os.makedirs(args.data, exist_ok=True)
        n = 2_000_000 if args.quick else 20_000_000
        path = os.path.join(args.data, f"blobs-{n}x32.zarr")
        out_of_core(args.repeats, path, n=n, systems=systems)
    if args.suite in ("scaling", "all"):
        scaling(args.repeats)


if __name__ == "__main__":
    main()
