"""Bounded vs plain Lloyd (and scikit-learn in memory): whole fits to the fixed point.

    python benchmarks/bench_bounded.py                 # cases a, b, c; 3 repeats
    python benchmarks/bench_bounded.py --cases d --repeats 1 --max-iter 100
    python benchmarks/bench_bounded.py --defaults     # "auto" vs "lloyd", default parameters

Every fit starts from the same initial centers (k rows drawn with one seed)
with ``tol=0``, so it runs to the fixed point (or ``--max-iter``). Out of
core, X is a Zarr array on local disk read through a
:class:`dkmeans.testing.CountingStore`: the bytes of X each fit read are
counted, not inferred. Per fit: iterations, full passes, bytes of X read,
rows assigned exactly (summed over iterations, over n), seconds and the
ratios bounded / lloyd; in memory (NumPy X, cases a-c) also scikit-learn's
lloyd and elkan from the same centers, and bounded / the better of them.
Times are medians of ``--repeats`` runs in this one process (the machine is
shared and noisy: compare ratios, not seconds). Peak memory is tracemalloc's
peak during one more fit, untimed (NumPy and Python allocations of this process;
tracing every allocation made our fits 10-30% slower).

Cases (the bounded-Lloyd issue's):
  a  2M x 16 overlapping blobs (cluster_std=6), k=16
  b  china.jpg pixels (scikit-learn) tiled to 2.2M rows x 3, k=16
  c  1M x 8 uniform, k=32
  d  20M x 32 blobs (2.4 GiB of float32, bench_lloyd.py's) on a LocalCluster of 2
     workers x 1 GB, k=64
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tracemalloc
import warnings

import numpy as np
import zarr

from dkmeans import KMeans
from dkmeans.datasets import make_blobs_zarr
from dkmeans.testing import CountingStore, bytes_logged

CHUNK_ROWS = 250_000


def case_data(case: str, workdir: str) -> tuple[str, int, str]:
    """(path of the Zarr array, k, description) of a case, made once."""
    path = os.path.join(workdir, f"case-{case}.zarr")
    if case == "a":
        if not os.path.exists(path):
            make_blobs_zarr(
                path, n_samples=2_000_000, n_features=16, n_centers=16, cluster_std=6.0, seed=0
            )
        return path, 16, "2M x 16 blobs, std 6"
    if case == "b":
        if not os.path.exists(path):
            from sklearn.datasets import load_sample_image

            pixels = load_sample_image("china.jpg").reshape(-1, 3).astype(np.float32) / 255
            _write(path, np.tile(pixels, (8, 1)))
        return path, 16, "china.jpg pixels x 8 (2.19M x 3)"
    if case == "c":
        if not os.path.exists(path):
            _write(path, np.random.default_rng(0).random((1_000_000, 8), dtype=np.float32))
        return path, 32, "1M x 8 uniform"
    if case == "d":  # bench_lloyd.py's out-of-core array: made once for both
        path = os.path.join(workdir, "blobs-20000000x32-k64.zarr")
        if not os.path.exists(path):
            make_blobs_zarr(
                path, n_samples=20_000_000, n_features=32, n_centers=64, cluster_std=4.0
            )
        return path, 64, "20M x 32 blobs (std 4), 2 workers x 1 GB"
    raise ValueError(f"unknown case {case!r}")


def _write(path: str, X: np.ndarray) -> None:
    z = zarr.create_array(path, shape=X.shape, chunks=(CHUNK_ROWS, X.shape[1]), dtype=X.dtype)
    z[:] = X


def initial_centers(path: str, k: int, seed: int = 0) -> np.ndarray:
    z = zarr.open_array(path, mode="r")
    rows = np.sort(np.random.default_rng(seed).choice(z.shape[0], k, replace=False))
    return np.stack([z[int(i)] for i in rows])


def counted_array(path: str, log: str) -> zarr.Array:
    store = CountingStore(zarr.storage.LocalStore(path, read_only=True), log)
    return zarr.open_array(store=store, mode="r")


def fit_ours(X, init, algorithm: str, max_iter: int, trace: bool = False) -> tuple:
    """(seconds, model, peak bytes or None); ``trace``: with tracemalloc, which slows every
    allocation (10-30% more time in memory), so timed fits run without it."""
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    model = KMeans(len(init), init=init, tol=0, max_iter=max_iter, algorithm=algorithm).fit(X)
    seconds = time.perf_counter() - start
    peak = None
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return seconds, model, peak


def fit_sklearn(X, init, algorithm: str, max_iter: int) -> tuple[float, int]:
    from sklearn.cluster import KMeans as SKKMeans

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SKKMeans(
            len(init), init=init, n_init=1, tol=0, max_iter=max_iter, algorithm=algorithm
        ).fit(X)
    return time.perf_counter() - start, model.n_iter_


def describe(model: KMeans, n: int) -> dict:
    history = model.history_
    full = sum(r.get("pass", "full") == "full" for r in history)
    assigned = sum(r.get("rows_assigned", n) for r in history) / n
    return {"iters": model.n_iter_, "full": full, "assigned": assigned}


def out_of_core(path, init, args, workdir) -> dict:
    rows = {}
    n = zarr.open_array(path, mode="r").shape[0]
    for algorithm in ("lloyd", "bounded"):
        times, read, peak = [], None, None
        for repeat in range(args.repeats + 1):  # the last for the peak, untimed
            log = os.path.join(workdir, f"reads-{algorithm}-{repeat}.log")
            if os.path.exists(log):
                os.remove(log)
            traced = repeat == args.repeats
            seconds, model, peak = fit_ours(
                counted_array(path, log), init, algorithm, args.max_iter, trace=traced
            )
            if not traced:
                times.append(seconds)
            read = bytes_logged(log)
        rows[algorithm] = {
            **describe(model, n),
            "seconds": statistics.median(times),
            "read": read,
            "peak": peak,
            "stop": model.stop_reason_,
        }
    return rows


def in_memory(path, init, args) -> dict:
    X = zarr.open_array(path, mode="r")[:]
    rows = {}
    for algorithm in ("lloyd", "bounded"):
        runs = [fit_ours(X, init, algorithm, args.max_iter) for _ in range(args.repeats)]
        model = runs[-1][1]
        rows[algorithm] = {
            **describe(model, len(X)),
            "seconds": statistics.median(r[0] for r in runs),
            "peak": fit_ours(X, init, algorithm, args.max_iter, trace=True)[2],
        }
    if not args.no_sklearn:
        for algorithm in ("lloyd", "elkan"):
            runs = [fit_sklearn(X, init, algorithm, args.max_iter) for _ in range(args.repeats)]
            rows[f"sklearn {algorithm}"] = {
                "seconds": statistics.median(r[0] for r in runs),
                "iters": runs[-1][1],
            }
    return rows


def with_defaults(path: str, k: int, args) -> None:
    """``"auto"`` vs ``"lloyd"`` with every other parameter at its default (k-means||,
    ``tol=1e-4``, ``random_state=0``): in memory and out of core, init included."""
    X = zarr.open_array(path, mode="r")[:]
    for where, data in (("in memory", lambda: X), ("out of core", lambda: path)):
        seconds, iters = {}, {}
        for algorithm in ("lloyd", "auto"):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                model = KMeans(k, algorithm=algorithm, random_state=0).fit(data())
                times.append(time.perf_counter() - start)
            seconds[algorithm], iters[algorithm] = statistics.median(times), model.n_iter_
        print(
            f"  defaults, {where}: lloyd {seconds['lloyd']:.2f} s ({iters['lloyd']} iters), "
            f"auto {seconds['auto']:.2f} s ({iters['auto']} iters): "
            f"auto / lloyd {seconds['auto'] / seconds['lloyd']:.3f}"
        )


def print_out_of_core(case, name, rows, x_bytes):
    lloyd, bounded = rows["lloyd"], rows["bounded"]
    print(f"\ncase {case}: {name}, out of core (Zarr, {x_bytes / 2**20:.0f} MiB stored)")
    for algorithm, r in rows.items():
        print(
            f"  {algorithm:8s} {r['iters']:4d} iters ({r['stop']}), {r['full']:4d} full passes, "
            f"X read {r['read'] / 2**20:9.1f} MiB ({r['read'] / x_bytes:6.1f} x X), "
            f"assigned {r['assigned']:6.1f} x n, {r['seconds']:8.2f} s, "
            f"peak {r['peak'] / 2**20:6.1f} MiB"
        )
    fewer = lloyd["read"] / bounded["read"]
    time_ratio = bounded["seconds"] / lloyd["seconds"]
    print(
        f"  bounded / lloyd: bytes of X read {1 / fewer:.3f} ({fewer:.1f}x fewer), "
        f"time {time_ratio:.3f}"
    )


def print_in_memory(case, name, rows):
    print(f"case {case}: {name}, in memory (NumPy)")
    for algorithm, r in rows.items():
        extra = (
            f", {r['full']:4d} full passes, assigned {r['assigned']:6.1f} x n"
            if "full" in r
            else ""
        )
        peak = f", peak {r['peak'] / 2**20:6.1f} MiB" if "peak" in r else ""
        print(f"  {algorithm:14s} {r['iters']:4d} iters{extra}, {r['seconds']:8.2f} s{peak}")
    ratio = rows["bounded"]["seconds"] / rows["lloyd"]["seconds"]
    line = f"  bounded / lloyd: time {ratio:.3f}"
    if "sklearn lloyd" in rows:
        best = min(rows["sklearn lloyd"]["seconds"], rows["sklearn elkan"]["seconds"])
        ratio = rows["bounded"]["seconds"] / best
        line += f"; bounded / the better of scikit-learn's lloyd and elkan: {ratio:.3f}"
    print(line)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="abc", help="letters of the cases to run (default abc)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dkmeans-bench"))
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help='only "auto" vs "lloyd" with the default parameters (short fits, tol=1e-4)',
    )
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    for case in args.cases:
        path, k, name = case_data(case, args.workdir)
        init = initial_centers(path, k)
        x_bytes = sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
        )
        if args.defaults:
            print(f"case {case}: {name}")
            with_defaults(path, k, args)
            continue
        if case == "d":
            from distributed import Client, LocalCluster

            with (
                LocalCluster(
                    n_workers=2, threads_per_worker=1, memory_limit="1GB", dashboard_address=":0"
                ) as cluster,
                Client(cluster),
            ):
                rows = out_of_core(path, init, args, args.workdir)
            print_out_of_core(case, name, rows, x_bytes)
            continue
        print_out_of_core(case, name, out_of_core(path, init, args, args.workdir), x_bytes)
        print_in_memory(case, name, in_memory(path, init, args))


if __name__ == "__main__":
    main()
