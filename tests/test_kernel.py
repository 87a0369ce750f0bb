"""The per-block kernel and the combine against brute-force float64 references."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dkmeans import kernel
from dkmeans.stats import ChunkStats, Farthest, combine
from tests import reference


@st.composite
def integer_blocks(draw, max_rows=120, max_features=5, max_k=9):
    """Small-integer data and centers (exact in float: ties are real ties)."""
    n = draw(st.integers(1, max_rows))
    d = draw(st.integers(1, max_features))
    k = draw(st.integers(1, max_k))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = st.integers(-4, 4)
    X = draw(hnp.arrays(np.int64, (n, d), elements=values)).astype(dtype)
    centers = draw(hnp.arrays(np.int64, (k, d), elements=values)).astype(dtype)
    weights = draw(st.none() | hnp.arrays(np.int64, n, elements=st.integers(0, 3)).map(np.float64))
    prev = draw(st.none() | hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    return X, centers, weights, prev


@given(
    integer_blocks(),
    st.integers(0, 10**6),
    st.sampled_from([np.int8, np.int16, np.int32, np.int64]).map(np.dtype),
)
def test_block_stats_equal_reference_exactly_on_integer_data(block, row_offset, dtype):
    X, centers, weights, prev = block
    k = len(centers)
    if prev is not None:
        prev = prev.astype(dtype)  # as the label stores keep them
    stats, labels = kernel.block_stats(
        X,
        centers,
        prev_labels=prev,
        weights=weights,
        row_offset=row_offset,
        with_moments=True,
        label_dtype=dtype,
    )
    ref_labels, ref_sqdist = reference.assign(X, centers)
    # Labels are argmins, ties to the lowest index: exact on integer data.
    assert labels.dtype == dtype
    np.testing.assert_array_equal(labels, ref_labels)
    ref_sums, ref_weights = reference.cluster_sums(X, ref_labels, weights, k)
    np.testing.assert_array_equal(stats.sums, ref_sums)
    np.testing.assert_array_equal(stats.weights, ref_weights)
    assert stats.objective == reference.objective(X, centers, ref_labels, weights)
    expected_changed = len(X) if prev is None else int(np.sum(prev != ref_labels))
    assert stats.changed == expected_changed
    # Farthest candidates: as many positive-weight rows as the block has empty
    # clusters, farthest first, ties by row.
    eligible = np.arange(len(X)) if weights is None else np.flatnonzero(weights > 0)
    n_empty = int(np.sum(ref_weights == 0))
    order = sorted(eligible, key=lambda i: (-ref_sqdist[i], i))[:n_empty]
    np.testing.assert_array_equal(
        stats.farthest.rows, np.array(order, dtype=np.int64) + row_offset
    )
    np.testing.assert_array_equal(stats.farthest.points, X[order].astype(np.float64))
    np.testing.assert_array_equal(stats.farthest.labels, ref_labels[order])
    np.testing.assert_allclose(
        stats.moments.variance, X.astype(np.float64).var(axis=0), atol=1e-12
    )


@given(integer_blocks(max_rows=300, max_features=40, max_k=80))
def test_labels_equal_reference_exactly_with_many_centers_and_ties(block):
    """Negative, zero and positive scores, duplicated centers: the lowest index wins."""
    X, centers, _, _ = block
    centers = np.concatenate([centers, centers[::-1]])  # every center twice
    labels, sqdist = kernel.assign(X, centers)
    ref_labels, ref_sqdist = reference.assign(X, centers)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(sqdist, ref_sqdist)


@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 300), st.integers(1, 40)),
        elements=st.floats(-1e3, 1e3, allow_nan=False, width=64),
    ),
    st.integers(1, 40),
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
)
def test_labels_are_argmins_on_arbitrary_floats(X, k, dtype, seed):
    """On arbitrary floats the GEMM expansion may break near-ties differently:
    the chosen center must still be nearest up to that rounding, and the
    statistics must be exact for the labels chosen."""
    X = X.astype(dtype)
    rng = np.random.default_rng(seed)
    centers = (X[rng.integers(len(X), size=k)] + rng.normal(size=(k, X.shape[1]))).astype(dtype)
    stats, labels = kernel.block_stats(X, centers)
    d = reference.sq_distances(X, centers)
    chosen = d[np.arange(len(X)), labels]
    scale = np.einsum("ij,ij->i", X.astype(np.float64), X.astype(np.float64)) + np.max(
        np.einsum("ij,ij->i", centers.astype(np.float64), centers.astype(np.float64))
    )
    slack = 8 * np.finfo(dtype).eps * (scale + 1.0)
    assert np.all(chosen <= d.min(axis=1) + slack)
    sums, totals = reference.cluster_sums(X, labels, None, k)
    np.testing.assert_allclose(stats.sums, sums, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(stats.weights, totals)
    np.testing.assert_allclose(
        stats.objective, reference.objective(X, centers, labels), rtol=1e-12, atol=1e-9
    )


@given(integer_blocks(max_rows=200), st.lists(st.integers(1, 60), min_size=1, max_size=6))
def test_combine_over_any_split_equals_the_whole(block, cuts):
    """Stats of a block equal the combined stats of any split of it."""
    X, centers, weights, prev = block
    k = len(centers)
    bounds = sorted({0, len(X), *[c % len(X) for c in cuts]})
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        stats, _ = kernel.block_stats(
            X[lo:hi],
            centers,
            prev_labels=None if prev is None else prev[lo:hi],
            weights=None if weights is None else weights[lo:hi],
            row_offset=lo,
            with_moments=True,
        )
        parts.append(stats)
    whole, _ = kernel.block_stats(X, centers, prev_labels=prev, weights=weights, with_moments=True)
    total = combine(parts, n_farthest=k)
    np.testing.assert_array_equal(total.sums, whole.sums)  # integer data: exact
    np.testing.assert_array_equal(total.weights, whole.weights)
    assert total.objective == whole.objective
    assert total.changed == whole.changed
    # Every part has at least as many empty clusters as the whole, so the
    # whole's candidates lead the merged list.
    n_whole = len(whole.farthest.rows)
    assert len(total.farthest.rows) >= n_whole
    np.testing.assert_array_equal(total.farthest.rows[:n_whole], whole.farthest.rows)
    np.testing.assert_allclose(total.moments.mean, whole.moments.mean, atol=1e-12)
    np.testing.assert_allclose(total.moments.m2, whole.moments.m2, rtol=1e-10, atol=1e-9)


def test_moments_merge_is_accurate_with_a_large_offset():
    """Chan's update keeps the variance where a sum of squares would cancel."""
    rng = np.random.default_rng(0)
    X = 1e8 + rng.normal(size=(10_000, 2))
    parts = [kernel.column_moments(X[i : i + 1000]) for i in range(0, len(X), 1000)]
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    np.testing.assert_allclose(total.variance, X.var(axis=0), rtol=1e-6)


