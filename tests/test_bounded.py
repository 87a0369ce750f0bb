"""The bounded Lloyd: plain Lloyd's labels every iteration, reading only the rows that can change.

The reference is ``algorithm="lloyd"`` run from the same centers (itself tested
against brute-force NumPy and exact rationals), and exact rational distances
for the bounds the algorithm relies on.
"""

import itertools
from fractions import Fraction
from unittest import mock

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import make_blobs

from dkmeans import KMeans, bounded, checkpoint, kernel, lloyd, load, results
from dkmeans.cli import main
from dkmeans.state import label_dtype, make_stores
from dkmeans.testing import counting_dask_array
from tests import reference
from tests.test_exact import tied_problems


def exact_squares(X, centers):
    """Every exact squared distance, (n, k), as Fractions of the stored values."""
    values = np.concatenate([np.ravel(X), np.ravel(centers)]).astype(np.float64)
    denominator = max(Fraction(float(v)).denominator for v in values)
    scaled = reference.exact_sq_distances(X, centers)
    return np.vectorize(lambda v: Fraction(v, denominator**2), otypes=[object])(scaled)


@given(tied_problems(max_rows=120), st.integers(0, 2**16))
def test_distance_bounds_hold_for_the_exact_distances(problem, seed):
    """upper >= d(x, c_label) and lower <= d(x, c_j) for every other j, exactly, on tied data."""
    X, centers = problem
    rng = np.random.default_rng(seed)
    hint = rng.integers(len(centers), size=len(X))
    labels, upper, lower = kernel.assign_with_bounds(
        np.ascontiguousarray(X), kernel.prepare(centers, X.dtype), hint, np.int16
    )
    squares = exact_squares(X, centers)
    np.testing.assert_array_equal(labels, reference.exact_labels(X, centers))
    for i, label in enumerate(labels):
        assert Fraction(float(upper[i])) ** 2 >= squares[i, label]
        others = [squares[i, j] for j in range(len(centers)) if j != label]
        assert Fraction(float(lower[i])) ** 2 <= min(others)
        assert lower[i] >= 0


