"""Lloyd's iterations: scikit-learn equality, properties, chunkings, re-seeding, weights."""

import itertools

import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.cluster import KMeans as SKKMeans
from sklearn.datasets import load_digits, make_blobs

from dkmeans import ConvergenceWarning, KMeans
from dkmeans.lloyd import FIXED_POINT
from tests import reference
from tests.conftest import general_position_init

# float64: 1e-9 relative; float32: 1e-5 (the tolerances).
RTOL = {np.float64: 1e-9, np.float32: 1e-5}


def _datasets():
    digits = load_digits().data
    blobs, _ = make_blobs(n_samples=5000, n_features=8, centers=6, cluster_std=3.0, random_state=3)
    return {"digits": (digits, 10), "blobs": (blobs, 6)}


@pytest.mark.parametrize("name", ["digits", "blobs"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("tol", [0.0, 1e-4])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_sklearn_from_the_same_initial_centers(name, dtype, tol, seed):
    X, k = _datasets()[name]
    X = X.astype(dtype)
    init = general_position_init(X, k, seed).astype(dtype)
    ours = KMeans(k, init=init, tol=tol).fit(da.from_array(X, chunks=(700, -1)))
    theirs = SKKMeans(k, init=init, n_init=1, algorithm="lloyd", tol=tol).fit(X)
    np.testing.assert_array_equal(ours.labels_.compute(), theirs.labels_)
    rtol = RTOL[dtype]
    scale = np.abs(X).max()
    np.testing.assert_allclose(
        ours.cluster_centers_, theirs.cluster_centers_, rtol=rtol, atol=rtol * scale
    )
    np.testing.assert_allclose(ours.inertia_, theirs.inertia_, rtol=rtol)
    assert ours.cluster_centers_.dtype == dtype
    if ours.stop_reason_ == FIXED_POINT or tol == 0:
        assert ours.n_iter_ == theirs.n_iter_


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_sklearn_with_sample_weight(dtype):
    X, k = _datasets()["blobs"]
    X = X.astype(dtype)
    w = np.random.default_rng(0).uniform(0.1, 3.0, size=len(X))
    init = general_position_init(X, k, 5).astype(dtype)
    ours = KMeans(k, init=init, tol=0).fit(X, sample_weight=w)
    theirs = SKKMeans(k, init=init, n_init=1, algorithm="lloyd", tol=0).fit(X, sample_weight=w)
    np.testing.assert_array_equal(ours.labels_.compute(), theirs.labels_)
    np.testing.assert_allclose(ours.inertia_, theirs.inertia_, rtol=RTOL[dtype])
    assert ours.n_iter_ == theirs.n_iter_


def _check_lloyd_invariants(model, X, weights=None):
    """Properties any correct fit has, checked against the brute-force reference."""
    labels = model.labels_.compute()
    centers = model.cluster_centers_
    # Labels are argmins w.r.t. the final centers (up to GEMM rounding of near-ties).
    d = reference.sq_distances(X, centers)
    chosen = d[np.arange(len(X)), labels]
    assert np.all(chosen <= d.min(axis=1) * (1 + 1e-6) + 1e-9)
    # Inertia is the objective of those labels and centers.
    np.testing.assert_allclose(
        model.inertia_, reference.objective(X, centers, labels, weights), rtol=1e-9
    )
    # The objective never rises.
    objectives = [rec["objective"] for rec in model.history_] + [model.inertia_]
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(objectives))
    if model.stop_reason_ == FIXED_POINT:
        # At a fixed point, centers are the (weighted) means of their points.
        sums, totals = reference.cluster_sums(X, labels, weights, len(centers))
        filled = totals > 0
        np.testing.assert_allclose(
            centers[filled], sums[filled] / totals[filled, None], rtol=1e-9, atol=1e-9
        )


@given(
    n=st.integers(20, 400),
    d=st.integers(1, 5),
    k=st.integers(1, 8),
    n_blocks=st.integers(1, 7),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lloyd_properties_hold_for_random_problems(n, d, k, n_blocks, weighted, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + rng.integers(0, 3, size=(n, 1))
    weights = rng.uniform(0, 2, size=n) if weighted else None
    chunks = max(1, -(-n // n_blocks))
    model = KMeans(k, init="random", random_state=seed, tol=0, max_iter=50)
    model.fit(da.from_array(X, chunks=(chunks, d)), sample_weight=weights)
    _check_lloyd_invariants(model, X, weights)


@given(st.lists(st.integers(1, 900), min_size=1, max_size=6), st.integers(2, 5))
def test_results_agree_across_chunkings(cuts, split_every):
    X, k = _datasets()["blobs"]
    X = X[:2000]
    init = general_position_init(X, k, 11)
    bounds = sorted({0, len(X), *cuts})
    chunks = tuple(np.diff(bounds))
    ours = KMeans(k, init=init, tol=0, split_every=split_every).fit(
        da.from_array(X, chunks=(chunks, -1))
    )
    whole = KMeans(k, init=init, tol=0).fit(X)
    np.testing.assert_array_equal(ours.labels_.compute(), whole.labels_.compute())
    np.testing.assert_allclose(
        ours.cluster_centers_, whole.cluster_centers_, rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(ours.inertia_, whole.inertia_, rtol=1e-12)
    assert ours.n_iter_ == whole.n_iter_


@pytest.mark.parametrize("algorithm", ["lloyd", "bounded"])
def test_empty_cluster_is_reseeded_with_the_farthest_point(algorithm):
    # Two tight groups and a far outlier; one initial center sits where no point
    # is nearest to it, so its cluster is empty after the first assignment. The
    # re-seeding moves the outlier's center already, so the next step changes a
    # label but moves the centers only by rounding (or not at all): with tol=0
    # that is no stop, for either algorithm.
    X = np.array([[0.0, 0], [0.1, 0], [0, 0.1], [10, 10], [10.1, 10], [50, 50]])
    init = np.array([[0.0, 0.0], [10.0, 10.0], [-100.0, -100.0]])
    model = KMeans(3, init=init, tol=0, algorithm=algorithm).fit(X)
    assert model.history_[0]["reseeded"] == 1
    # The outlier (farthest from its center) now forms its own cluster.
    np.testing.assert_allclose(model.cluster_centers_[2], [50, 50])
    labels = model.labels_.compute()
    assert labels[5] == 2 and len(set(labels[:3])) == 1 and len(set(labels[3:5])) == 1
    assert model.stop_reason_ == FIXED_POINT
    _check_lloyd_invariants(model, X)


@pytest.mark.parametrize("algorithm", ["lloyd", "bounded"])
def test_tol_zero_runs_to_the_fixed_point_past_a_step_that_moves_no_center(algorithm):
    # The zero-weight row at 4.9 joins center 1 (at 4), which then moves to 10; next
    # it goes back to center 0: a label changed, no center moved. That is no stop.
    X = np.array([[0.0], [10.0], [4.9]])
    model = KMeans(2, init=np.array([[0.0], [4.0]]), tol=0, algorithm=algorithm)
    model.fit(X, sample_weight=np.array([1.0, 1.0, 0.0]))
    changes = [(r["labels_changed"], r["center_shift"]) for r in model.history_]
    assert changes == [(3, 36.0), (1, 0.0), (0, 0.0)]
    assert model.stop_reason_ == FIXED_POINT and model.n_iter_ == 3
    np.testing.assert_array_equal(model.labels_.compute(), [0, 1, 0])


@pytest.mark.parametrize("algorithm", ["lloyd", "bounded"])
@pytest.mark.parametrize("n_clusters", [20, 40])
def test_fewer_distinct_rows_than_clusters_reach_a_fixed_point(algorithm, n_clusters):
    """Float64 multiples of 0.1 (16 distinct rows), and more clusters than that.

    A mean of copies of a row rounds away from the row. Re-seeding an empty
    cluster with a copy drew the copy's twins to it, which left their old
    cluster empty for another copy, and so on: 300 iterations and no stop.
    A copy within rounding of its center is no candidate now.
    """
    rng = np.random.default_rng(0)
    X = rng.integers(0, 4, (4_000, 2)) * 0.1
    model = KMeans(n_clusters, random_state=0, tol=0, algorithm=algorithm)
    # scikit-learn's warning, its words: 16 clusters of positive weight
    with pytest.warns(ConvergenceWarning, match=r"distinct clusters \(16\) found smaller than n_"):
        model.fit(da.from_array(X, chunks=(1_500, -1)))
    assert model.stop_reason_ == FIXED_POINT and model.n_iter_ < 20
    # Every distinct row has a cluster of its own: the rows that were no copies of
    # their centers were still taken.
    labels = model.labels_.compute()
    _, row_of = np.unique(X, axis=0, return_inverse=True)
    pairs = np.unique(np.stack([row_of.ravel(), labels]), axis=1)
    assert pairs.shape[1] == len(np.unique(row_of)) == len(np.unique(labels))
    # Exact labels for the final centers, which are their rows' means; every row sits
    # on its center up to the means' rounding (the objective is rounding alone, so
    # it may rise by rounding: not checked here).
    np.testing.assert_array_equal(labels, reference.exact_labels(X, model.cluster_centers_))
    sums, totals = reference.cluster_sums(X, labels, None, n_clusters)
    filled = totals > 0
    means = sums[filled] / totals[filled, None]
    np.testing.assert_allclose(model.cluster_centers_[filled], means, rtol=1e-12, atol=1e-15)
    assert model.inertia_ < 1e-24


def test_reseeding_matches_sklearn():
    X, _ = make_blobs(n_samples=600, n_features=2, centers=3, random_state=0)
    init = np.array([[0.0, 0.0], [5.0, 5.0], [1e4, 1e4], [-1e4, 0.0]])  # two far-off centers
    ours = KMeans(4, init=init, tol=0).fit(X)
    theirs = SKKMeans(4, init=init, n_init=1, algorithm="lloyd", tol=0).fit(X)
    assert ours.history_[0]["reseeded"] == 2
    np.testing.assert_array_equal(ours.labels_.compute(), theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-9)


@given(st.integers(0, 2**16), st.integers(1, 4))
def test_integer_sample_weight_equals_repeating_rows(seed, max_repeat):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(80, 3))
    repeats = rng.integers(0, max_repeat + 1, size=len(X))
    repeats[0] = max(repeats[0], 1)
    init = X[:3] + 1e-3
    weighted = KMeans(3, init=init, tol=0).fit(X, sample_weight=repeats)
    repeated = KMeans(3, init=init, tol=0).fit(np.repeat(X, repeats, axis=0))
    np.testing.assert_allclose(
        weighted.cluster_centers_, repeated.cluster_centers_, rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(weighted.inertia_, repeated.inertia_, rtol=1e-9, atol=1e-12)
    if repeats.min() > 0:
        # A zero-weight row still has a label, and its changes count toward
        # "no label changed" (as in scikit-learn): only then can counts differ.
        assert weighted.n_iter_ == repeated.n_iter_


def test_max_iter_stop_leaves_labels_consistent_with_centers(blobs):
    model = KMeans(5, init=general_position_init(blobs, 5, 0), max_iter=2, tol=0).fit(blobs)
    assert model.stop_reason_ == "max_iter" and not model.converged_ and model.n_iter_ == 2
    labels, _ = reference.assign(blobs, model.cluster_centers_)
    np.testing.assert_array_equal(model.labels_.compute(), labels)
    _check_lloyd_invariants(model, blobs)


def test_tol_stop_uses_mean_feature_variance(blobs):
    tol = 1e-2
    model = KMeans(5, init=general_position_init(blobs, 5, 0), tol=tol).fit(blobs)
    assert model.stop_reason_ == "tol"
    threshold = tol * blobs.var(axis=0).mean()
    shifts = [rec["center_shift"] for rec in model.history_]
    assert shifts[-1] <= threshold < min(shifts[:-1])
    _check_lloyd_invariants(model, blobs)


def test_history_records_every_iteration(blobs):
    model = KMeans(5, init=general_position_init(blobs, 5, 3), tol=0).fit(blobs)
    assert [rec["iteration"] for rec in model.history_] == list(range(1, model.n_iter_ + 1))
    assert model.history_[0]["labels_changed"] == len(blobs)
    assert model.history_[-1]["labels_changed"] == 0
    assert all(rec["seconds"] >= 0 for rec in model.history_)


def test_on_tied_pixels_labels_are_exact_where_sklearn_rounds():
    """Pixels stored as k/255 with centers that are pixels: exact ties are common.

    Our labels equal the exact argmin (ties to the lowest index). scikit-learn
    labels the same rows with the same centers through a GEMM's rounding: every
    row where it differs is shown, with exact rationals, to be a tie (or a
    near-tie within that rounding), never a clear mistake of ours.
    """
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(0)
    pixels = load_sample_image("china.jpg").reshape(-1, 3)[::5] / 255.0  # 54,656 pixels
    centers = pixels[rng.choice(len(pixels), 16, replace=False)]
    ours = KMeans(16, init=centers, max_iter=1).fit(pixels)
    sk = SKKMeans(16, init=centers, n_init=1, max_iter=1).fit(pixels)
    # The same assignment for both: every pixel labelled with the pixel-row centers.
    ours.cluster_centers_ = sk.cluster_centers_ = centers
    labels, theirs = ours.predict(pixels), sk.predict(pixels)
    distances = reference.exact_sq_distances(pixels, centers)
    exact = np.argmin(distances, axis=1)
    np.testing.assert_array_equal(labels, exact)
    differ = np.flatnonzero(theirs != exact)  # 32 rows with scikit-learn 1.9 here
    scale = distances[np.arange(len(pixels)), exact].astype(float).max()
    gaps = np.array([float(distances[i, theirs[i]] - distances[i, exact[i]]) for i in differ])
    assert (gaps >= 0).all()  # never nearer than the exact argmin: only ties decided otherwise
    assert (gaps <= 1e-12 * scale).all(), gaps.max() / scale
