"""Exact labels: every label is the exact argmin of the exact squared distance, ties lowest.

The reference is exact rational arithmetic on the stored floats
(tests/reference.py: ``fractions.Fraction``). The data are built to be
tie-heavy, where a GEMM's rounding decides between exactly equidistant
centers: pixels stored as k/255, small integers, duplicated rows, centers
that are data rows, centers equidistant from rows by construction.
"""

from unittest import mock

import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dkmeans import KMeans, exact, kernel
from tests import reference

DTYPES = st.sampled_from([np.float32, np.float64])
# Both ways of forming a tile's scores (dkmeans.kernel._scores_by_row; float32 only),
# whatever the shape would choose: each must give the exact labels on its own.
BOTH_LAYOUTS = pytest.mark.parametrize("by_row", [False, True], ids=["by-column", "by-row"])


def scores_by_row(by_row: bool):
    return mock.patch.object(kernel, "_scores_by_row", lambda n_features, n_clusters: by_row)


def exact_labels_of_block(X, centers, hint_kind, seed):
    """The kernel's labels of a block given previous labels of one kind as its hint."""
    exact = reference.exact_labels(X, centers)
    rng = np.random.default_rng(seed)
    hint = {
        "none": None,
        "random": rng.integers(len(centers), size=len(X)),
        "exact": exact,  # late in a fit: nearly every label holds
        "partly wrong": np.where(
            rng.random(len(X)) < 0.3, rng.integers(len(centers), size=len(X)), exact
        ),
    }[hint_kind]
    _, labels = kernel.block_stats(X, centers, prev_labels=hint, label_dtype=np.int16)
    if hint is not None:  # labels only (a settling pass's), from the same hint
        prepared = kernel.prepare(centers, X.dtype)
        relabelled = kernel.relabel(np.ascontiguousarray(X), prepared, hint.astype(np.int16))
        np.testing.assert_array_equal(relabelled, exact)
        assert relabelled.dtype == np.int16
    return labels, exact


HINTS = st.sampled_from(["none", "random", "exact", "partly wrong"])