@given(
    st.integers(0, 300),
    st.integers(1, 9),
    st.integers(1, 40),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([None, -1.0, 0.0, 0.7, np.inf]),
    st.sampled_from([1.0, 0.5, 0.1, 0.0]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_a_split_takes_the_rows_of_least_slack_and_keeps_the_frozen_rows_least(
    n, d, k, dtype, margin, max_active, weighted, seed
):
    """The active rows against NumPy: slack at most the margin, the least slack first past
    the cap, in block order, values and state copied; each cluster's least frozen slack."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(dtype)
    labels = rng.integers(k, size=n).astype(label_dtype(k))
    upper = rng.uniform(0, 2, size=n)
    lower = upper + rng.choice([-0.5, 0.0, 0.3, 1.0, np.inf], size=n) * rng.uniform(size=n)
    weights = rng.uniform(0, 2, size=n) if weighted else None
    centers = kernel.prepare(rng.normal(size=(k, d)), dtype)
    active, split = bounded._split_block(
        x, weights, labels, upper, lower, centers, margin, max_active
    )

    with np.errstate(invalid="ignore"):  # inf - inf where lower is infinite, replaced
        slack = np.where(np.isinf(lower), np.inf, (lower - upper) - 2.0**-52 * (lower + upper))
    limit = -np.inf if margin is None else margin
    candidates = np.flatnonzero(slack <= limit)
    cap = int(max_active * n)
    if len(candidates) == n:
        chosen = np.arange(n)
    elif len(candidates) <= cap:
        chosen = candidates
    else:
        chosen = np.sort(candidates[np.argsort(slack[candidates], kind="stable")[:cap]])
    frozen = np.setdiff1d(np.arange(n), chosen)
    np.testing.assert_array_equal(active.rows, chosen)
    assert active.rows.dtype == np.int32 and active.x.dtype == x.dtype
    np.testing.assert_array_equal(active.x, x[chosen])
    np.testing.assert_array_equal(active.labels, labels[chosen])
    assert active.labels.dtype == labels.dtype
    np.testing.assert_array_equal(active.upper, upper[chosen])
    np.testing.assert_array_equal(active.lower, lower[chosen])
    if weighted:
        np.testing.assert_array_equal(active.weights, weights[chosen])
    else:
        assert active.weights.size == 0
    assert split.n_active == len(chosen)
    least = np.full(k, np.inf)
    np.minimum.at(least, labels[frozen], slack[frozen])
    np.testing.assert_array_equal(split.least_slack, least)


# -- bounded vs lloyd ------------------------------------------------------------------------


def tiny_margin(inputs):
    """Hardly any row active: most iterations full passes."""
    return None if inputs.histogram is None else 1e-12


def every_row_margin(inputs):
    """Every row whose slack fits in the store: with the store unbounded, nothing frozen."""
    return np.inf


def fixed_margin(value):
    def rule(inputs):
        return value

    return rule


MARGIN_RULES = {
    "planned": bounded.choose_margin,
    "tiny": tiny_margin,
    "every row": every_row_margin,
    "fixed 0.5": fixed_margin(0.5),
    "fixed 3": fixed_margin(3.0),
}


def run_both(X, init, *, weights=None, margin="planned", max_active=None, settle=False, **params):
    """The same runs with plain and bounded Lloyd: (results, final labels) of each.

    ``settle``: runs make settling passes first, as by default
    (``bounded.SETTLED_CHANGES``); off by default here, so that Hamerly's
    test and the margins run from the second pass on.
    """
    out = {}
    for algorithm in ("lloyd", "bounded"):
        stores = make_stores("memory", X.chunks[0], label_dtype(len(init[0])), len(init))
        fraction = bounded.MAX_ACTIVE_FRACTION if max_active is None else max_active
        settled = bounded.SETTLED_CHANGES if settle else 0.0
        with (
            mock.patch.object(bounded, "MAX_ACTIVE_FRACTION", fraction),
            mock.patch.object(bounded, "SETTLED_CHANGES", settled),
        ):
            runs = lloyd.lloyd_runs(
                X,
                init,
                stores=stores,
                weights=weights,
                algorithm=algorithm,
                margin_rule=MARGIN_RULES[margin] if algorithm == "bounded" else None,
                **params,
            )
        out[algorithm] = (runs, [store.values().compute() for store in stores])
    return out["lloyd"], out["bounded"]


def assert_same_iterations(plain, bounded_runs, dtype):
    (plain_runs, plain_labels), (runs, labels) = plain, bounded_runs
    for a, b, labels_a, labels_b in zip(plain_runs, runs, plain_labels, labels, strict=True):
        assert (a.n_iter, a.stop_reason) == (b.n_iter, b.stop_reason)
        assert [r["labels_changed"] for r in a.history] == [r["labels_changed"] for r in b.history]
        np.testing.assert_array_equal(labels_a, labels_b)
        # float64: equal to 1e-12 of the centers' scale (sums are grouped otherwise);
        # float32 centers are those means rounded to float32: the same.
        scale = 1e-12 * np.max(np.abs(a.centers)) if dtype == np.float64 else 0
        np.testing.assert_allclose(b.centers, a.centers, rtol=0, atol=scale)
        # Squares below float64's normal range (data of 1e-160) round to the smallest
        # subnormal, 2^-1074, not relatively: a few of those per row besides.
        floor = 8 * len(labels_a) * 2.0**-1074
        np.testing.assert_allclose(b.inertia, a.inertia, rtol=1e-12, atol=floor)
        np.testing.assert_allclose(
            [r["objective"] for r in b.history],
            [r["objective"] for r in a.history],
            rtol=1e-12,
            atol=floor,
        )
        objectives = [r["objective"] for r in b.history]
        assert all(y <= x * (1 + 1e-12) + floor for x, y in itertools.pairwise(objectives))
        kinds = {r["pass"] for r in b.history}
        assert kinds <= {"full", "active"} and b.history[0]["pass"] == "full"


@st.composite
def problems(draw):
    """Overlapping blobs in general position, chunked, weighted or not, with initial centers."""
    n = draw(st.integers(30, 2_500))
    d = draw(st.integers(1, 6))
    k = draw(st.integers(2, 10))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    seed = draw(st.integers(0, 2**16))
    X, _ = make_blobs(
        n, n_features=d, centers=draw(st.integers(1, 8)), cluster_std=3.0, random_state=seed
    )
    # Magnitudes whose squares underflow, or (float32) overflow the dtype's range.
    scales = [1.0, 1e-160, 1e140] if dtype == np.float64 else [1.0, 1e-25, 1e18]
    X = (X * draw(st.sampled_from(scales))).astype(dtype)
    rng = np.random.default_rng(seed)
    chunk = draw(st.integers(max(1, n // 12), n))
    weights = None
    if draw(st.booleans()):
        weights = rng.uniform(0, 3, n) * (rng.random(n) > 0.2)  # some rows weigh nothing
    n_runs = draw(st.integers(1, 3))
    init = [X[rng.choice(n, k, replace=False)] for _ in range(n_runs)]
    return X, chunk, weights, init


@given(
    problems(),
    st.sampled_from(sorted(MARGIN_RULES)),
    st.integers(1, 80),
    st.sampled_from([0.0, 1e-4]),
    st.booleans(),
)
def test_bounded_has_plain_lloyds_iterations(problem, margin, max_iter, tol, settle):
    X, chunk, weights, init = problem
    dX = da.from_array(X, chunks=(chunk, -1))
    dw = None if weights is None else da.from_array(weights, chunks=chunk)
    max_active = 1.0 if margin == "every row" else None
    plain, fast = run_both(
        dX,
        init,
        weights=dw,
        margin=margin,
        max_active=max_active,
        settle=settle,
        max_iter=max_iter,
        tol=tol,
    )
    assert_same_iterations(plain, fast, X.dtype)


@pytest.mark.parametrize(
    ("dtype", "n_features", "k", "settle"),
    [(np.float32, 40, 150, True), (np.float64, 70, 20, False)],
    ids=["k=150 float32 (int16 labels, scores by row)", "d=70 float64 (scores by column)"],
)
def test_many_centers_or_features_keep_plain_lloyds_iterations(dtype, n_features, k, settle):
    """Beyond the property test's shapes: labels of two bytes, wide rows, both score layouts."""
    X, _ = make_blobs(
        4_000, n_features=n_features, centers=k // 3, cluster_std=4.0, random_state=k
    )
    X = X.astype(dtype)
    init = [X[np.random.default_rng(k).choice(len(X), k, replace=False)]]
    plain, fast = run_both(
        da.from_array(X, chunks=(1_000, -1)), init, settle=settle, max_iter=60, tol=0
    )
    assert_same_iterations(plain, fast, X.dtype)
    assert fast[1][0].dtype == label_dtype(k)
    assert sum(r["pass"] == "active" for r in fast[0][0].history) > 0


@pytest.mark.parametrize("seed", [1, 2, 4])
def test_restarts_that_reach_one_partition_keep_the_same_run(seed):
    """Two blobs, 4 random restarts: they find the one partition, with the clusters in
    either order, at inertias equal but for rounding, which is grouped otherwise here.
    Picked by rounding, "lloyd" and "bounded" kept different restarts in 21 of 40 seeds
    (labels swapped, other iteration counts); near-ties now go to the first."""
    X, _ = make_blobs(700, n_features=3, centers=2, cluster_std=3.0, random_state=seed)
    params = dict(init="random", n_init=4, random_state=seed, tol=0)
    plain = KMeans(2, algorithm="lloyd", **params).fit(X)
    fast = KMeans(2, algorithm="bounded", **params).fit(X)
    assert fast.n_iter_ == plain.n_iter_
    np.testing.assert_array_equal(np.asarray(fast.labels_), np.asarray(plain.labels_))
    np.testing.assert_allclose(fast.cluster_centers_, plain.cluster_centers_, rtol=1e-12)


def test_a_long_fit_reads_x_a_few_times():
    """Overlapping blobs to the fixed point: most iterations are active passes on few rows."""
    X, _ = make_blobs(40_000, n_features=4, centers=12, cluster_std=2.5, random_state=3)
    dX = da.from_array(X, chunks=(5_000, -1))
    init = [X[np.random.default_rng(0).choice(len(X), 12, replace=False)]]
    plain, fast = run_both(dX, init, max_iter=300, tol=0)
    assert_same_iterations(plain, fast, X.dtype)
    history = fast[0][0].history
    assert history[-1]["labels_changed"] == 0  # to the fixed point
    full = [r for r in history if r["pass"] == "full"]
    assert len(full) <= len(history) / 4, (len(full), len(history))
    assigned = sum(r["rows_assigned"] for r in history) / (len(X) * len(history))
    assert assigned < 0.5
    for record in history:
        assert record["rows_assigned"] <= record["rows_read"] <= len(X)


def test_a_bounded_store_refreshes_more_often_with_the_same_iterations():
    """With room for a fifth of the rows, the frozen rest is refreshed by full passes."""
    X, _ = make_blobs(40_000, n_features=4, centers=12, cluster_std=2.5, random_state=3)
    dX = da.from_array(X, chunks=(5_000, -1))
    init = [X[np.random.default_rng(0).choice(len(X), 12, replace=False)]]
    plain, fast = run_both(dX, init, max_iter=300, tol=0, max_active=0.2)
    assert_same_iterations(plain, fast, X.dtype)
    history = fast[0][0].history
    active = [r for r in history if r["pass"] == "active"]
    assert active and all(r["rows_read"] <= 0.2 * len(X) for r in active)
    assert sum(r["pass"] == "full" for r in history) > 2


def test_dropping_the_drift_check_is_caught():
    """A mutant that never refreshes frozen rows gets other labels: the check matters here."""
    X, _ = make_blobs(5_000, n_features=2, centers=6, cluster_std=2.5, random_state=1)
    dX = da.from_array(X, chunks=(1_000, -1))
    init = [X[np.random.default_rng(2).choice(len(X), 6, replace=False)]]
    plain, fast = run_both(dX, init, margin="fixed 0.5", max_iter=100, tol=0)
    assert_same_iterations(plain, fast, X.dtype)
    with mock.patch.object(bounded.Reference, "still_frozen", lambda self, centers: True):
        _, mutant = run_both(dX, init, margin="fixed 0.5", max_iter=100, tol=0)
    with pytest.raises(AssertionError):
        assert_same_iterations(plain, mutant, X.dtype)


@pytest.mark.parametrize("settle", [False, True], ids=["active", "settling"])
def test_a_cluster_emptied_in_an_active_pass_is_reseeded_by_a_full_pass(settle):
    """Empty clusters need the farthest rows of all X: the active (or settling) pass gives
    way to a full one. (Seed 2: with seed 1 every candidate was the one row of positive
    weight of its cluster, at its center, which re-seeding no longer takes.)"""
    rng = np.random.default_rng(2)  # k large for n, most rows of zero weight: clusters empty
    X = rng.normal(size=(60, 2)) * rng.uniform(0.5, 3, (60, 1))
    weights = rng.uniform(0, 2, 60) * (rng.random(60) > 0.7)
    init = [X[rng.choice(60, 15, replace=False)]]
    fallbacks = []
    restore = bounded.ActiveStore.restore

    def counted(self, snapshot):
        fallbacks.append(1)
        restore(self, snapshot)

    dX, dw = da.from_array(X, chunks=(20, -1)), da.from_array(weights, chunks=20)
    with mock.patch.object(bounded.ActiveStore, "restore", counted):
        plain, fast = run_both(
            dX,
            init,
            weights=dw,
            margin="every row",
            max_active=1.0,
            settle=settle,
            max_iter=60,
            tol=0,
        )
    assert_same_iterations(plain, fast, X.dtype)
    assert fallbacks and sum(r["reseeded"] for r in fast[0][0].history[1:]) >= len(fallbacks)


def test_a_trimming_pass_that_gives_way_leaves_the_labels_as_they_were():
    """A trimming pass writes every row's label to the label store, then keeps only some
    rows; where it gives way to a full pass (an empty cluster, the objective's rounding),
    that full pass must start from the labels before it: plain Lloyd's iterations still."""
    X, _ = make_blobs(6_000, n_features=3, centers=6, cluster_std=3.0, random_state=2)
    dX = da.from_array(X, chunks=(1_500, -1))
    init = [X[np.random.default_rng(3).choice(len(X), 6, replace=False)]]
    trim, gave_way = bounded.BoundedRuns.trim, []

    def giving_way(self, runs, states):
        with mock.patch.object(bounded, "OBJECTIVE_RTOL", -1.0):  # every check fails
            results = trim(self, runs, states)
        gave_way.extend(result is None for result in results)
        return results

    with mock.patch.object(bounded.BoundedRuns, "trim", giving_way):
        plain, fast = run_both(dX, init, max_active=1.0, settle=True, max_iter=200, tol=0)
    assert_same_iterations(plain, fast, X.dtype)
    assert gave_way and all(gave_way)
    history = fast[0][0].history
    second_full = next(i for i, r in enumerate(history) if i > 0 and r["pass"] == "full")
    # settling passes, the pass that bounds every row, then a full pass where the trim was
    assert all(r["rows_assigned"] == len(X) for r in history[:second_full])


@pytest.mark.parametrize("settle", [False, True], ids=["active", "settling"])
def test_an_objective_that_falls_by_orders_is_summed_afresh(settle):
    """The running objective cancels the terms of the rows that moved: where it falls
    far below them (an outlier leaves a distant center), a full pass sums it afresh,
    so the objective stays within 1e-12 of plain Lloyd's (not 5e-12 off)."""
    X = np.array([[0.0, 0], [0.1, 0], [0, 0.1], [10, 10], [10.1, 10], [50, 50]])
    init = [np.array([[0.0, 0.0], [10.0, 10.0], [-100.0, -100.0]])]  # the third: empty
    plain, fast = run_both(
        da.from_array(X, chunks=(3, -1)),
        init,
        weights=None,
        margin="every row",
        max_active=1.0,
        settle=settle,
        max_iter=10,
        tol=0,
    )
    assert_same_iterations(plain, fast, X.dtype)
    assert [r["pass"] for r in fast[0][0].history] == ["full", "full", "active"]


@pytest.mark.parametrize("seed", [30, 48])
def test_sums_that_an_outlier_cancelled_keep_plain_lloyds_objective(seed):
    """Weighted heavy-tailed rows (Cauchy): outliers leave clusters whose centers then move
    far, and the running sums' own rounding, multiplied by that step, had put objectives
    up to 1.2e-11 away from plain Lloyd's (7 of 60 such fits). The rounding the sums
    gather is now part of the estimate, and such passes give way to a full pass."""
    rng = np.random.default_rng(seed)
    X = rng.standard_cauchy((6_000, 3))
    weights = rng.uniform(0, 3, len(X))
    k = int(rng.choice([2, 3, 5]))
    init = X[rng.choice(len(X), k, replace=False)]
    X = da.from_array(X, chunks=(1_500, -1))
    plain, runs = run_both(X, [init], weights=da.from_array(weights, chunks=1_500), settle=True)
    assert_same_iterations(plain, runs, np.float64)


@pytest.mark.parametrize("settle", [False, True], ids=["active", "settling"])
def test_an_objective_beyond_float64s_range_is_plain_lloyds(settle):
    """Rows of 1e155: squared distances overflow float64, the objective is infinite.

    The running objective would be inf - inf, NaN (found by a stress run): such
    a pass gives way to a full pass, and the fit keeps plain Lloyd's labels,
    iterations and (infinite) objective.
    """
    X, _ = make_blobs(600, n_features=3, centers=4, cluster_std=2.0, random_state=2)
    X = X * 1e155
    init = [X[:4].copy()]
    with np.errstate(over="ignore", invalid="ignore"):
        plain, fast = run_both(
            da.from_array(X, chunks=(200, -1)),
            init,
            margin="every row",
            max_active=1.0,
            settle=settle,
            max_iter=30,
            tol=0,
        )
    (plain_runs, plain_labels), (runs, labels) = plain, fast
    assert runs[0].n_iter == plain_runs[0].n_iter > 2
    np.testing.assert_array_equal(labels[0], plain_labels[0])
    np.testing.assert_array_equal(runs[0].centers, plain_runs[0].centers)
    assert [r["objective"] for r in runs[0].history] == [
        r["objective"] for r in plain_runs[0].history
    ]
    assert runs[0].inertia == plain_runs[0].inertia == np.inf


# -- through the estimator: schedulers, checkpoints, the CLI ---------------------------------


@pytest.fixture(scope="module")
def overlapping():
    X, _ = make_blobs(24_000, n_features=5, centers=9, cluster_std=3.0, random_state=4)
    return X


PARAMS = dict(n_clusters=9, init="random", n_init=2, random_state=1, tol=0, max_iter=60)


def _same_fit(a, b):
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)  # bitwise
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a.history_]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b.history_]
    np.testing.assert_array_equal(a.labels_.compute(), b.labels_.compute())


