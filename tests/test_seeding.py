"""k-means|| initialisation: pass count, reproducibility, weights, quality."""

import itertools
import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from unittest import mock

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats
from sklearn.datasets import make_blobs

from dkmeans import KMeans, kernel
from dkmeans.seeding import DEFAULT_ROUNDS, _draw_key, kmeans_parallel, row_uniforms
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
    key = _draw_key(np.random.default_rng(seed))
    whole = row_uniforms(key, offset, sum(splits))
    starts = np.cumsum([0, *splits])
    parts = [row_uniforms(key, offset + a, b - a) for a, b in itertools.pairwise(starts)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert ((whole > 0) & (whole <= 1)).all()


def test_row_draws_are_splitmix64_outputs():
    """The published SplitMix64 sequence for seed 1234567, and uniform in (0, 1]."""
    first = [6457827717110365317, 3203168211198807973, 9817491932198370423]
    expected = [1.0 - (z >> 11) * 2.0**-53 for z in first]
    np.testing.assert_array_equal(row_uniforms(np.uint64(1234567), 0, 3), expected)
    draws = row_uniforms(np.uint64(2**64 - 1), 10**12, 200_000)
    assert ((draws > 0) & (draws <= 1)).all()
    counts = np.bincount((draws * 20).astype(int).clip(0, 19), minlength=20)
    assert stats.chisquare(counts).pvalue > 1e-4


def sequential_sqdist(points: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Reference: each squared distance in float64, features added in order (cumsum)."""
    diff = points.astype(np.float64) - center.astype(np.float64)
    return np.cumsum(diff * diff, axis=1)[:, -1]


@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        st.tuples(st.integers(1, 300), st.integers(1, 12)),
        elements=st.one_of(
            st.integers(-3, 3).map(float),  # ties and duplicates
            st.floats(-1e6, 1e6, allow_nan=False, width=32),
            st.floats(-(2.0**-100), 2.0**-100, width=32),  # products that underflow
        ),
    ),
    st.sampled_from([0.0, 1000.0]),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_trial_potentials_are_the_direct_distances(points, shift, seed, weighted):
    """The BLAS filter of greedy k-means++ never changes a value: every value and
    potential equals the directly computed one, bitwise. Shifted far from the
    origin, the GEMM expansion cancels badly: only a sound bound keeps the values."""
    rng = np.random.default_rng(seed)
    if shift:  # points near (1000, ..., 1000), 1/64 apart: distances below the rounding
        points = (shift + np.round(points.clip(-3, 3) * 21) / 64).astype(points.dtype)
    closest = sequential_sqdist(points, points[rng.integers(len(points))])
    trials = points[rng.integers(len(points), size=3)]
    w = rng.uniform(0, 2, len(points)) if weighted else None
    values, potentials = kernel.trial_potentials(points, closest, w, trials)
    for t, trial in enumerate(trials):
        expected = np.minimum(closest, sequential_sqdist(points, trial))
        np.testing.assert_array_equal(values[t], expected)
        weighted_values = expected if w is None else expected * w
        assert potentials[t] == np.cumsum(weighted_values)[-1]


@pytest.mark.parametrize(("weighted", "n_runs"), [(False, 1), (True, 1), (False, 3)])
def test_kmeans_parallel_reads_x_rounds_plus_one_times(separated, weighted, n_runs):
    X = separated[0]
    source, arr = counting_dask_array(X, 2_500)
    w = None
    if weighted:
        w = da.from_array(np.random.default_rng(0).uniform(0.5, 2, len(X)), chunks=2_500)
    with dask.config.set(scheduler="threads"):
        rngs = [np.random.default_rng(run) for run in range(n_runs)]
        kmeans_parallel(arr, 20, rngs=rngs, weights=w)
    # rounds + the weighing pass, shared by the runs, + the blocks holding each run's
    # first center (drawn from the weights alone when weighted)
    assert source.reads <= (DEFAULT_ROUNDS + 1) * arr.numblocks[0] + n_runs
    assert source.reads > (DEFAULT_ROUNDS + 1) * arr.numblocks[0]


@pytest.mark.parametrize("n_runs", [1, 3])
def test_state_in_zarr_gives_the_same_centers_and_is_removed(separated, n_runs, tmp_path):
    X = separated[0]
    arr = da.from_array(X, chunks=(3_000, -1))

    def init(state):
        rngs = [np.random.default_rng(run) for run in range(n_runs)]
        return kmeans_parallel(arr, 20, rngs=rngs, state=state)

    made = mock.patch.object(tempfile, "mkdtemp", wraps=tempfile.mkdtemp)
    with mock.patch.object(tempfile, "tempdir", str(tmp_path)), made as mkdtemp:
        in_zarr = init("zarr")
    assert mkdtemp.call_count == 2 * n_runs  # (nearest, distance) per run
    assert list(tmp_path.iterdir()) == []  # and gone
    for memory, zarr_centers in zip(init("memory"), in_zarr, strict=True):
        np.testing.assert_array_equal(zarr_centers, memory)


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