def test_block_stats_rejects_a_label_dtype_too_small_for_k():
    X = np.zeros((4, 2), dtype=np.float32)
    centers = np.arange(400, dtype=np.float32).reshape(200, 2)
    with pytest.raises(ValueError, match="label_dtype int8 cannot hold labels up to 199"):
        kernel.block_stats(X, centers, label_dtype=np.dtype(np.int8))


def test_farthest_select_skips_zero_weight_rows():
    X = np.arange(10, dtype=np.float64)[:, None]
    sqdist = X[:, 0] ** 2
    weights = np.ones(10)
    weights[9] = 0
    far = Farthest.select(sqdist, np.zeros(10, dtype=np.int64), weights, X, 100, 3)
    np.testing.assert_array_equal(far.rows, [108, 107, 106])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_assign_tiles_give_the_same_labels_as_one_tile(monkeypatch, dtype):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(5000, 3)).astype(dtype)
    centers = rng.normal(size=(7, 3)).astype(dtype)
    whole = kernel.assign(X, centers)
    monkeypatch.setattr(kernel, "_TILE_ELEMENTS", 7 * 33)  # tiles of 33 rows
    tiled = kernel.assign(X, centers)
    np.testing.assert_array_equal(whole[0], tiled[0])
    np.testing.assert_array_equal(whole[1], tiled[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distances_match_reference(dtype):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 4)).astype(dtype)
    centers = rng.normal(size=(3, 4)).astype(dtype)
    out = kernel.distances(X, centers)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, np.sqrt(reference.sq_distances(X, centers)), rtol=1e-5)