@st.composite
def tied_problems(draw, max_rows=200, max_features=6, max_k=12):
    """Rows and centers where exact ties are the rule, not the exception."""
    n = draw(st.integers(1, max_rows))
    d = draw(st.integers(1, max_features))
    k = draw(st.integers(2, max_k))
    dtype = draw(DTYPES)
    kind = draw(st.sampled_from(["pixels", "integers", "equidistant", "mirrored pixels"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind in ("pixels", "mirrored pixels"):  # k/255, as image data is stored
        X = rng.integers(0, 256, size=(n, d)) / 255
    else:  # small integers, rows duplicated
        X = rng.integers(-3, 4, size=(n, d)).astype(np.float64)
        X[rng.integers(n, size=n // 2)] = X[rng.integers(n, size=n // 2)]
    X = X.astype(dtype)
    if kind == "mirrored pixels":  # about a row, by k/255: ties up to rounding, which decides
        row = X[rng.integers(n)].astype(np.float64)
        offsets = rng.integers(-40, 41, size=(k // 2 + 1, d)) / 255
        centers = np.concatenate([row + offsets, row - offsets])[:k]
    elif kind == "equidistant":  # pairs of centers mirrored about a row: exact ties
        row = X[rng.integers(n)].astype(np.float64)
        offsets = rng.integers(-2, 3, size=(k // 2 + 1, d))
        centers = np.concatenate([row + offsets, row - offsets])[:k]
    else:  # centers that are data rows, some of them twice
        centers = X[rng.integers(n, size=k)]
    return X, centers.astype(dtype)


@BOTH_LAYOUTS
@given(tied_problems(), st.integers(3, 40), HINTS, st.integers(0, 2**16))
def test_every_label_is_the_exact_argmin_on_tied_data(by_row, problem, tile_rows, hint, seed):
    X, centers = problem
    tiles = mock.patch.object(kernel, "_TILE_ELEMENTS", tile_rows * len(centers))
    with scores_by_row(by_row), tiles:
        labels, sqdist = kernel.assign(X, centers)
        hinted, exact = exact_labels_of_block(X, centers, hint, seed)
    np.testing.assert_array_equal(labels, exact)
    np.testing.assert_array_equal(hinted, exact)  # hints make it cheaper, not different
    # the distances are those of the labels, to float64 rounding of the exact value
    np.testing.assert_allclose(sqdist, reference.exact_sqdist(X, centers, labels), rtol=1e-14)


@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 120), st.integers(1, 24)),
        elements=st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=True, width=64),
    ),
    st.integers(1, 30),
    DTYPES,
    st.integers(0, 2**32 - 1),
)
@BOTH_LAYOUTS
def test_every_label_is_the_exact_argmin_on_arbitrary_floats(by_row, X, k, dtype, seed):
    X = X.astype(dtype)
    rng = np.random.default_rng(seed)
    centers = X[rng.integers(len(X), size=k)] + rng.normal(size=(k, X.shape[1])) * rng.choice(
        [0.0, 1e-6, 1.0], size=(k, 1)
    )
    centers = centers.astype(dtype)
    with scores_by_row(by_row):
        labels, _ = kernel.assign(X, centers)
        hinted, exact = exact_labels_of_block(X, centers, "partly wrong", seed)
    np.testing.assert_array_equal(labels, exact)
    np.testing.assert_array_equal(hinted, exact)


@given(
    st.integers(1, 300),
    st.integers(1, 8),
    st.integers(2, 12),
    st.sampled_from([1e16, 1e18, 4e18]),
    st.integers(0, 2**32 - 1),
)
@BOTH_LAYOUTS
def test_every_label_is_the_exact_argmin_where_float32_scores_overflow(
    by_row, n, d, k, scale, seed
):
    """Blobs of 1e17-1e19 in float32: some centers' ``||c||²`` or products pass float32's
    largest value. An infinite score ranked its center last, whatever its distance, and
    such labels were certified (found by the bounded property test with magnitudes)."""
    rng = np.random.default_rng(seed)
    blobs = rng.uniform(-10, 10, size=(3, d))
    X = ((blobs[rng.integers(3, size=n)] + rng.normal(0, 3, size=(n, d))) * scale).astype(
        np.float32
    )
    centers = X[rng.integers(n, size=k)]
    with scores_by_row(by_row):
        labels, _ = kernel.assign(X, centers)
        hinted, exact = exact_labels_of_block(X, centers, "partly wrong", seed)
    np.testing.assert_array_equal(labels, exact)
    np.testing.assert_array_equal(hinted, exact)


@BOTH_LAYOUTS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_centers_repeated_many_times_label_by_their_first(by_row, dtype):
    """More centers than distinct points (30 centers, 5 places, -0.0 beside 0.0): every
    row ties among copies, and the first copy, the lowest index, takes it."""
    rng = np.random.default_rng(3)
    places = np.round(rng.normal(size=(5, 3)), 1)
    places[0] = 0.0
    X = places[rng.integers(5, size=150)] + rng.choice([0.0, 0.1], size=(150, 3))
    centers = places[rng.integers(5, size=30)]
    zero = (centers == 0).all(axis=1)
    centers[zero & (rng.random(30) < 0.5)] *= -1.0  # -0.0 for some copies of 0.0: the same point
    X, centers = X.astype(dtype), centers.astype(dtype)
    prepared = kernel.prepare(centers, dtype)
    expected = np.array([np.flatnonzero((centers == row).all(axis=1))[0] for row in centers])
    np.testing.assert_array_equal(prepared.twins, expected)
    with scores_by_row(by_row):
        labels, _ = kernel.assign(X, centers)
        hinted, exact = exact_labels_of_block(X, centers, "random", 3)
    np.testing.assert_array_equal(labels, exact)
    np.testing.assert_array_equal(hinted, exact)
    assert np.all(prepared.twins[labels] == labels)


@given(tied_problems(), st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_nearest_candidate_kept_across_rounds_is_the_exact_argmin(problem, round_sizes):
    """k-means|| keeps each row's nearest candidate and adds a round's new ones at a time
    (kernel.nearer): the same as labelling with all the candidates at once, exactly."""
    X, candidates = problem
    nearest = sqdist = None
    first = 0
    for size in round_sizes:
        stop = min(first + size, len(candidates))
        nearest, sqdist = kernel.nearer(X, candidates[:stop], first, nearest, sqdist)
        first = stop
    exact = reference.exact_labels(X, candidates[:first])
    np.testing.assert_array_equal(nearest, exact)
    _, direct = kernel.assign(X, candidates[:first])  # and its distances bitwise
    np.testing.assert_array_equal(sqdist, direct)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_magnitudes_are_decided_exactly(dtype):
    """Values whose squares overflow the dtype, or whose differences underflow float64's
    range of exact products: still the exact argmin (slow path, Python integers at worst)."""
    big = 1e30 if dtype == np.float32 else 1e200
    tiny = 1e-30 if dtype == np.float32 else 1e-200
    X = np.array([[big, 0.0], [0.0, tiny], [tiny, tiny], [-big, big]], dtype=dtype)
    centers = np.array([[big, tiny], [0.0, 0.0], [-big, big], [big, 0.0]], dtype=dtype)
    labels, _ = kernel.assign(X, centers)
    np.testing.assert_array_equal(labels, reference.exact_labels(X, centers))
    nearest, _ = kernel.nearer(X, centers, 1, *kernel.nearer(X, centers[:1], 0, None, None))
    np.testing.assert_array_equal(nearest, reference.exact_labels(X, centers))


def test_a_fit_labels_every_row_with_its_exact_nearest_final_center():
    """Pixels of an image-like dataset (k/255), 16 centers: the fit's labels, predict on a
    dask array and every iteration's labels (a fixed point: its labels are the argmins)."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(40, 3))
    X = (palette[rng.integers(40, size=20_000)] + rng.integers(-6, 7, size=(20_000, 3))).clip(
        0, 255
    ) / 255.0
    model = KMeans(16, init=X[rng.choice(len(X), 16, replace=False)], tol=0).fit(X)
    exact = reference.exact_labels(X, model.cluster_centers_)
    np.testing.assert_array_equal(model.labels_.compute(), exact)
    lazy = model.predict(da.from_array(X, chunks=(3_000, -1)))
    np.testing.assert_array_equal(lazy.compute(), exact)
    assert model.stop_reason_ == "fixed point"


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
small_dyadic = st.integers(-(2**20), 2**20).map(lambda v: v / 64)


@given(
    st.integers(1, 8).flatmap(
        lambda d: st.tuples(
            *(
                hnp.arrays(np.float64, d, elements=st.one_of(finite, small_dyadic))
                for _ in range(3)
            )
        )
    ),
    st.booleans(),
)
def test_exact_compare_is_the_sign_of_the_exact_difference(rows, mirrored):
    """On any floats: the sign of ||x - a||² - ||x - b||² in rationals, or 2 out of range."""
    from fractions import Fraction

    x, a, b = rows
    if mirrored:  # b the mirror of a about x, where that is exact: a tie by construction
        with np.errstate(over="ignore", invalid="ignore"):  # the rows np.where drops
            b = np.where(np.abs(x) < 2**40, 2 * x - a, b)
    sign = exact.compare(x, a, b, np.empty(12 * len(x) + 4))
    difference = sum((Fraction(xf) - Fraction(af)) ** 2 for xf, af in zip(x, a, strict=True))
    difference -= sum((Fraction(xf) - Fraction(bf)) ** 2 for xf, bf in zip(x, b, strict=True))
    expected = (difference > 0) - (difference < 0)
    if sign == 2:  # it may give up only near the ends of the expansions' range
        values = [Fraction(v) for v in (*x, *a, *b)]
        values += [Fraction(xf) - Fraction(cf) for xf in x for cf in (*a, *b)]
        low, high = Fraction(exact.EXACT_MIN * 2.0**60), Fraction(exact.EXACT_MAX / 4)
        assert any(v != 0 and not low <= abs(v) <= high for v in values)
    else:
        assert sign == expected
