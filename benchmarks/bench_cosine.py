"""Spherical k-means in memory: dkmeans(metric="cosine") vs faiss and a NumPy implementation.

    python benchmarks/bench_cosine.py [--repeats 5] [--shapes 500000x64x64,200000x256x128]

Embedding-like float32 data (:func:`dkmeans.datasets.make_directions`: rows
around k mean directions, lengths log-normal). Every system fits from the
same unit initial centers with a fixed number of iterations, in this same
process:

- dkmeans: ``KMeans(metric="cosine", algorithm="lloyd", tol=0)``, exact labels;
- faiss: ``Kmeans(spherical=True)`` on every row (``max_points_per_centroid=n``),
  given the rows scaled to unit length (faiss does not scale them: the copy
  is part of its fit);
- NumPy: the textbook loop in float32, labels ``argmax(X̂ C^T)`` by BLAS, sums
  by a sparse one-hot product (what a user writes in an afternoon).

Per-iteration time is the marginal cost, (T(short + extra) - T(short)) /
extra, medians over ``--repeats`` round-robin repeats (see bench_lloyd.py);
ratios are dkmeans / other. Then each system's labels after the same
iterations are compared with dkmeans' (fraction equal) and their objectives,
``sum (1 - cos)``. Peak memory: tracemalloc over one untimed fit (n/a for
faiss, which allocates in C++).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_lloyd import SHORT, extra_for, marginal, peak_traced_mib, timed_fits

import dkmeans
from dkmeans.datasets import make_directions


def unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True).astype(X.dtype)


def numpy_spherical(X: np.ndarray, init: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """The textbook spherical k-means in float32 (labels, centers after ``iters`` iterations)."""
    import scipy.sparse as sp

    Xn, centers = unit(X), init.astype(np.float32)
    n, k = len(X), len(init)
    for _ in range(iters):
        labels = np.concatenate(
            [(Xn[s : s + 65536] @ centers.T).argmax(axis=1) for s in range(0, n, 65536)]
        )
        one_hot = sp.csr_matrix((np.ones(n, np.float32), (labels, np.arange(n))), shape=(k, n))
        sums = np.asarray(one_hot @ Xn, dtype=np.float64)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centers = np.where(norms > 0, sums / np.where(norms > 0, norms, 1), centers)
        centers = centers.astype(np.float32)
    return labels, centers


def competitors(X: np.ndarray, init: np.ndarray) -> dict:
    """name -> fit(iterations) -> (iterations run, labels, centers)."""
    n, d = X.shape
    k = len(init)

    def ours(iters):
        model = dkmeans.KMeans(
            k, init=init, metric="cosine", algorithm="lloyd", max_iter=iters, tol=0
        ).fit(X)
        return model.n_iter_, model.labels_, model.cluster_centers_

    fits = {"dkmeans": ours}
    try:
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)

        def faiss_spherical(iters):
            model = faiss.Kmeans(
                d, k, niter=iters, spherical=True, max_points_per_centroid=n, seed=0
            )
            Xn = unit(X)
            model.train(Xn, init_centroids=init.astype(np.float32))
            return iters, model.index.search(Xn, 1)[1][:, 0], model.centroids

        fits["faiss"] = faiss_spherical
    except ImportError:
        print("faiss not installed: skipped", file=sys.stderr)

    def reference(iters):
        labels, centers = numpy_spherical(X, init, iters)
        return iters, labels, centers

    fits["numpy"] = reference
    return fits


def objective(X: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> float:
    Xn = unit(X.astype(np.float64))
    c = unit(np.asarray(centers, dtype=np.float64))
    return float(np.sum(1 - np.einsum("ij,ij->i", Xn, c[labels])))


def run(shape: tuple[int, int, int], repeats: int) -> None:
    n, d, k = shape
    X, _, _ = make_directions(n, d, k, spread=1.0, seed=0)
    rng = np.random.default_rng(1)
    init = unit(X[rng.choice(n, size=k, replace=False)].astype(np.float64)).astype(np.float32)
    fits = competitors(X, init)
    iterations = {name: (lambda f: lambda iters: f(iters)[0])(fit) for name, fit in fits.items()}
    peaks = {}
    for name, count in iterations.items():
        count(1)  # warm-up: compilation, imports, thread pools
        peaks[name] = float("nan") if name == "faiss" else peak_traced_mib(count)
    extra = extra_for(iterations["dkmeans"])
    samples = {name: [] for name in fits}
    for _ in range(repeats):
        for name, count in iterations.items():  # round robin: noise hits every system
            count(1)
            samples[name].append(timed_fits(count, extra))
    seconds = {name: marginal(samples[name], extra) for name in fits}
    # The same iterations from the same centers: how far apart do the results end?
    ends = {name: fit(SHORT + extra) for name, fit in fits.items()}
    our_labels = np.asarray(ends["dkmeans"][1])
    print(f"\n{n:,} x {d}, k={k}, float32, {SHORT + extra} iterations; medians of {repeats}")
    print(
        f"{'system':<10}{'s/iter':>10}{'ours/theirs':>13}{'peak MiB':>10}"
        f"{'labels = ours':>15}{'objective':>16}"
    )
    for name in fits:
        labels = np.asarray(ends[name][1])
        print(
            f"{name:<10}{seconds[name]:>10.4f}{seconds['dkmeans'] / seconds[name]:>13.2f}"
            f"{peaks[name]:>10.0f}{np.mean(labels == our_labels):>15.6f}"
            f"{objective(X, labels, ends[name][2]):>16.6f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default="500000x64x64,200000x256x128")
    args = parser.parse_args()
    for shape in args.shapes.split(","):
        run(tuple(int(v) for v in shape.split("x")), args.repeats)


if __name__ == "__main__":
    main()
