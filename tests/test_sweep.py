"""dkmeans.sweep: every k in the same passes, each k bitwise its own fit, exact scores."""

from collections import Counter

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import make_blobs
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

import dkmeans
from dkmeans import KMeans, bounded, checkpoint, results, sweeps
from dkmeans.testing import CountingArray

KS = [1, 2, 4, 7]


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(n_samples=6_000, n_features=3, centers=5, cluster_std=2.0, random_state=3)
    return X


def simplified_silhouette(X, labels, centers, weights=None):
    """The NumPy reference: each row's distances to all centers, in float64, directly."""
    X64, c64 = X.astype(np.float64), centers.astype(np.float64)
    dist = np.sqrt(((X64[:, None, :] - c64[None, :, :]) ** 2).sum(axis=2))
    a = dist[np.arange(len(X)), labels]
    dist[np.arange(len(X)), labels] = np.inf
    b = dist.min(axis=1)
    top = np.maximum(a, b)
    s = np.divide(b - a, top, out=np.zeros(len(X)), where=top > 0)
    return np.average(s, weights=weights)


def davies_bouldin(X, labels):
    """scikit-learn's definition, distances computed directly (its GEMM expansion rounds:
    a row at its cluster's mean is 1e-8 away from it, 3e-8 relative on tie-heavy data)."""
    present = np.unique(labels)
    means = np.array([X[labels == j].mean(axis=0) for j in present])
    spread = np.array(
        [
            np.sqrt(((X[labels == j] - m) ** 2).sum(axis=1)).mean()
            for j, m in zip(present, means, strict=True)
        ]
    )
    separation = np.sqrt(((means[:, None] - means[None]) ** 2).sum(axis=2))
    if np.allclose(spread, 0) or np.allclose(separation, 0):
        return 0.0
    separation[separation == 0] = np.inf
    ratios = (spread[:, None] + spread[None]) / separation
    np.fill_diagonal(ratios, -np.inf)
    return ratios.max(axis=1).mean()


def assert_same_fit(model, alone):
    np.testing.assert_array_equal(model.cluster_centers_, alone.cluster_centers_)  # bitwise
    assert model.inertia_ == alone.inertia_
    assert (model.n_iter_, model.stop_reason_) == (alone.n_iter_, alone.stop_reason_)
    assert [r["objective"] for r in model.history_] == [r["objective"] for r in alone.history_]
    np.testing.assert_array_equal(model.labels_.compute(), alone.labels_.compute())


@pytest.mark.parametrize(
    ("init", "algorithm", "n_init", "weighted"),
    [
        ("k-means||", "lloyd", 1, False),
        ("k-means||", "bounded", 2, True),
        ("random", "bounded", 3, False),
        ("k-means++", "lloyd", 2, True),
    ],
)
def test_each_k_ends_bitwise_as_its_own_fit(blobs, init, algorithm, n_init, weighted):
    X = da.from_array(blobs, chunks=(1_000, -1))
    w = None
    if weighted:
        w = da.from_array(np.random.default_rng(1).uniform(0, 2, len(blobs)), chunks=1_000)
    params = dict(init=init, algorithm=algorithm, n_init=n_init, random_state=8, max_iter=60)
    found = dkmeans.sweep(X, [7, 1, 4, 2], sample_weight=w, **params)
    np.testing.assert_array_equal(found.table["n_clusters"], KS)
    for i, k in enumerate(KS):
        alone = KMeans(k, **params).fit(X, sample_weight=w)
        assert_same_fit(found.models[k], alone)
        assert found.table["inertia"][i] == alone.inertia_
        assert found.table["n_iter"][i] == alone.n_iter_
        assert found.table["stop_reason"][i] == alone.stop_reason_


def test_bounded_runs_share_memory_per_k_not_per_sweep(blobs, monkeypatch):
    """With a budget so small that the active set is capped, each k still ends as alone."""
    row_bytes = 3 * 8 + 32
    monkeypatch.setattr(bounded, "ACTIVE_MEMORY_BYTES", row_bytes * 1_500)  # a quarter of X
    X = da.from_array(blobs, chunks=(1_000, -1))
    params = dict(algorithm="bounded", random_state=2, tol=0, max_iter=80)
    found = dkmeans.sweep(X, [3, 6], **params)
    for k in (3, 6):
        alone = KMeans(k, **params).fit(X)
        assert_same_fit(found.models[k], alone)
        assert any(r["pass"] == "active" for r in alone.history_)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scores_equal_scikit_learns_and_the_reference(blobs, dtype):
    X = blobs.astype(dtype)
    found = dkmeans.sweep(da.from_array(X, chunks=(700, -1)), KS, random_state=0)
    rtol = 1e-9 if dtype == np.float64 else 1e-5  # float32: the means sklearn takes round
    for i, k in enumerate(KS):
        model = found.models[k]
        labels = model.labels_.compute()
        expected = simplified_silhouette(X, labels, model.cluster_centers_) if k > 1 else np.nan
        np.testing.assert_allclose(found.table["simplified_silhouette"][i], expected, rtol=1e-9)
        if k == 1:  # undefined for one cluster, as in scikit-learn
            assert np.isnan(found.table["calinski_harabasz"][i])
            assert np.isnan(found.table["davies_bouldin"][i])
            continue
        np.testing.assert_allclose(
            found.table["calinski_harabasz"][i], calinski_harabasz_score(X, labels), rtol=rtol
        )
        np.testing.assert_allclose(
            found.table["davies_bouldin"][i], davies_bouldin_score(X, labels), rtol=rtol
        )
        np.testing.assert_allclose(
            found.table["davies_bouldin"][i],
            davies_bouldin(X.astype(np.float64), labels),
            rtol=rtol,
        )