def test_chunkstats_combine_of_one_is_itself():
    stats, _ = kernel.block_stats(np.eye(3), np.eye(3))
    assert isinstance(combine([stats], 3), ChunkStats)
    assert combine([stats], 3) is stats


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_row_that_is_not_finite_gives_a_non_finite_objective_not_an_error(dtype, bad):
    """Later passes do not re-validate X: the caller sees the objective and re-checks the block."""
    rng = np.random.default_rng(0)
    X = rng.integers(0, 4, size=(500, 3)).astype(dtype)
    X[137, 1] = bad
    centers = X[[0, 1, 2, 3]].copy()
    centers[137 % 4] = X[0]  # keep the centers finite
    stats, labels = kernel.block_stats(X, centers, prev_labels=np.zeros(500, np.int64))
    assert not np.isfinite(stats.objective)
    assert 0 <= labels.min() and labels.max() < len(centers)


@given(
    st.integers(0, 150),
    st.sampled_from([1, 2, 3, 4, 5, 8, 16, 24, 32, 64, 65, 128]),
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
)
def test_norm_bound_is_built_from_each_features_largest_magnitude(n, d, dtype, seed):
    """Features dividing 64 take the lane loop (with a tail of rows), the others the row loop."""
    rng = np.random.default_rng(seed)
    scales = rng.choice([0.0, 1e-30, 1.0, 1e30], size=(n, d))
    X = (rng.normal(size=(n, d)) * scales).astype(dtype)
    X[rng.random((n, d)) < 0.2] *= -1  # signs, and -0.0
    largest = np.full(d, np.nan)
    bound = kernel._norm_bound(X, largest)
    expected = np.abs(X.astype(np.float64)).max(axis=0) if n else np.zeros(d)
    np.testing.assert_array_equal(largest, expected)
    norms = np.sqrt(np.einsum("ij,ij->i", X.astype(np.float64), X.astype(np.float64)))
    assert np.all(norms <= bound) and bound <= np.sqrt(np.sum(expected**2)) * (1 + 1e-12)


@given(
    st.integers(1, 300),
    st.integers(1, 40),
    st.integers(2, 12),
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_moved_totals_match_a_brute_force_reference(n, d, k, dtype, weighted, seed):
    """The bounded algorithm's changes of the totals from the rows that changed label."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * 10).astype(dtype)
    old = rng.integers(0, k, n).astype(np.int16)
    new = np.where(rng.random(n) < 0.4, rng.integers(0, k, n), old).astype(np.int16)
    weights = rng.uniform(0, 3, n) if weighted else np.empty(0)
    w = weights if weighted else np.ones(n)
    reference64 = rng.normal(size=(k, d)) * 10
    rows = np.flatnonzero(rng.random(n) < 0.8).astype(np.int32)  # some rows kept, as given
    sums, totals, sizes = np.zeros((k, d)), np.zeros(k), np.zeros((k, 2))
    change, size = kernel.moved_totals(
        x, weights, rows, old, new, reference64, sums, totals, sizes
    )
    x64, go = x.astype(np.float64), rows[old[rows] != new[rows]]
    expected_sums, expected_totals = np.zeros((k, d)), np.zeros(k)
    np.add.at(expected_sums, new[go], w[go, None] * x64[go])
    np.subtract.at(expected_sums, old[go], w[go, None] * x64[go])
    np.add.at(expected_totals, new[go], w[go])
    np.subtract.at(expected_totals, old[go], w[go])
    joining = ((x64[go] - reference64[new[go]]) ** 2).sum(axis=1)
    leaving = ((x64[go] - reference64[old[go]]) ** 2).sum(axis=1)
    scale = float(np.sum(w[go] * (joining + leaving)))
    np.testing.assert_allclose(sums, expected_sums, atol=1e-12 * max(scale, 1.0))
    np.testing.assert_allclose(totals, expected_totals, atol=1e-12 * n)
    assert abs(change - float(np.sum(w[go] * (joining - leaving)))) <= 1e-12 * max(scale, 1e-300)
    assert size == pytest.approx(scale, rel=1e-12, abs=1e-300)
    assert np.all(sizes >= 0) and (len(go) == 0 or np.all(sizes[np.unique(new[go])] > 0))
