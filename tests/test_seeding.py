"""k-means|| initialisation: pass count, reproducibility, weights, quality."""

import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import make_blobs

from dkmeans import KMeans
from dkmeans.seeding import DEFAULT_ROUNDS, _philox_key, kmeans_parallel, row_uniforms
from dkmeans.testing import counting_dask_array


@pytest.fixture(scope="module")
def separated():
    """20 well-separated blobs: a good initialisation puts a center in every one."""
    X, y, truth = make_blobs(
        n_samples=40_000,
        n_features=5,
        centers=20,
        cluster_std=0.5,
        center_box=(-100, 100),
        random_state=1,
        return_centers=True,
    )
    return X.astype(np.float32), y, truth


def _init(X, chunks, seed=0, weights=None, **kwargs):
    arr = da.from_array(X, chunks=(chunks, -1))
    w = None if weights is None else da.from_array(weights, chunks=chunks)
    (centers,) = kmeans_parallel(arr, 20, rngs=[np.random.default_rng(seed)], weights=w, **kwargs)
    return centers


@given(
    offset=st.integers(0, 10**12),
    splits=st.lists(st.integers(1, 50), min_size=1, max_size=5),
    seed=st.integers(0, 2**32),
)
def test_row_draws_do_not_depend_on_the_blocks(offset, splits, seed):
    key = _philox_key(np.random.default_rng(seed))
    whole = row_uniforms(key, offset, sum(splits))
    starts = np.cumsum([0, *splits])
    parts = [row_uniforms(key, offset + a, b - a) for a, b in itertools.pairwise(starts)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert ((whole > 0) & (whole <= 1)).all()


@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_parallel_reads_x_at_most_rounds_plus_two_times(separated, weighted):
    X = separated[0]
    source, arr = counting_dask_array(X, 2_500)
    w = None
    if weighted:
        w = da.from_array(np.random.default_rng(0).uniform(0.5, 2, len(X)), chunks=2_500)
    with dask.config.set(scheduler="threads"):
        kmeans_parallel(arr, 20, rngs=[np.random.default_rng(0)], weights=w)
    passes = source.reads / arr.numblocks[0]
    # rounds + the weighing pass, + the first center (one block, or a pass when weighted)
    assert passes <= DEFAULT_ROUNDS + (2 if weighted else 1) + 1 / arr.numblocks[0]
    assert passes >= DEFAULT_ROUNDS + 1


def test_a_fit_with_kmeans_parallel_reads_x_rounds_plus_iterations(separated):
    X = separated[0]
    source, arr = counting_dask_array(X, 4_000)
    model = KMeans(20, random_state=0, tol=0, max_iter=3).fit(arr)
    init_reads = source.reads - arr.numblocks[0] * (model.n_iter_ + 1)
    assert init_reads <= (DEFAULT_ROUNDS + 1) * arr.numblocks[0] + 1


def test_same_centers_for_any_chunking(separated):
    X = separated[0]
    reference = _init(X, 4_000)
    for chunks in (999, 7_000, 40_000):
        np.testing.assert_array_equal(_init(X, chunks), reference)
    w = np.random.default_rng(3).uniform(0, 2, len(X))
    np.testing.assert_array_equal(_init(X, 3_000, weights=w), _init(X, 11_000, weights=w))
    assert not np.array_equal(_init(X, 4_000, seed=1), reference)


@pytest.mark.slow
@pytest.mark.distributed
def test_same_centers_under_every_scheduler(separated):
    X = separated[0]
    reference = _init(X, 4_000)
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(_init(X, 4_000), reference)
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(2, mp_context=context) as pool,
        dask.config.set(scheduler="processes", pool=pool),
    ):
        np.testing.assert_array_equal(_init(X, 4_000), reference)
    for n_workers in (1, 2):
        with (
            LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=":0") as c,
            Client(c),
        ):
            np.testing.assert_array_equal(_init(X, 4_000), reference)


@pytest.mark.parametrize("seed", range(5))
def test_every_separated_blob_gets_a_center(separated, seed):
    X, _, truth = separated
    centers = _init(X, 5_000, seed=seed)
    nearest_blob = np.argmin(((centers[:, None] - truth[None]) ** 2).sum(-1), axis=1)
    assert sorted(nearest_blob) == list(range(20))
    # The centers are data rows.
    assert all((X == c).all(axis=1).any() for c in centers)


def test_zero_weight_rows_are_never_chosen(separated):
    X = separated[0]
    far = np.full((50, X.shape[1]), 1e4, dtype=X.dtype)  # outliers k-means|| would love
    data = np.concatenate([X, far])
    w = np.concatenate([np.ones(len(X)), np.zeros(len(far))])
    for seed in range(3):
        centers = _init(data, 5_000, seed=seed, weights=w)
        assert (np.abs(centers) < 1e3).all()
    unweighted = _init(data, 5_000, seed=0)
    assert (np.abs(unweighted) > 1e3).all(axis=1).any()  # without weights they are chosen


def test_fewer_distinct_rows_than_clusters():
    X = np.repeat(np.eye(3, dtype=np.float64), 100, axis=0)
    (centers,) = kmeans_parallel(
        da.from_array(X, chunks=(50, -1)), 5, rngs=[np.random.default_rng(0)]
    )
    assert centers.shape == (5, 3)
    assert {tuple(c) for c in centers} == {tuple(r) for r in np.eye(3)}


def test_default_init_matches_sklearn_quality(separated):
    from sklearn.cluster import KMeans as SKKMeans

    X = separated[0]
    ours = [KMeans(20, random_state=s).fit(X).inertia_ for s in range(3)]
    theirs = [SKKMeans(20, n_init=1, random_state=s).fit(X).inertia_ for s in range(3)]
    assert np.median(ours) <= np.median(theirs) * 1.01
