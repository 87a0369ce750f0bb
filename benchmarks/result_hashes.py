"""Hashes of the results of a fixed set of fits: what a refactor must leave unchanged.

    python benchmarks/result_hashes.py            # prints one line per fit
    python benchmarks/result_hashes.py --json F   # also writes them to F
    python benchmarks/result_hashes.py --algorithm lloyd   # every fit with that algorithm

Each line names a fit and gives short SHA-256 digests of its centers, labels,
inertia and history (objective, labels changed, center shift, re-seeded: not
the seconds), so two runs of this script (before and after a change, or under
another BLAS kernel: ``OPENBLAS_CORETYPE=Haswell python benchmarks/...``) can
be compared line by line. Only the public API is used, so the script runs
unchanged against any version of dkmeans.

The fits cover the doors a user comes in by: NumPy, dask and Zarr input,
float32 and float64, weights, the three initialisations, n_init > 1, a Zarr
label store, a stop at ``max_iter`` and at ``tol``, a checkpointed fit
interrupted after its fourth iteration and resumed, and a LocalCluster of
two workers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile

import dask.array as da
import numpy as np
import zarr

import dkmeans


def digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(
            np.ascontiguousarray(part).tobytes()
            if isinstance(part, np.ndarray)
            else repr(part).encode()
        )
    return h.hexdigest()[:12]


def fingerprint(model) -> dict[str, str]:
    history = [
        (r["objective"], r["labels_changed"], r["center_shift"], r["reseeded"])
        for r in model.history_
    ]
    return {
        "centers": digest(model.cluster_centers_),
        "labels": digest(np.asarray(model.labels_.compute(), dtype=np.int32)),
        "inertia": digest(float(model.inertia_)),
        "history": digest(history),
        "n_iter": str(model.n_iter_),
        "stop": model.stop_reason_,
    }


def blobs(n, d, k, std, seed, dtype):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10, 10, size=(k, d))
    X = centers[rng.integers(k, size=n)] + rng.normal(scale=std, size=(n, d))
    return X.astype(dtype)


class Interrupt(BaseException):
    """Stands for a kill: raised from the progress report after iteration N was saved."""


class InterruptAt(logging.Handler):
    def __init__(self, iteration: int):
        super().__init__()
        self.iteration = iteration

    def emit(self, record):
        if f"iter {self.iteration:4d} " in record.getMessage():
            raise Interrupt


def interrupted_then_resumed(params: dict, source, out: str, at: int):
    logger = logging.getLogger("dkmeans")
    handler = InterruptAt(at)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        dkmeans.KMeans(**params, verbose=True).fit(source, checkpoint=out)
        raise RuntimeError("the fit was not interrupted")
    except Interrupt:
        pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return dkmeans.KMeans(**params).fit(source, checkpoint=out, resume=True)


def fits(workdir: str):
    X32 = blobs(60_000, 8, 12, 4.0, 0, np.float32)
    X64 = blobs(40_000, 5, 7, 3.0, 1, np.float64)
    w = np.random.default_rng(2).uniform(0, 3, len(X64))
    path = os.path.join(workdir, "x.zarr")
    z = zarr.create_array(path, shape=X32.shape, chunks=(7_000, 8), dtype=X32.dtype)
    z[:] = X32
    yield "numpy f32 k-means|| tol=0", lambda: dkmeans.KMeans(12, random_state=0, tol=0).fit(X32)
    yield (
        "numpy f64 random n_init=3 max_iter=9",
        lambda: dkmeans.KMeans(7, init="random", n_init=3, random_state=1, max_iter=9).fit(X64),
    )
    yield (
        "dask f64 k-means++ weighted tol=1e-3",
        lambda: dkmeans.KMeans(7, init="k-means++", random_state=2, tol=1e-3).fit(
            da.from_array(X64, chunks=(6_000, -1)), sample_weight=w
        ),
    )
    yield (
        "numpy f64 k-means|| weighted n_init=2 tol=0",
        lambda: dkmeans.KMeans(7, n_init=2, random_state=3, tol=0).fit(X64, sample_weight=w),
    )
    yield (
        "zarr f32 k-means|| n_init=2 label_store=zarr",
        lambda: dkmeans.KMeans(
            12, n_init=2, random_state=4, tol=0, label_store="zarr", max_iter=40
        ).fit(path),
    )
    params = dict(n_clusters=12, n_init=2, random_state=5, tol=0, max_iter=30)
    yield (
        "zarr f32 checkpoint interrupted at 4, resumed",
        lambda: interrupted_then_resumed(params, path, os.path.join(workdir, "ckpt.zarr"), 4),
    )
    yield "zarr f32 the same fit, not interrupted", lambda: dkmeans.KMeans(**params).fit(path)
    from sklearn.datasets import load_digits

    digits = load_digits().data
    yield (
        "digits f64 (tied integers) random n_init=4",
        lambda: dkmeans.KMeans(10, init="random", n_init=4, random_state=6, tol=0).fit(digits),
    )


def cluster_fit(path: str):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        model = dkmeans.KMeans(12, n_init=2, random_state=4, tol=0, max_iter=40).fit(path)
        model.labels_ = da.from_array(model.labels_.compute())
        return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the digests to this file")
    parser.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster fit")
    parser.add_argument(
        "--algorithm", help="KMeans(algorithm=...) for every fit (versions that have it)"
    )
    args = parser.parse_args(argv)
    if args.algorithm:
        estimator = dkmeans.KMeans
        dkmeans.KMeans = lambda *a, **kw: estimator(*a, algorithm=args.algorithm, **kw)
    results = {}
    with tempfile.TemporaryDirectory(prefix="dkmeans-hashes-") as workdir:
        for name, fit in fits(workdir):
            results[name] = fingerprint(fit())
            print(f"{name:<48} {json.dumps(results[name])}", flush=True)
        if not args.no_cluster:
            name = "zarr f32 k-means|| n_init=2, LocalCluster 2 workers"
            results[name] = fingerprint(cluster_fit(os.path.join(workdir, "x.zarr")))
            print(f"{name:<48} {json.dumps(results[name])}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