@pytest.mark.parametrize("max_active", [1.0, 0.2])
def test_x_is_read_by_the_full_passes_only(overlapping, max_active):
    source, X = counting_dask_array(overlapping, 3_000)
    with (
        dask.config.set(scheduler="threads"),
        mock.patch.object(bounded, "MAX_ACTIVE_FRACTION", max_active),
    ):
        init = overlapping[::2_000][:9]  # given: the random init would read rows too
        model = KMeans(**{**PARAMS, "init": init, "n_init": 1, "max_iter": 300}).fit(X)
    assert model.stop_reason_ == "fixed point"  # no final assignment pass
    full = sum(r["pass"] == "full" for r in model.history_)
    assert source.reads == X.numblocks[0] * full
    assert full < model.n_iter_ * (1 / 3 if max_active == 1 else 1)


def test_in_process_graph_and_zarr_labels_give_bitwise_the_same_fit(overlapping, tmp_path):
    in_process = KMeans(**PARAMS, algorithm="bounded").fit(overlapping)
    assert any(r["pass"] == "active" for r in in_process.history_)
    lazy = da.from_array(overlapping, chunks=(3_000, -1)).map_blocks(np.array)  # a graph
    _same_fit(KMeans(**PARAMS).fit(lazy), in_process)  # "auto" is "bounded"
    with dask.config.set(scheduler="sync"):
        zarr_labels = KMeans(**PARAMS, label_store="zarr").fit(overlapping)
    _same_fit(zarr_labels, in_process)
    plain = KMeans(**PARAMS, algorithm="lloyd").fit(overlapping)
    np.testing.assert_array_equal(plain.labels_.compute(), in_process.labels_.compute())
    np.testing.assert_allclose(plain.cluster_centers_, in_process.cluster_centers_, rtol=1e-12)


