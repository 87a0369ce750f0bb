"""Per-iteration speed of two versions of dkmeans, measured in lockstep.

    python benchmarks/ab_versions.py OLD_TREE NEW_TREE [--repeats 8] [--shapes 1000000x32x64,...]
        [--algorithm lloyd]

OLD_TREE and NEW_TREE are checkouts of dkmeans (e.g. ``git worktree add
/tmp/old <commit>``). Each runs in a worker process of its own (its
directory first on ``sys.path``), with the benchmark data of bench_lloyd.py
already in memory; the driver alternates single fits between the two, so a
slow spell of this shared machine falls on both alike instead of on
whichever version happened to run then. Per-iteration time is the marginal
cost of iterations, as in bench_lloyd.py: (median long fit - median short
fit) / extra iterations, per version, with enough extra iterations for about
a second (6 to 60); printed with new / old, and the median of each repeat's
new / old ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SHORT, MIN_EXTRA, MAX_EXTRA = 2, 6, 60
TARGET_SECONDS = 1.0  # of extra iterations per long fit: above the machine's hiccups

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[2])
from bench_lloyd import blobs
import inspect
import dkmeans
# Plain Lloyd where the tree has a choice: "auto" would run the bounded
# algorithm on the long fits and not the short ones.
has_choice = "algorithm" in inspect.signature(dkmeans.KMeans).parameters
options = {"algorithm": sys.argv[3]} if has_choice else {}
data = {}
for line in sys.stdin:
    n, d, k, iters = json.loads(line)
    if (n, d, k) not in data:
        data.clear()
        data[(n, d, k)] = blobs(n, d, k)
    X, init = data[(n, d, k)]
    start = time.perf_counter()
    model = dkmeans.KMeans(k, init=init, max_iter=iters, tol=0, **options).fit(X)
    print(json.dumps([time.perf_counter() - start, model.n_iter_, dkmeans.__file__]), flush=True)
"""


class Worker:
    def __init__(self, tree: str, algorithm: str):
        here = os.path.dirname(os.path.abspath(__file__))
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, tree, here, algorithm],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=tree,
        )

    def fit(self, n: int, d: int, k: int, iters: int) -> float:
        self.process.stdin.write(json.dumps([n, d, k, iters]) + "\n")
        self.process.stdin.flush()
        seconds, n_iter, where = json.loads(self.process.stdout.readline())
        if n_iter != iters:
            raise RuntimeError(f"{where}: stopped after {n_iter} of {iters} iterations")
        return seconds

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def compare(workers: dict[str, Worker], n: int, d: int, k: int, repeats: int) -> None:
    for worker in workers.values():  # warm-up: JIT compilation, data, thread pools
        worker.fit(n, d, k, 1)
    first = next(iter(workers.values()))
    probe = (first.fit(n, d, k, SHORT + MIN_EXTRA) - first.fit(n, d, k, SHORT)) / MIN_EXTRA
    extra = int(min(MAX_EXTRA, max(MIN_EXTRA, TARGET_SECONDS / max(probe, 1e-6))))
    times = {name: {"short": [], "long": []} for name in workers}
    names = list(workers)
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for kind, iters in (("short", SHORT), ("long", SHORT + extra)):
            for name in order:
                times[name][kind].append(workers[name].fit(n, d, k, iters))
    per_iter = {
        name: (statistics.median(t["long"]) - statistics.median(t["short"])) / extra
        for name, t in times.items()
    }
    old, new = names
    paired = [
        (times[new]["long"][r] - times[new]["short"][r])
        / (times[old]["long"][r] - times[old]["short"][r])
        for r in range(repeats)
    ]
    print(
        f"{n:,} x {d}, k={k} ({extra} extra iterations): "
        f"{old} {per_iter[old]:.4f} s/iter  {new} {per_iter[new]:.4f} s/iter  "
        f"new/old {per_iter[new] / per_iter[old]:.3f}  median paired ratio "
        f"{statistics.median(paired):.3f}",
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument(
        "--shapes",
        default="1000000x32x64,1000000x2x8,1000000x128x256",
        help="comma-separated n x d x k",
    )
    parser.add_argument(
        "--algorithm",
        default="lloyd",
        help="KMeans(algorithm=...) in trees that have the parameter (default: lloyd)",
    )
    args = parser.parse_args(argv)
    workers = {"old": Worker(args.old, args.algorithm), "new": Worker(args.new, args.algorithm)}
    try:
        for shape in args.shapes.split(","):
            n, d, k = (int(v) for v in shape.split("x"))
            compare(workers, n, d, k, args.repeats)
    finally:
        for worker in workers.values():
            worker.close()


if __name__ == "__main__":
    main()