@given(
    data=st.data(),
    n_rows=st.integers(12, 80),
    n_features=st.integers(1, 4),
    levels=st.integers(2, 6),
)
def test_weights_count_as_repeated_rows_and_chunking_does_not_matter(
    data, n_rows, n_features, levels
):
    """Integer weights score as the rows repeated; tie-heavy values (few levels) included."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    X = rng.integers(0, levels, size=(n_rows, n_features)).astype(np.float64) / levels
    w = rng.integers(0, 4, size=n_rows).astype(np.float64)
    w[rng.integers(n_rows)] += 1  # some weight
    k = data.draw(st.integers(1, 4))
    centers = X[rng.choice(n_rows, size=k, replace=False)]
    chunks = data.draw(st.integers(3, n_rows))
    params = dict(init=centers, n_init=1, max_iter=5)
    model = KMeans(k, **params).fit(X, sample_weight=w)
    labels, fitted = model.labels_.compute(), model.cluster_centers_
    repeated, repeated_labels = (
        np.repeat(X, w.astype(int), axis=0),
        np.repeat(labels, w.astype(int)),
    )
    means = np.array(
        [
            X[labels == j].T @ w[labels == j] / w[labels == j].sum()
            if w[labels == j].sum() > 0
            else fitted[j]
            for j in range(k)
        ]
    )
    for chunk_rows in (chunks, n_rows):
        scores = sweeps.score(
            da.from_array(X, chunks=(chunk_rows, -1)),
            da.from_array(w, chunks=chunk_rows),
            labels={k: da.from_array(labels, chunks=chunk_rows)},
            centers={k: fitted},
            means={k: means},
        )[k]
        np.testing.assert_allclose(
            scores["simplified_silhouette"],
            simplified_silhouette(repeated, repeated_labels, fitted) if k > 1 else np.nan,
            rtol=1e-9,
            atol=1e-12,
        )
        if len(np.unique(repeated_labels)) < 2:
            assert np.isnan(scores["calinski_harabasz"]) and np.isnan(scores["davies_bouldin"])
            continue
        if all(np.ptp(repeated[repeated_labels == j]) == 0 for j in np.unique(repeated_labels)):
            # Every cluster one point repeated: CH divides by a within-cluster spread that
            # is zero exactly and a rounding of the means here (ill-posed; sklearn says 1.0).
            continue
        np.testing.assert_allclose(
            scores["calinski_harabasz"],
            calinski_harabasz_score(repeated, repeated_labels),
            rtol=1e-9,
        )
        np.testing.assert_allclose(
            scores["davies_bouldin"], davies_bouldin(repeated, repeated_labels), rtol=1e-9
        )


class BlockCounter(CountingArray):
    """Counts reads per row block (by the first row a read asks for)."""

    def __init__(self, array, chunk_rows):
        super().__init__(array)
        self.chunk_rows, self.per_block = chunk_rows, Counter()

    def __getitem__(self, key):
        rows = key[0] if isinstance(key, tuple) else key
        self.per_block[rows.start // self.chunk_rows] += 1
        return super().__getitem__(key)


def _passes_over(array, run) -> int:
    counter = BlockCounter(array, 1_000)
    X = da.from_array(counter, chunks=(1_000, -1), asarray=True, inline_array=True)
    counter.per_block.clear()
    run(X)
    return max(counter.per_block.values())


@pytest.mark.parametrize("algorithm", ["lloyd", "bounded"])
def test_a_sweep_reads_x_once_per_iteration_any_fit_reads_it_plus_one_pass(blobs, algorithm):
    """The iterations in which some k reads X (every one with lloyd: as often as the longest
    fit), each read once for all k, after the shared initialisation, and one scoring pass."""
    params = dict(algorithm=algorithm, random_state=5, tol=0, max_iter=100)
    sweep_passes = _passes_over(blobs, lambda X: dkmeans.sweep(X, KS, **params))
    alone, reading = [], set()  # reads of each fit alone; iterations in which one reads X
    init_passes = 0  # reads before the first iteration (and the final assignment's)
    for k in KS:
        fits = []
        alone.append(
            _passes_over(blobs, lambda X, k=k, fits=fits: fits.append(KMeans(k, **params).fit(X)))
        )
        history = fits[0].history_
        reads = {r["iteration"] for r in history if r.get("pass", "full") == "full"}
        init_passes = max(init_passes, alone[-1] - len(reads))
        reading |= reads
    assert sweep_passes <= init_passes + len(reading) + 1
    if algorithm == "lloyd":
        assert sweep_passes <= max(alone) + 1
    assert max(alone) > 5  # the fits did iterate: the bound is not trivial
    assert sweep_passes < sum(alone)  # separate fits read X once per k: the sweep shares


class Interrupted(Exception):
    pass


@pytest.mark.parametrize(("algorithm", "interrupt_at"), [("lloyd", 6), ("bounded", 3)])
def test_a_checkpointed_sweep_resumes_to_the_same_result(
    blobs, tmp_path, monkeypatch, algorithm, interrupt_at
):
    monkeypatch.setattr(bounded, "MAX_ACTIVE_FRACTION", 0.2)  # refresh, so save, often
    X = da.from_array(blobs.astype(np.float32), chunks=(1_500, -1))
    params = dict(algorithm=algorithm, random_state=4, tol=0, max_iter=40, n_init=2)
    reference = dkmeans.sweep(X, KS, **params)
    out = tmp_path / "sweep.zarr"
    original, calls = checkpoint.Checkpoint.save, []

    def save(self, states):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise Interrupted
        original(self, states)

    monkeypatch.setattr(checkpoint.Checkpoint, "save", save)
    with pytest.raises(Interrupted):
        dkmeans.sweep(X, KS, checkpoint=out, **params)
    monkeypatch.setattr(checkpoint.Checkpoint, "save", original)
    assert results.status(out) == "checkpoint"
    assert results.describe(out)["status"] == "unfinished"
    with pytest.raises(ValueError, match="not a complete sweep"):
        dkmeans.load_sweep(out)
    with pytest.raises(dkmeans.CheckpointMismatchError, match="n_clusters"):
        dkmeans.sweep(X, [2, 4], checkpoint=out, resume=True, **params)
    resumed = dkmeans.sweep(X, KS, checkpoint=out, resume=True, **params)
    again = dkmeans.sweep(X, KS, checkpoint=out, resume=True, **params)  # read back
    for found in (resumed, again, dkmeans.load_sweep(out)):
        for name, column in reference.table.items():
            np.testing.assert_array_equal(found.table[name], column)
        for k in KS:
            assert_same_fit(found.models[k], reference.models[k])
    for k in KS:
        assert_same_fit(dkmeans.load(out / f"k-{k}"), reference.models[k])
    assert not zarr.open_group(out, mode="r").attrs["params"].get("n_clusters")


def test_the_table_converts_to_pandas(blobs):
    pd = pytest.importorskip("pandas")
    found = dkmeans.sweep(blobs[:600], [2, 3], random_state=0)
    frame = found.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(sweeps.TABLE_COLUMNS)
    assert frame["n_clusters"].tolist() == [2, 3]
    assert "simp. silhouette" in repr(found)


@pytest.mark.parametrize(
    ("ks", "params", "error", "match"),
    [
        ([], {}, ValueError, "empty"),
        ([2, 2], {}, ValueError, "twice"),
        ([0, 3], {}, ValueError, "integers >= 1"),
        ([2.5], {}, ValueError, "integers >= 1"),
        (5, {}, TypeError, "sequence of integers"),
        ([2, 700], {}, ValueError, "n_clusters=700 is larger than the number of samples"),
        ([2], {"n_clusters": 3}, TypeError, "multiple values for argument 'n_clusters'"),
        ([2], {"init": np.zeros((2, 3))}, ValueError, "not an array"),
        ([2], {"max_iter": 0}, ValueError, "max_iter"),
    ],
)
def test_bad_sweeps_are_refused_before_any_work(blobs, ks, params, error, match):
    with pytest.raises(error, match=match):
        dkmeans.sweep(blobs[:600], ks, **params)


def test_a_dataframes_names_reach_every_model_and_are_saved(tmp_path):
    import pandas as pd

    X, _ = make_blobs(600, n_features=3, centers=3, random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    found = dkmeans.sweep(frame, [2, 3], random_state=0, checkpoint=tmp_path / "s.zarr")
    again = dkmeans.load_sweep(tmp_path / "s.zarr")
    for models in (found.models, again.models):
        for model in models.values():
            np.testing.assert_array_equal(model.feature_names_in_, ["a", "b", "c"])
    np.testing.assert_array_equal(found.models[3].predict(frame), found.models[3].predict(X))