def test_a_run_settles_before_hamerlys_test(overlapping, zarr_data):
    """While many labels change, a run whose store holds every row makes settling passes.

    They assign every stored row, as plain Lloyd does, reading no X; the first
    pass that changes fewer than ``SETTLED_CHANGES`` of the labels ends them: the
    next pass bounds every row afresh, the one after (Hamerly's test on every
    row) keeps only the rows within the margin planned from their slacks, with
    no full pass, and Hamerly's test takes over. The same schedule, bitwise the
    same fit, for an in-memory array and a Zarr array of the same values and
    chunks.
    """
    params = {**PARAMS, "n_init": 1, "max_iter": 300, "init": overlapping[::2_000][:9]}
    in_memory = da.from_array(overlapping, chunks=(3_000, -1))  # the Zarr array's chunks
    plain = KMeans(**params, algorithm="lloyd").fit(in_memory)
    model = KMeans(**params, algorithm="bounded").fit(in_memory)
    _same_fit(KMeans(**params, algorithm="bounded").fit(zarr_data), model)
    np.testing.assert_array_equal(model.labels_.compute(), plain.labels_.compute())
    history, n = model.history_, len(overlapping)
    assert [r["labels_changed"] for r in history] == [r["labels_changed"] for r in plain.history_]
    threshold = bounded.SETTLED_CHANGES * n
    calm = next(i for i, r in enumerate(history) if r["labels_changed"] < threshold)
    assert calm > 3  # the test's point: a fit that takes a while to settle
    assert history[0]["pass"] == "full"  # every row active: they all fit in the store
    assert all(r["pass"] == "active" and r["rows_assigned"] == n for r in history[1 : calm + 2])
    trimming = history[calm + 2]
    assert trimming["pass"] == "active" and trimming["rows_read"] == n
    assert trimming["rows_assigned"] < n  # Hamerly's test kept the others' labels
    assert history[calm + 3]["rows_read"] < 0.5 * n  # the rows it kept
    late = history[calm + 3 :]
    assert late and sum(r["rows_assigned"] for r in late) < 0.2 * n * len(late)


