"""n_init restarts: the runs share every pass, each run ends as if alone, the best is kept."""

from types import SimpleNamespace

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.datasets import make_blobs

from dkmeans import KMeans, bounded, checkpoint, kernel, load, results
from dkmeans.lloyd import FIXED_POINT, best_run, lloyd, lloyd_runs
from dkmeans.seeding import DEFAULT_ROUNDS, initial_centers, spawn_generators
from dkmeans.state import label_dtype
from dkmeans.state import make_stores as _make_stores
from dkmeans.testing import counting_dask_array

N_RUNS = 4


def make_label_stores(spec, row_chunks, n_clusters, n_runs=1):
    return _make_stores(spec, row_chunks, label_dtype(n_clusters), n_runs)


@pytest.fixture(scope="module")
def overlapping():
    """Overlapping blobs where restarts end in different local minima."""
    X, _ = make_blobs(n_samples=12_000, n_features=3, centers=9, cluster_std=2.5, random_state=5)
    return X.astype(np.float32)


def _assert_same_run(shared, alone, shared_store, alone_store):
    np.testing.assert_array_equal(shared.centers, alone.centers)  # bitwise
    assert shared.inertia == alone.inertia
    assert (shared.n_iter, shared.stop_reason) == (alone.n_iter, alone.stop_reason)
    assert [r["objective"] for r in shared.history] == [r["objective"] for r in alone.history]
    np.testing.assert_array_equal(shared_store.values().compute(), alone_store.values().compute())


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
@pytest.mark.parametrize("weighted", [False, True])
def test_each_shared_run_equals_the_run_alone(overlapping, init, weighted):
    X = da.from_array(overlapping, chunks=(1_500, -1))
    w = None
    if weighted:
        w = da.from_array(np.random.default_rng(2).uniform(0, 3, len(X)), chunks=1_500)
    seeds = [11, 12, 13]
    shared_centers = initial_centers(
        X, 9, init, rngs=[np.random.default_rng(s) for s in seeds], weights=w
    )
    shared_stores = make_label_stores("memory", X.chunks[0], 9, len(seeds))
    shared = lloyd_runs(X, shared_centers, stores=shared_stores, weights=w, tol=0, max_iter=15)
    for run, seed in enumerate(seeds):
        (centers,) = initial_centers(X, 9, init, rngs=[np.random.default_rng(seed)], weights=w)
        np.testing.assert_array_equal(shared_centers[run], centers)
        (store,) = make_label_stores("memory", X.chunks[0], 9)
        alone = lloyd(X, centers, store=store, weights=w, tol=0, max_iter=15)
        _assert_same_run(shared[run], alone, shared_stores[run], store)


def _passes_of(result) -> int:
    """A run's passes: its iterations, and a final assignment unless at an exact fixed point."""
    exact = result.stop_reason == FIXED_POINT and result.history[-1]["center_shift"] == 0
    return result.n_iter + (0 if exact else 1)


def test_runs_read_x_once_per_pass_and_stopped_runs_cost_nothing(overlapping, monkeypatch):
    source, X = counting_dask_array(overlapping, 2_000)
    n_blocks = X.numblocks[0]
    rngs = spawn_generators(np.random.default_rng(3), N_RUNS)
    centers = initial_centers(X, 9, "random", rngs=rngs)
    source.reads = 0
    kernel_calls = []
    original = kernel.block_stats
    monkeypatch.setattr(
        kernel, "block_stats", lambda *a, **kw: kernel_calls.append(1) or original(*a, **kw)
    )
    stores = make_label_stores("memory", X.chunks[0], 9, N_RUNS)
    with dask.config.set(scheduler="threads"):
        results = lloyd_runs(X, centers, stores=stores, tol=1e-4, max_iter=100)
    passes = [_passes_of(result) for result in results]
    assert len(set(passes)) > 1, "the runs should stop at different iterations"
    # One read of every block per pass of the longest run, not one per run.
    assert source.reads == max(passes) * n_blocks
    # Each run's kernel work stops when the run does.
    assert len(kernel_calls) == sum(passes) * n_blocks


