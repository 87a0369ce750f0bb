"""Same fit under every scheduler: bitwise-identical results at a fixed chunking."""

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils import key_split
from sklearn.datasets import make_blobs
from threadpoolctl import threadpool_info

from dkmeans import KMeans, lloyd, passes
from dkmeans.inputs import as_dask_array, default_block_rows
from dkmeans.state import MemoryStore
from dkmeans.testing import counting_dask_array


@pytest.fixture(scope="module")
def data():
    X, _ = make_blobs(n_samples=20_000, n_features=6, centers=7, cluster_std=3.0, random_state=2)
    return X.astype(np.float32)


def _fit(X, label_store, scheduler=None, **config):
    arr = da.from_array(X, chunks=(1_500, -1))  # 14 blocks: a two-level tree at split_every=4
    model = KMeans(
        7,
        init="random",
        n_init=2,
        random_state=3,
        tol=0,
        max_iter=8,  # stops at max_iter: the final assignment pass is compared too
        split_every=4,
        label_store=label_store,
    )
    if scheduler is None:
        return model.fit(arr)
    with dask.config.set(scheduler=scheduler, **config):
        return model.fit(arr)


def _history(model):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in model.history_]


def _same(a, b):
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)  # bitwise
    assert a.inertia_ == b.inertia_
    assert _history(a) == _history(b)  # objective, labels changed, center shift, reseeded
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.labels_.compute(), b.labels_.compute())


def _fit_on_cluster(X, label_store):
    model = _fit(X, label_store)
    # Memory labels live on the workers: read them while they are there.
    model.labels_ = da.from_array(model.labels_.compute(), chunks=model.labels_.chunks)
    return model


@pytest.mark.slow
@pytest.mark.distributed
def test_bitwise_identical_across_schedulers(data):
    """synchronous, threads (1 and 2), processes, distributed (1 and 2 workers): one result,
    with labels in memory and in Zarr (a process pool and each cluster serve both)."""
    stores = ("memory", "zarr")
    reference = {store: _fit(data, store, "synchronous") for store in stores}
    for store in stores:
        assert reference[store].n_iter_ > 3  # a real run, not a one-step fixed point
        _same(reference[store], _fit(data, store, "threads", num_workers=1))
        _same(reference[store], _fit(data, store, "threads", num_workers=2))
    # One pool for the whole fit: the processes scheduler otherwise starts one per pass.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        for store in stores:
            _same(reference[store], _fit(data, store, "processes", pool=pool))
    for n_workers in (1, 2):
        with (
            LocalCluster(
                n_workers=n_workers, threads_per_worker=1, dashboard_address=":0"
            ) as cluster,
            Client(cluster),
        ):
            for store in stores:
                _same(reference[store], _fit_on_cluster(data, store))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_fits_sharing_one_client_at_once_equal_each_alone(data):
    """Two fits (different k, seeds and label stores) from two threads on one Client."""
    common = dict(max_iter=15)  # a pass on a cluster has ~0.1 s of latency
    jobs = [
        dict(n_clusters=7, init="random", n_init=2, random_state=3, label_store="memory"),
        dict(n_clusters=4, init="k-means||", random_state=8, label_store="zarr", tol=0),
    ]
    jobs = [common | params for params in jobs]
    X = da.from_array(data, chunks=(1_500, -1))
    alone = [KMeans(**params).fit(X) for params in jobs]
    blas_threads = _blas_threads()
    assert blas_threads  # NumPy's BLAS is loaded
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        ThreadPoolExecutor(2) as threads,
    ):
        barrier = threading.Barrier(2)

        def fit(params):
            barrier.wait()  # start together
            model = KMeans(**params).fit(X)
            model.labels_ = da.from_array(model.labels_.compute(), chunks=model.labels_.chunks)
            return model

        together = list(threads.map(fit, jobs))
        assert len(client.scheduler_info()["workers"]) == 2
    for a, b in zip(together, alone, strict=True):
        _same(a, b)
    assert _blas_threads() == blas_threads  # the last fit to end restored the user's setting


def _blas_threads():
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


@pytest.mark.parametrize("label_store", ["memory", "zarr"])
def test_each_iteration_reads_every_block_exactly_once(data, label_store):
    source, X = counting_dask_array(data, 2_000)
    init = data[:7] + 0.01
    with dask.config.set(scheduler="threads"):
        model = KMeans(
            7, init=init, tol=0, max_iter=4, label_store=label_store, algorithm="lloyd"
        ).fit(X)
    assert model.stop_reason_ == "max_iter"
    # max_iter passes, plus one assignment pass so labels match the final centers.
    assert source.reads == X.numblocks[0] * (model.n_iter_ + 1)