@pytest.mark.parametrize("max_iter", [1, 3, 300])
def test_rows_are_bounded_only_for_the_active_passes_after_settling(
    overlapping, monkeypatch, max_iter
):
    """Settling passes leave the bounds stale, so the first pass (which keeps every row)
    and a stopped run's last pass (labels made its final centers') bound no row; the pass
    after settling bounds every row, for the active passes that follow it."""
    bounded_rows = []
    original = kernel._row_bounds

    def counting(x, *args):
        bounded_rows.append(len(x))
        return original(x, *args)

    monkeypatch.setattr(kernel, "_row_bounds", counting)
    params = {**PARAMS, "n_init": 1, "max_iter": max_iter, "init": overlapping[::2_000][:9]}
    X = da.from_array(overlapping, chunks=(3_000, -1))
    model = KMeans(**params, algorithm="bounded").fit(X)
    assert (sum(bounded_rows) >= len(X)) == (model.stop_reason_ == "fixed point")
    if max_iter < 300:  # stopped while settling (the fit settles after its 4th pass)
        assert model.stop_reason_ == "max_iter" and bounded_rows == []
    plain = KMeans(**params, algorithm="lloyd").fit(X)
    np.testing.assert_array_equal(model.labels_.compute(), plain.labels_.compute())
    np.testing.assert_allclose(model.cluster_centers_, plain.cluster_centers_, rtol=1e-12)
    assert model.inertia_ == pytest.approx(plain.inertia_, rel=1e-12)


