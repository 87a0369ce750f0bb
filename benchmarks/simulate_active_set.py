"""Planning tool for bounded Lloyd (issue 17): rows an active-set rule would read, simulated.

    python benchmarks/simulate_active_set.py blobs pixels uniform separated [--per-cluster]

Not dkmeans: brute-force float64 Lloyd in NumPy from k random rows, run to
its fixed point twice, once reading every row each iteration and once with
an active set. A full pass computes each row's slack (distance to its second
nearest center minus distance to its own); rows with slack >= M are frozen
and only the others (the active set) are read and relabelled, while the
frozen rows' slack provably stays positive: each iteration takes at most
``2 max_j delta_j`` from it (``delta_a + max_j delta_j`` per cluster with
``--per-cluster``), delta_j being center j's move. When that budget of M is
spent, the next pass is a full one. Frozen rows keep their labels, so the
iterations are those of plain Lloyd (the script checks the iteration count).

Rules for M: a fixed quantile of the slacks (5%, 20% of the rows active),
and a cost model picking M to minimise (active fraction) + (one full pass /
the iterations M lasts at the recent drift). Prints rows read / rows a plain
Lloyd reads over the whole fit.
"""

from __future__ import annotations

import argparse

import numpy as np


def distances(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    sq = (X**2).sum(1)[:, None] - 2 * X @ C.T + (C**2).sum(1)[None]
    return np.sqrt(np.maximum(sq, 0))


def means(X: np.ndarray, labels: np.ndarray, C: np.ndarray) -> np.ndarray:
    return np.array(
        [X[labels == j].mean(0) if (labels == j).any() else C[j] for j in range(len(C))]
    )


def plain_iterations(X: np.ndarray, C: np.ndarray, max_iter: int) -> int:
    previous = None
    for iteration in range(1, max_iter + 1):
        labels = distances(X, C).argmin(1)
        if previous is not None and np.array_equal(labels, previous):
            return iteration
        previous, C = labels, means(X, labels, C)
    return max_iter


def simulate(X, C, rule, per_cluster: bool, max_iter: int) -> tuple[int, int, int]:
    """(rows read, iterations, full passes) of the active-set scheme to the fixed point."""
    n = len(X)
    reads = iterations = full_passes = 0
    previous, drifts, budget, spent = None, [], 0.0, None
    need_full, active, frozen = True, None, None
    while iterations < max_iter:
        if need_full:
            D = distances(X, C)
            nearest_two = np.sort(D, 1)[:, :2]
            labels = D.argmin(1)
            slack = nearest_two[:, 1] - nearest_two[:, 0]
            budget = rule(slack, drifts)
            active, frozen = np.flatnonzero(slack < budget), labels.copy()
            reads, full_passes, need_full, spent = reads + n, full_passes + 1, False, None
        else:
            labels = frozen.copy()
            labels[active] = distances(X[active], C).argmin(1)
            reads += len(active)
        iterations += 1
        if previous is not None and np.array_equal(labels, previous):
            break
        previous, new = labels, means(X, labels, C)
        delta = np.sqrt(((new - C) ** 2).sum(1))
        C = new
        drifts.append(delta.max())
        loss = delta + delta.max() if per_cluster else np.full(len(C), 2 * delta.max())
        spent = loss if spent is None else spent + loss
        need_full = bool((spent >= budget).any())
    return reads, iterations, full_passes


def fixed_fraction(fraction: float):
    return lambda slack, drifts: np.quantile(slack, fraction)


def cost_model(slack: np.ndarray, drifts: list[float]) -> float:
    """M minimising (active fraction) + 1 / (iterations M lasts at the recent drift)."""
    step = 2 * (np.median(drifts[-5:]) if drifts else np.quantile(slack, 0.01))
    candidates = np.quantile(slack, np.linspace(0.001, 0.5, 200))
    costs = [(slack < M).mean() + 1 / max(1.0, M / max(step, 1e-300)) for M in candidates]
    return float(candidates[int(np.argmin(costs))])


def dataset(name: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    from sklearn.datasets import load_sample_image, make_blobs

    if name == "blobs":  # overlapping
        return make_blobs(400_000, 16, centers=16, cluster_std=6, random_state=0)[0], 16
    if name == "separated":
        return make_blobs(400_000, 16, centers=16, cluster_std=1, random_state=0)[0], 16
    if name == "pixels":
        return load_sample_image("china.jpg").reshape(-1, 3) / 255.0, 16
    if name == "uniform":
        return rng.uniform(size=(400_000, 8)), 32
    raise ValueError(f"unknown data set {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", choices=["blobs", "separated", "pixels", "uniform"])
    parser.add_argument("--per-cluster", action="store_true", help="delta_a + max delta per row")
    parser.add_argument("--max-iter", type=int, default=400)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rules = [("5%", fixed_fraction(0.05)), ("20%", fixed_fraction(0.2)), ("cost", cost_model)]
    for name in args.datasets:
        X, k = dataset(name, rng)
        C = X[rng.choice(len(X), k, replace=False)]
        plain = plain_iterations(X, C, args.max_iter)
        for label, rule in rules:
            reads, iterations, full = simulate(X, C, rule, args.per_cluster, args.max_iter)
            assert iterations == plain, (name, label, iterations, plain)  # the same fit
            ratio = iterations * len(X) / reads
            print(
                f"{name:<10} M: {label:<5} iterations {iterations:4d}  full passes {full:3d}  "
                f"rows read {reads / (iterations * len(X)):.3f} of Lloyd's ({ratio:.1f}x fewer)",
                flush=True,
            )


if __name__ == "__main__":
    main()
