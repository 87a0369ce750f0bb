"""The compiled labelling (dkmeans/_fused.c) against exact labels; fits with and without it."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import make_blobs

from dkmeans import KMeans, fused, kernel
from tests import reference

needs_kernel = pytest.mark.skipif(
    not fused.AVAILABLE, reason="the compiled kernel is not built or this CPU lacks AVX-512"
)


def _margin(tile: np.ndarray, centers: kernel.Centers) -> float:
    """The tile's certificate margin, as kernel._Tiles computes it (its own norm bound)."""
    margin, _ = kernel._tile_margin(
        tile, np.asarray(centers.error), -1.0, np.empty(tile.shape[1]), np.zeros(2)
    )
    return margin


@st.composite
def tiles(draw):
    """Float32 rows and centers (small integers, with real ties, or spread floats) and hints."""
    n = draw(st.integers(1, 80))
    d = draw(st.integers(1, 40))
    k = draw(st.sampled_from([1, 2, 3, 5, 15, 16, 17, 31, 33, 64, 100, 256]))
    if draw(st.booleans()):
        values = st.integers(-3, 3).map(float)
    else:
        values = st.floats(-1e4, 1e4, width=32)
    X = draw(hnp.arrays(np.float32, (n, d), elements=values))
    centers = draw(hnp.arrays(np.float32, (k, d), elements=values))
    dtype = draw(st.sampled_from([np.int8, np.int16, np.int32, np.int64]))
    if k > np.iinfo(dtype).max:
        dtype = np.int16
    hint = draw(hnp.arrays(np.int64, n, elements=st.integers(-1, k))).astype(dtype)
    if draw(st.booleans()):
        hint = hint[:0]  # no hints: every row by its best score
    return X, centers, hint, dtype


def _label(X, centers, hint, dtype=np.int32):
    """The kernel on every shape (kernel.prepare hands it only those where it pays)."""
    prepared = kernel.prepare(centers, np.float32)
    padded = fused.padded_centers(prepared.values, prepared.squared_norms)
    labels = np.full(len(X), -7, dtype=dtype)
    flagged = np.ones(len(X), dtype=bool)
    count = fused.label(X, padded, len(centers), hint, _margin(X, prepared), labels, flagged)
    return count, labels, flagged


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(tiles())
def test_rows_the_compiled_kernel_labels_have_their_exact_label(tile):
    X, centers, hint, dtype = tile
    count, labels, flagged = _label(X, centers, hint, dtype)
    assert count == np.count_nonzero(flagged)
    certain = ~flagged
    exact = reference.exact_labels(X, centers)
    np.testing.assert_array_equal(labels[certain], exact[certain])
    assert (labels[flagged] == -7).all()  # left for the exact path, untouched


@needs_kernel
@pytest.mark.parametrize("k, d", [(16, 16), (5, 3), (40, 70), (256, 4)])
def test_the_compiled_kernel_labels_separated_clusters_whatever_the_hints(k, d):
    X, truth = make_blobs(
        3000, d, centers=k, cluster_std=0.01, center_box=(-100, 100), random_state=k
    )
    X = X.astype(np.float32)
    centers = np.stack([X[truth == j].mean(axis=0) for j in range(k)]).astype(np.float32)
    exact = reference.exact_labels(X, centers)
    wrong = (exact + 1) % k
    for hint in (exact.astype(np.int16), wrong.astype(np.int16), np.empty(0, np.int16)):
        count, labels, _ = _label(X, centers, hint)
        assert count == 0
        np.testing.assert_array_equal(labels, exact)


@needs_kernel
def test_exact_ties_are_left_to_the_exact_path():
    centers = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    X = np.array([[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    count, labels, flagged = _label(X, centers, np.empty(0, np.int8))
    np.testing.assert_array_equal(flagged, [True, True, False])  # both ties; a clear row
    assert count == 2 and labels[2] == 0


@needs_kernel
def test_an_infinite_margin_leaves_the_tile_to_blas():
    X = np.ones((10, 3), dtype=np.float32)
    padded = fused.padded_centers(X[:2], np.ones(2, np.float32))
    labels, flagged = np.zeros(10, np.int8), np.zeros(10, dtype=bool)
    assert fused.label(X, padded, 2, labels, np.inf, labels, flagged) == -1


@needs_kernel
@pytest.mark.parametrize(
    "algorithm, k, d, weighted",
    [("lloyd", 16, 16, False), ("bounded", 16, 16, False), ("bounded", 70, 3, True)],
)
def test_fits_are_bitwise_the_same_with_and_without_the_compiled_kernel(
    monkeypatch, algorithm, k, d, weighted
):
    X, _ = make_blobs(40_000, d, centers=k, cluster_std=4.0, random_state=d)
    X = X.astype(np.float32)
    weights = np.random.default_rng(k).integers(0, 3, len(X)).astype(float) if weighted else None
    params = dict(
        n_clusters=k, init="random", n_init=2, random_state=1, tol=0, algorithm=algorithm
    )

    def fit():
        model = KMeans(**params).fit(X, sample_weight=weights)
        return model, np.asarray(model.labels_)

    with_kernel, labels = fit()
    assert kernel.prepare(X[:k], np.float32).fused is not None
    monkeypatch.setattr(fused, "AVAILABLE", False)
    assert kernel.prepare(X[:k], np.float32).fused is None
    without, labels_without = fit()
    np.testing.assert_array_equal(labels, labels_without)
    np.testing.assert_array_equal(with_kernel.cluster_centers_, without.cluster_centers_)
    assert with_kernel.inertia_ == without.inertia_
    assert with_kernel.n_iter_ == without.n_iter_
    changed = [record["labels_changed"] for record in with_kernel.history_]
    assert changed == [record["labels_changed"] for record in without.history_]