def test_a_fit_with_restarts_reads_x_as_often_as_its_longest_run(overlapping):
    source, X = counting_dask_array(overlapping, 2_000)
    n_blocks = X.numblocks[0]
    with dask.config.set(scheduler="threads"):
        KMeans(9, n_init=N_RUNS, random_state=0, tol=0, max_iter=4, algorithm="lloyd").fit(X)
    # k-means|| (at most rounds + 1 passes, plus one block for the first
    # rows), then 4 iterations and the final assignment: whatever N_RUNS is.
    assert source.reads <= (DEFAULT_ROUNDS + 1 + 4 + 1) * n_blocks + N_RUNS
    assert source.reads >= (DEFAULT_ROUNDS + 1 + 4 + 1) * n_blocks


@pytest.mark.parametrize("algorithm", ["lloyd", "bounded"])
@pytest.mark.parametrize("init", ["k-means||", "random"])
def test_the_best_run_is_kept_and_run_0_is_the_single_fit(overlapping, init, algorithm):
    X = da.from_array(overlapping, chunks=(3_000, -1))
    params = dict(init=init, random_state=5, tol=0, algorithm=algorithm)
    single = KMeans(9, n_init=1, **params).fit(X)
    several = KMeans(9, n_init=6, **params).fit(X)
    rngs = spawn_generators(np.random.default_rng(5), 6)
    centers = initial_centers(X, 9, init, rngs=rngs)
    stores = make_label_stores("memory", X.chunks[0], 9, 6)
    runs = lloyd_runs(X, centers, stores=stores, tol=0, algorithm=algorithm)
    inertias = [run.inertia for run in runs]
    assert single.inertia_ == inertias[0]
    # the least inertia, or the first run within 1e-9 of it (rounding is no choice)
    best = next(i for i, v in enumerate(inertias) if v <= min(inertias) * (1 + 1e-9))
    assert several.inertia_ == inertias[best] <= single.inertia_
    assert inertias[best] <= min(inertias) * (1 + 1e-9)
    np.testing.assert_array_equal(several.cluster_centers_, runs[best].centers)
    np.testing.assert_array_equal(several.labels_.compute(), stores[best].values().compute())
    # The kept labels are the nearest centers' (consistent with the centers).
    expected, _ = kernel.assign(overlapping, several.cluster_centers_)
    np.testing.assert_array_equal(several.labels_.compute(), expected)


def test_restarts_whose_inertias_differ_by_rounding_keep_the_first():
    runs = [SimpleNamespace(inertia=v) for v in (3.0, 2.0 * (1 + 4e-16), 2.0, 2.0 * (1 + 3e-12))]
    assert best_run(runs, range(4)) == 1  # 2.0 (1 + 4e-16) ties with 2.0: the first
    assert best_run(runs, [2, 3]) == 2
    assert best_run(runs, [3, 0]) == 3
    assert best_run([SimpleNamespace(inertia=np.inf)] * 2, range(2)) == 0