@pytest.mark.distributed
def test_on_a_cluster_the_active_rows_stay_with_their_block(overlapping, tmp_path):
    """On a cluster the fit is bitwise the local one (restarts, in-memory X), and an active
    pass's task for block i depends on block i of the active store (and a stand-in for X's
    rows), nothing else: the active rows stay on the worker that read them, never gathered
    on the client or copied to every worker; X is not read."""
    from distributed import Client, LocalCluster

    from tests.test_schedulers import BlockTaskDependencies

    path = tmp_path / "x.zarr"
    zarr.create_array(path, shape=overlapping.shape, chunks=(3_000, 5), dtype="f8")[:] = (
        overlapping
    )
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        local = KMeans(**PARAMS).fit(overlapping)
        _same_fit(KMeans(**PARAMS).fit(da.from_array(overlapping, chunks=(3_000, -1))), local)
        client.register_plugin(BlockTaskDependencies())
        init = overlapping[::2_000][:9]
        model = KMeans(**{**PARAMS, "n_init": 1, "init": init, "max_iter": 300}).fit(str(path))
        seen = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins["block-task-dependencies"].seen
        )
    kinds = [r["pass"] for r in model.history_]
    n_blocks = 8
    active = [deps for deps in seen if "original-zarr" not in deps]
    assert kinds.count("active") > 0
    assert len(seen) - len(active) == n_blocks * kinds.count("full")  # X read: full passes
    # Active passes (and the labels written back): one block of state each, and a stand-in.
    assert active and all(deps.count("written_of") <= 2 and len(deps) <= 3 for deps in active)
    assert all(len(deps) <= 3 for deps in seen)