def test_a_block_is_read_in_the_task_that_uses_it(data, tmp_path):
    """No task of a pass only reads X: each block's read is fused into its kernel task.

    A separate read task would hold the block in a worker's memory until the
    kernel ran, and could move it to another worker.
    """
    path = tmp_path / "x.zarr"
    zarr.create_array(path, shape=data.shape, chunks=(2_500, 6), dtype=data.dtype)[:] = data
    X = as_dask_array(str(path))
    centers = [data[:7].copy()]
    for first_pass in (True, False):
        store = MemoryStore(X.chunks[0], np.int8)  # labels as a row-aligned input, or none yet
        if not first_pass:
            store.end_pass(da.zeros(len(data), dtype=np.int8, chunks=(X.chunks[0],)))
        parts = passes._graph_blocks(
            lloyd.lloyd_block,
            [X, None],
            [store.begin_pass()],
            dict(centers=centers, label_dtype=np.int8, first_pass=first_pass),
        )
        (optimized,) = dask.optimize(parts)
        readers = [key for key in dict(optimized.__dask_graph__()) if key[0] == X.name]
        assert not readers, f"{len(readers)} tasks only read X"
        assert len(optimized.compute()) == X.numblocks[0]


class BlockTaskDependencies(SchedulerPlugin):
    """What the tasks of a pass's blocks depended on when they started (by key prefix)."""

    name = "block-task-dependencies"

    def __init__(self):
        self.seen = []

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing" and key_split(key) == "graph_block":
            dependencies = self.scheduler.tasks[key].dependencies
            self.seen.append(sorted(key_split(d.key) for d in dependencies))


@pytest.mark.distributed
def test_a_task_depends_on_its_own_block_of_memory_labels_only(data, tmp_path):
    """On a cluster, memory labels stay where they were computed: a pass's task for block i
    depends on block i of the previous labels (and the Zarr array's reader object), on
    nothing else: not on the whole previous labels gathered into one task, which would
    put a copy of every label on every worker."""
    path = tmp_path / "x.zarr"
    zarr.create_array(path, shape=data.shape, chunks=(2_000, 6), dtype=data.dtype)[:] = data
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(BlockTaskDependencies())
        KMeans(7, init=data[:7], tol=0, max_iter=4, label_store="memory", algorithm="lloyd").fit(
            str(path)
        )
        seen = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins["block-task-dependencies"].seen
        )
    first_pass, later = ["original-zarr"], ["original-zarr", "written_of"]
    assert len(seen) == 10 * 5  # 10 blocks, 4 iterations and the final assignment
    assert seen.count(first_pass) == 10 and seen.count(later) == 40, seen


# The tree's shapes with labels in memory; with labels in Zarr (2 s a case), one shape.
@pytest.mark.parametrize(
    "label_store, split_every", [("memory", 2), ("memory", 3), ("memory", 8), ("zarr", 3)]
)
@pytest.mark.parametrize("weighted", [False, True])
def test_passes_run_in_process_equal_the_dask_graph(
    data, label_store, weighted, split_every, monkeypatch
):
    """NumPy input under Dask's threaded or synchronous scheduler runs its passes here,
    without a graph: bitwise the same as the graph of the same blocks."""
    # float64 data: its sums round, so a different reduction tree would show.
    data = data.astype(np.float64) * np.pi
    n = len(data)
    rows = default_block_rows(n, data[0].nbytes)  # NumPy input's blocks
    weights = np.random.default_rng(5).uniform(0, 2, n) if weighted else None
    params = dict(
        n_clusters=7,
        init="random",
        n_init=2,
        random_state=3,
        tol=0,
        max_iter=12,
        split_every=split_every,
        label_store=label_store,
        algorithm="lloyd",  # every pass reads X (the bounded passes: test_bounded.py)
    )
    # The same blocks behind a task (an identity copy): not in memory, so a graph per pass.
    X = da.from_array(data, chunks=(rows, -1)).map_blocks(np.array)
    w = None if weights is None else da.from_array(weights, chunks=rows).map_blocks(np.array)
    in_process = []
    original = passes.map_in_process
    monkeypatch.setattr(
        passes,
        "map_in_process",
        lambda *args: in_process.append(1) or original(*args),
    )
    graph = KMeans(**params).fit(X, sample_weight=w)
    assert not in_process
    for config in [{"scheduler": "threads"}, {"num_workers": 1}, {"scheduler": "sync"}]:
        in_process.clear()
        with dask.config.set(config):
            model = KMeans(**params).fit(data, sample_weight=weights)
        _same(model, graph)
        assert len(in_process) == graph.n_iter_ + 1  # every pass, and the final assignment
