"""Same fit under every scheduler: bitwise-identical results at a fixed chunking."""

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.datasets import make_blobs

from dkmeans import KMeans
from dkmeans.datasets import counting_dask_array


@pytest.fixture(scope="module")
def data():
    X, _ = make_blobs(n_samples=20_000, n_features=6, centers=7, cluster_std=3.0, random_state=2)
    return X.astype(np.float32)


def _fit(X, label_store, scheduler=None, **config):
    arr = da.from_array(X, chunks=(1_500, -1))  # 14 blocks: a two-level tree at split_every=4
    model = KMeans(
        7, init="random", n_init=2, random_state=3, tol=0, split_every=4, label_store=label_store
    )
    if scheduler is None:
        return model.fit(arr)
    with dask.config.set(scheduler=scheduler, **config):
        return model.fit(arr)


def _same(a, b):
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)  # bitwise
    assert a.inertia_ == b.inertia_
    assert [r["objective"] for r in a.history_] == [r["objective"] for r in b.history_]
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.labels_.compute(), b.labels_.compute())


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("label_store", ["memory", "zarr"])
def test_bitwise_identical_across_schedulers(data, label_store):
    reference = _fit(data, label_store, "threads")
    assert reference.n_iter_ > 3  # a real run, not a one-step fixed point
    _same(reference, _fit(data, label_store, "synchronous"))
    # One pool for the whole fit: the processes scheduler otherwise starts one per pass.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        _same(reference, _fit(data, label_store, "processes", pool=pool))
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        distributed = _fit(data, label_store)
        labels = distributed.labels_.compute()  # while the workers still hold them
        np.testing.assert_array_equal(labels, reference.labels_.compute())
        assert np.array_equal(distributed.cluster_centers_, reference.cluster_centers_)
        assert distributed.inertia_ == reference.inertia_


@pytest.mark.parametrize("label_store", ["memory", "zarr"])
def test_each_iteration_reads_every_block_exactly_once(data, label_store):
    source, X = counting_dask_array(data, 2_000)
    init = data[:7] + 0.01
    with dask.config.set(scheduler="threads"):
        model = KMeans(7, init=init, tol=0, max_iter=4, label_store=label_store).fit(X)
    assert model.stop_reason_ == "max_iter"
    # max_iter passes, plus one assignment pass so labels match the final centers.
    assert source.reads == X.numblocks[0] * (model.n_iter_ + 1)