@pytest.mark.parametrize("seed", [32, 36])
def test_restarts_that_reach_one_partition_keep_the_same_run_in_both_algorithms(seed):
    """Five distinct float64 rows, repeated: restarts find one partition, clusters reordered.

    Plain Lloyd's inertias of those runs are equal; the bounded algorithm's
    differ by its rounding (each within 1e-12 of plain Lloyd's, so up to
    2e-12 apart), which a tie tolerance of 1e-12 split: the two kept
    different runs (the clusters in another order). These seeds did so with
    1e-12 (2 of 40 tried).
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(5, 1))[rng.integers(0, 5, 12_000)]
    params = dict(init="k-means++", n_init=3, random_state=seed, tol=0)
    plain = KMeans(3, algorithm="lloyd", **params).fit(da.from_array(X, chunks=(10_000, -1)))
    ours = KMeans(3, algorithm="bounded", **params).fit(da.from_array(X, chunks=(10_000, -1)))
    np.testing.assert_array_equal(ours.labels_.compute(), plain.labels_.compute())
    np.testing.assert_allclose(ours.cluster_centers_, plain.cluster_centers_, rtol=1e-12)
    # the kept run is a fixed point whose labels are the nearest centers'
    expected, _ = kernel.assign(X, plain.cluster_centers_)
    np.testing.assert_array_equal(plain.labels_.compute(), expected)


def test_n_init_auto_follows_scikit_learn(overlapping):
    X = overlapping[:3_000]
    auto = KMeans(4, init="random", random_state=1, max_iter=5).fit(X)
    ten = KMeans(4, init="random", n_init=10, random_state=1, max_iter=5).fit(X)
    np.testing.assert_array_equal(auto.cluster_centers_, ten.cluster_centers_)
    auto = KMeans(4, random_state=1, max_iter=5).fit(X)
    one = KMeans(4, n_init=1, random_state=1, max_iter=5).fit(X)
    np.testing.assert_array_equal(auto.cluster_centers_, one.cluster_centers_)


def test_n_init_is_checked_and_an_explicit_init_runs_once(overlapping):
    X = overlapping[:3_000]
    for bad in (0, -2, 1.5, "many", True):
        with pytest.raises(ValueError, match="n_init"):
            KMeans(4, n_init=bad).fit(X)
    start = X[:4].copy()
    with pytest.warns(RuntimeWarning, match="performing only one init"):
        model = KMeans(4, init=start, n_init=3, max_iter=5).fit(X)
    np.testing.assert_array_equal(
        model.cluster_centers_, KMeans(4, init=start, max_iter=5).fit(X).cluster_centers_
    )


@pytest.mark.parametrize("label_store", ["zarr", "path"])
def test_restarts_with_zarr_label_stores(overlapping, tmp_path, label_store):
    X = da.from_array(overlapping, chunks=(3_000, -1))
    spec = str(tmp_path / "labels") if label_store == "path" else "zarr"
    reference = KMeans(9, n_init=3, random_state=2, label_store="memory", tol=0).fit(X)
    model = KMeans(9, n_init=3, random_state=2, label_store=spec, tol=0).fit(X)
    np.testing.assert_array_equal(model.cluster_centers_, reference.cluster_centers_)
    np.testing.assert_array_equal(model.labels_.compute(), reference.labels_.compute())
    if label_store == "path":
        assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [
            "run-0",
            "run-1",
            "run-2",
        ]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    ("algorithm", "interrupt_at"), [("lloyd", 3), ("lloyd", 9), ("bounded", 2), ("bounded", -2)]
)
def test_restarts_continue_after_an_interruption_to_the_same_result(
    overlapping, tmp_path, monkeypatch, algorithm, interrupt_at
):
    """Killed during a pass's checkpoint (some runs may have stopped), resumed: the same fit.

    A negative ``interrupt_at`` counts from the last save of an uninterrupted fit. The
    bounded fits keep a fifth of the rows active, so that they refresh (and save) often."""
    monkeypatch.setattr(bounded, "MAX_ACTIVE_FRACTION", 0.2)
    X = da.from_array(overlapping, chunks=(3_000, -1))
    params = {"n_init": 3, "random_state": 4, "tol": 0, "max_iter": 40, "algorithm": algorithm}
    reference = KMeans(9, **params).fit(X)
    out = tmp_path / "fit.zarr"
    original = checkpoint.Checkpoint.save
    calls = []

    def save(self, states):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise Interrupted
        original(self, states)

    if interrupt_at < 0:
        monkeypatch.setattr(checkpoint.Checkpoint, "save", save)
        KMeans(9, **params).fit(X, checkpoint=tmp_path / "counted.zarr")
        interrupt_at += len(calls) + 1
        assert interrupt_at > 2, "too few saves to test"
        calls.clear()
    monkeypatch.setattr(checkpoint.Checkpoint, "save", save)
    with pytest.raises(Interrupted):
        KMeans(9, **params).fit(X, checkpoint=out)
    monkeypatch.setattr(checkpoint.Checkpoint, "save", original)
    assert results.status(out) == "checkpoint"
    resumed = KMeans(9, **{**params, "random_state": 99}).fit(X, checkpoint=out, resume=True)
    for model in (resumed, load(out)):
        np.testing.assert_array_equal(model.cluster_centers_, reference.cluster_centers_)
        assert model.inertia_ == reference.inertia_
        objectives = [record["objective"] for record in model.history_]
        assert objectives == [record["objective"] for record in reference.history_]
        np.testing.assert_array_equal(model.labels_.compute(), reference.labels_.compute())