@pytest.fixture(scope="module")
def zarr_data(tmp_path_factory, overlapping):
    path = tmp_path_factory.mktemp("bounded") / "x.zarr"
    array = zarr.create_array(path, shape=overlapping.shape, chunks=(3_000, 5), dtype="f8")
    array[:] = overlapping
    return str(path)


class Interrupted(BaseException):
    """Stands for a kill."""


def _killed_at(call, params, source, out, monkeypatch):
    """Fit with a checkpoint at ``out``, killed just after its ``call``-th save."""
    original, calls = checkpoint.Checkpoint.save, []

    def interrupted(self, states):
        calls.append(1)
        original(self, states)
        if len(calls) == call:
            raise Interrupted

    monkeypatch.setattr(checkpoint.Checkpoint, "save", interrupted)
    with pytest.raises(Interrupted):
        KMeans(**params).fit(source, checkpoint=out)
    monkeypatch.setattr(checkpoint.Checkpoint, "save", original)


# 0.2: a few refreshes, points to save at; 1.0: every row stored, settling passes first
@pytest.mark.parametrize("max_active", [0.2, 1.0])
def test_a_killed_bounded_fit_resumes_to_the_same_result(
    zarr_data, tmp_path, monkeypatch, max_active
):
    monkeypatch.setattr(bounded, "MAX_ACTIVE_FRACTION", max_active)
    params = {**PARAMS, "n_init": 1}
    reference_fit = KMeans(**params).fit(zarr_data)
    n = len(reference_fit.labels_)
    settling = [
        r for r in reference_fit.history_ if (r["pass"], r["rows_assigned"]) == ("active", n)
    ]
    assert bool(settling) == (max_active == 1.0)
    original = checkpoint.Checkpoint.save
    saved_at = []

    def counting(self, states):
        saved_at.append(states[0].n_iter)
        original(self, states)

    monkeypatch.setattr(checkpoint.Checkpoint, "save", counting)
    _same_fit(KMeans(**params).fit(zarr_data, checkpoint=tmp_path / "all.zarr"), reference_fit)
    monkeypatch.setattr(checkpoint.Checkpoint, "save", original)
    # Saved at the start, before every full pass after the first, and at the end.
    full = [r["iteration"] - 1 for r in reference_fit.history_ if r["pass"] == "full"]
    assert saved_at[1:-1] == full[1:]
    # A share stored: full passes refresh it, points to save at mid-fit. Every row stored:
    # settling passes, then a trimming pass, where a full pass would be (resumed from the start).
    assert len(full) >= 2 or max_active == 1.0
    for call in (2, len(saved_at) // 2, len(saved_at) - 1):
        out = tmp_path / f"killed-{call}.zarr"
        _killed_at(call, params, zarr_data, out, monkeypatch)
        assert results.status(out) == "checkpoint"
        resumed = KMeans(**{**params, "random_state": 99}).fit(
            zarr_data, checkpoint=out, resume=True
        )
        _same_fit(resumed, reference_fit)
        _same_fit(load(out), reference_fit)


def test_a_resumed_fit_splits_as_the_uninterrupted_one_where_norms_differ(
    overlapping, tmp_path, monkeypatch
):
    """A full pass bounds rows with each tile's own largest norm, not X's largest found by
    an earlier pass of the process (which a resumed fit has not made): with one block of
    rows 30x the others, in float32, a resumed fit kept 2 rows fewer active at one split
    than the uninterrupted one (its history, rows_read, differed)."""
    X = overlapping.copy()
    X[-3_000:] *= 30
    path = tmp_path / "x.zarr"
    zarr.create_array(path, shape=X.shape, chunks=(3_000, 5), dtype="f4")[:] = X
    monkeypatch.setattr(bounded, "MAX_ACTIVE_FRACTION", 0.2)
    params = {**PARAMS, "n_init": 1}
    reference_fit = KMeans(**params).fit(str(path))
    original = checkpoint.Checkpoint.save
    saved = []
    monkeypatch.setattr(
        checkpoint.Checkpoint,
        "save",
        lambda self, states: (saved.append(1), original(self, states)),
    )
    _same_fit(KMeans(**params).fit(str(path), checkpoint=tmp_path / "all.zarr"), reference_fit)
    monkeypatch.setattr(checkpoint.Checkpoint, "save", original)
    assert len(saved) > 20  # a full pass most iterations: points to resume from
    for call in (len(saved) // 2, len(saved) - 1):  # the last found the fault
        out = tmp_path / f"killed-{call}.zarr"
        _killed_at(call, params, str(path), out, monkeypatch)
        _same_fit(KMeans(**params).fit(str(path), checkpoint=out, resume=True), reference_fit)


def test_a_checkpoint_of_the_other_algorithm_is_refused(zarr_data, tmp_path, monkeypatch):
    out = tmp_path / "fit.zarr"

    def interrupt(self, states):
        raise Interrupted

    monkeypatch.setattr(checkpoint.Checkpoint, "save", interrupt)
    with pytest.raises(Interrupted):
        KMeans(**PARAMS, algorithm="lloyd").fit(zarr_data, checkpoint=out)
    monkeypatch.undo()
    with pytest.raises(checkpoint.CheckpointMismatchError, match="algorithm"):
        KMeans(**PARAMS, algorithm="bounded").fit(zarr_data, checkpoint=out, resume=True)


def test_auto_is_bounded_unless_the_fit_is_capped_short(overlapping):
    """ "auto" runs plain Lloyd below max_iter=20: its history has no pass kinds."""
    short = KMeans(**{**PARAMS, "max_iter": 19}).fit(overlapping)
    assert "pass" not in short.history_[0]
    _same_fit(short, KMeans(**{**PARAMS, "max_iter": 19, "algorithm": "lloyd"}).fit(overlapping))
    long = KMeans(**{**PARAMS, "max_iter": 20}).fit(overlapping)
    _same_fit(long, KMeans(**{**PARAMS, "max_iter": 20, "algorithm": "bounded"}).fit(overlapping))


def test_the_history_says_which_passes_read_what(zarr_data, tmp_path, capsys):
    model = KMeans(**PARAMS).fit(zarr_data)
    path = tmp_path / "result.zarr"
    model.save(path)
    assert load(path).history_ == model.history_  # kinds and row counts kept
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    n_active = sum(r["pass"] == "active" for r in model.history_)
    assert n_active > 0 and text.count("active pass, read") == n_active
    assert text.count("full pass, read      24000") == model.n_iter_ - n_active
