"""A sweep over k (dkmeans.sweep) against one fit per k: time and bytes of X read.

    python benchmarks/bench_sweep.py                      # k = 2..32 on 1M x 16 blobs, 3 repeats
    python benchmarks/bench_sweep.py --k 2:16 --repeats 1 --algorithm lloyd

X is a Zarr array on local disk read through a
:class:`dkmeans.testing.CountingStore`, so the bytes each way reads are
counted, not inferred. Both ways use the same parameters (``random_state``
fixed; the sweep's models equal the separate fits bitwise, checked here),
the separate fits run one after another in this process, the sweep also
scores every k (one more pass). Times are medians of ``--repeats`` runs in
this one process (the machine is shared and noisy: compare the ratios);
peak memory is tracemalloc's (NumPy and Python allocations of this process).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import tracemalloc

import numpy as np
import zarr

import dkmeans
from dkmeans.datasets import make_blobs_zarr
from dkmeans.jobs import k_values
from dkmeans.testing import CountingStore


def data(args) -> str:
    path = os.path.join(
        args.workdir, f"sweep-blobs-{args.n_samples}x{args.n_features}-c{args.centers}.zarr"
    )
    if not os.path.exists(path):
        make_blobs_zarr(
            path,
            n_samples=args.n_samples,
            n_features=args.n_features,
            n_centers=args.centers,
            cluster_std=3.0,
            seed=0,
        )
    return path


def measured(path: str, run) -> tuple[float, int, int, object]:
    """(seconds, bytes of X read, peak bytes, result) of ``run(X)`` on a counted X."""
    store = CountingStore(zarr.storage.LocalStore(path, read_only=True))
    X = zarr.open_array(store=store, mode="r")
    tracemalloc.start()
    start = time.perf_counter()
    result = run(X)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, store.bytes_read, peak, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="2:32", help="values of k (default 2:32)")
    parser.add_argument("--n-samples", type=int, default=1_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--centers", type=int, default=8, help="blobs in the data")
    parser.add_argument("--algorithm", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dkmeans-bench"))
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    ks = k_values(args.k, "--k")
    path = data(args)
    x_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    params = dict(random_state=0, algorithm=args.algorithm)
    print(
        f"X: {args.n_samples:,} x {args.n_features} float32 blobs ({args.centers} centers), "
        f"{x_bytes / 2**20:.0f} MiB stored; k = {ks[0]}..{ks[-1]} ({len(ks)} values), "
        f"algorithm={args.algorithm}"
    )

    def separate(X):
        return {k: dkmeans.KMeans(k, **params).fit(X) for k in ks}

    rows = {"sweep": [], "separate": []}
    for _ in range(args.repeats):
        rows["sweep"].append(measured(path, lambda X: dkmeans.sweep(X, ks, **params)))
        rows["separate"].append(measured(path, separate))
        sweep, fits = rows["sweep"][-1][3], rows["separate"][-1][3]
        for k in ks:  # the same models (bitwise), or the comparison is void
            assert np.array_equal(sweep.models[k].cluster_centers_, fits[k].cluster_centers_), k
            assert sweep.models[k].inertia_ == fits[k].inertia_, k
    summary = {}
    for name, runs in rows.items():
        seconds = statistics.median(r[0] for r in runs)
        summary[name] = (seconds, runs[-1][1], max(r[2] for r in runs))
        print(
            f"  {name:9s} {seconds:8.2f} s (median of {len(runs)}), read "
            f"{runs[-1][1] / 2**30:7.2f} GiB = {runs[-1][1] / x_bytes:6.1f} passes, "
            f"peak {summary[name][2] / 2**20:7.1f} MiB"
        )
    fits = rows["separate"][-1][3]
    print(f"  longest single fit: {max(f.n_iter_ for f in fits.values())} iterations")
    print(
        f"  sweep / separate: time {summary['sweep'][0] / summary['separate'][0]:.3f}, "
        f"bytes read {summary['sweep'][1] / summary['separate'][1]:.3f}, "
        f"peak memory {summary['sweep'][2] / summary['separate'][2]:.2f}"
    )
    print(rows["sweep"][-1][3])


if __name__ == "__main__":
    main()
