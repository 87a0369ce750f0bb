"""metric="cosine": spherical k-means against a NumPy reference, exact labels, every feature."""

import itertools
from decimal import Decimal, getcontext
from fractions import Fraction

import dask
import dask.array as da
import numpy as np
import pytest
import yaml
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import dkmeans
from dkmeans import CheckpointMismatchError, KMeans, inputs, kernel, load
from dkmeans.cli import main
from tests import reference
from tests.test_checkpoint import Interrupted, _interrupt_save_at


def directions(n=6_000, d=16, k=5, seed=0, dtype=np.float64):
    """Rows around k mean directions with very different lengths (embedding-like)."""
    rng = np.random.default_rng(seed)
    means = reference.unit(rng.normal(size=(k, d)))
    X = means[rng.integers(k, size=n)] * 3 + rng.normal(size=(n, d))
    return (X * rng.lognormal(sigma=1.5, size=(n, 1))).astype(dtype)


def unit_init(X, k, seed=1):
    rows = np.random.default_rng(seed).choice(len(X), size=k, replace=False)
    return reference.unit(X[rows])


def as_zarr(tmp_path, X, chunk_rows=700, name="x.zarr"):
    path = str(tmp_path / name)
    zarr.create_array(path, shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype)[:] = X
    return path


def assert_same_fit(a, b):
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)  # bitwise
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    assert [r["objective"] for r in a.history_] == [r["objective"] for r in b.history_]
    np.testing.assert_array_equal(np.asarray(a.labels_), np.asarray(b.labels_))


# -- against the reference -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("source", ["numpy", "zarr"])
@pytest.mark.parametrize("algorithm", ["lloyd", "bounded"])
def test_fit_equals_the_numpy_spherical_reference(tmp_path, dtype, weighted, source, algorithm):
    X = directions(dtype=dtype)
    init = unit_init(X, 5)
    weights = np.random.default_rng(2).uniform(0.5, 2, size=len(X)) if weighted else None
    labels, centers, objectives = reference.spherical_kmeans(X, init, weights)
    data = as_zarr(tmp_path, X) if source == "zarr" else X
    model = KMeans(5, init=init, metric="cosine", tol=0, algorithm=algorithm)
    model.fit(data, sample_weight=weights)
    np.testing.assert_array_equal(np.asarray(model.labels_), labels)
    assert model.n_iter_ == len(objectives) and model.stop_reason_ == "fixed point"
    close = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(model.cluster_centers_, centers, rtol=0, atol=close)
    np.testing.assert_allclose(np.linalg.norm(model.cluster_centers_, axis=1), 1, rtol=close)
    assert model.inertia_ == pytest.approx(objectives[-1], rel=close)
    found = [r["objective"] for r in model.history_]
    np.testing.assert_allclose(found, objectives, rtol=close * 10)
    assert all(b <= a * (1 + close) for a, b in itertools.pairwise(found))


def test_predict_transform_score_and_laziness(tmp_path):
    X = directions(seed=3)
    model = KMeans(4, metric="cosine", random_state=0).fit(X)
    Xn, C = reference.unit(X), model.cluster_centers_
    similarity = Xn @ C.T
    np.testing.assert_array_equal(model.predict(X), similarity.argmax(axis=1))
    np.testing.assert_allclose(model.transform(X), 1 - similarity, atol=1e-12)
    expected = np.sum(1 - similarity.max(axis=1))
    assert model.score(X) == pytest.approx(-expected, rel=1e-12)
    assert model.inertia_ == pytest.approx(expected, rel=1e-12)
    lazy = model.predict(as_zarr(tmp_path, X))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), model.labels_.compute())
    assert isinstance(model.transform(da.from_array(X, chunks=1_000)), da.Array)


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_every_initialisation_ends_at_a_spherical_fixed_point(init):
    """Unit centers that are the normalised sums of their rows, labels the largest cosine."""
    X = directions(n=4_000, seed=4, dtype=np.float32)
    weights = np.random.default_rng(5).uniform(0, 2, size=len(X))
    model = KMeans(5, init=init, n_init=2, metric="cosine", tol=0, random_state=6)
    model.fit(X, sample_weight=weights)
    assert model.stop_reason_ == "fixed point"
    labels = np.asarray(model.labels_)
    Xn = inputs.as_dask_array(X, metric="cosine").compute().astype(np.float64)
    np.testing.assert_array_equal(labels, (Xn @ model.cluster_centers_.T.astype(float)).argmax(1))
    sums, _ = reference.cluster_sums(Xn, labels, weights, 5)
    np.testing.assert_allclose(model.cluster_centers_, reference.unit(sums), atol=1e-6)


def test_input_is_never_modified_or_copied_to_storage(tmp_path):
    X = directions(n=3_000, seed=7)
    before = X.copy()
    path = as_zarr(tmp_path, X)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for data in (X, path, zarr.open_array(path, mode="r")):
        model = KMeans(3, metric="cosine", random_state=0, label_store="memory").fit(data)
        model.predict(data)
        model.transform(data)
    np.testing.assert_array_equal(X, before)
    np.testing.assert_array_equal(zarr.open_array(path, mode="r")[:], before)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files


def test_empty_cluster_takes_the_row_least_similar_to_its_center():
    X = directions(n=2_000, seed=8)
    init = unit_init(X, 3)
    init[2] = init[1]  # a duplicate: the second copy's cluster is empty in the first pass
    model = KMeans(3, init=init, metric="cosine", max_iter=1).fit(X)
    assert model.history_[0]["reseeded"] == 1
    Xn = reference.unit(X)
    similarity = Xn @ init.T
    least = np.argmin(similarity.max(axis=1))
    np.testing.assert_allclose(model.cluster_centers_[2], Xn[least], atol=1e-15)


# -- exact labels --------------------------------------------------------------------------


def exact_cosines(x: np.ndarray, centers: np.ndarray) -> list[Decimal]:
    """cos(x, c_j) of the stored values to 40 digits (exact dot products and norms)."""
    getcontext().prec = 40

    def decimal(q: Fraction) -> Decimal:
        return Decimal(q.numerator) / Decimal(q.denominator)

    row = [Fraction(float(v)) for v in x]
    out = []
    for center in centers:
        c = [Fraction(float(v)) for v in center]
        dot = sum(a * b for a, b in zip(row, c, strict=True))
        norms = sum(a * a for a in row) * sum(b * b for b in c)
        out.append(decimal(dot) / decimal(norms).sqrt())
    return out


@st.composite
def tie_heavy(draw):
    """Rows of k/255 or small integers, duplicated rows, centers from the rows or mirrored."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n, d = draw(st.integers(5, 40)), draw(st.integers(2, 5))
    kind = draw(st.sampled_from(["pixels", "integers"]))
    top = 255 if kind == "pixels" else 3
    values = draw(st.lists(st.integers(0, top), min_size=n * d, max_size=n * d))
    X = np.array(values, dtype=np.float64).reshape(n, d)
    X[:, 0] += 1  # no zero rows
    X = X / 255 if kind == "pixels" else X - 1 + (X[:, :1] == 1)
    X = np.concatenate([X, X[: n // 3]]).astype(dtype)
    k = draw(st.integers(2, 6))
    rows = draw(st.lists(st.integers(0, len(X) - 1), min_size=k, max_size=k))
    centers = reference.unit(X[rows])
    if draw(st.booleans()):  # a center mirrored in the last feature: ties for rows with x_d = 0
        centers[-1] = centers[0] * np.r_[np.ones(d - 1), -1.0]
        X[::2, -1] = 0
    chunk = draw(st.integers(3, len(X)))
    return X, centers.astype(dtype), chunk


@settings(max_examples=60, deadline=None)
@given(tie_heavy())
def test_labels_are_exact_on_tie_heavy_data(case):
    """The exact argmin of ||x̂ - c||² for the unit rows as computed (lowest index on ties),
    and a largest exact cosine of the stored x and c, to the rounding of x̂ and c."""
    X, centers, chunk = case
    model = KMeans(len(centers), init=centers, metric="cosine", max_iter=1).fit(
        da.from_array(X, chunks=(chunk, -1))
    )
    model.cluster_centers_ = centers  # label against the given centers
    labels = model.predict(X)
    X_unit = inputs.as_dask_array(X, metric="cosine").compute()
    np.testing.assert_array_equal(labels, reference.exact_labels(X_unit, centers))
    slack = Decimal(float(10 * np.finfo(X.dtype).eps))
    for x, label in zip(X, labels, strict=True):
        cosines = exact_cosines(x, centers)
        assert cosines[label] >= max(cosines) - slack


def test_exact_ties_go_to_the_lowest_index():
    """Rows equally similar to two centers by construction: mirrored centers, x_2 = 0."""
    X = np.array([[3.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    centers = reference.unit(np.array([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]))
    np.testing.assert_array_equal(
        KMeans(3, init=centers, metric="cosine", max_iter=1).fit(X).predict(X), [0, 0, 0]
    )


def test_unit_rows_are_the_rows_over_their_norm_and_handle_extreme_exponents():
    X = np.array([[3.0, 4.0], [1e300, 1e300], [1e-310, 0.0], [0.0, 0.0], [np.nan, 1.0]])
    unit, zero = kernel.unit_rows(X)
    np.testing.assert_allclose(unit[:3], [[0.6, 0.8], [2**-0.5, 2**-0.5], [1.0, 0.0]], rtol=1e-15)
    assert zero.tolist() == [False, False, False, True, False] and np.isnan(unit[4]).all()


# -- errors --------------------------------------------------------------------------------


def test_a_zero_row_is_an_error_naming_its_block_and_row(tmp_path, monkeypatch):
    X = directions(n=2_000, seed=9)
    X[1_234] = 0
    calls = []
    monkeypatch.setattr(dkmeans.passes, "map_reduce", lambda *a, **k: calls.append(1))
    message = r"X has a row of zeros.*metric='cosine'.*block \d+ \(rows \d+-\d+\), row 1234"
    with pytest.raises(ValueError, match=message):
        KMeans(3, metric="cosine").fit(X)
    assert calls == []  # NumPy input: before any pass
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"block 1 \(rows 700-1399\), row 1234"):
        KMeans(3, metric="cosine", random_state=0).fit(as_zarr(tmp_path, X))
    with pytest.raises(ValueError, match="row 1234"):
        KMeans(3, metric="cosine", random_state=0).fit(X[:1_000]).predict(X)
    with pytest.raises(ValueError, match="init array: row 1 is all zeros"):
        KMeans(2, init=np.array([[1.0] * 16, [0.0] * 16]), metric="cosine").fit(X[:1_000])
    with pytest.raises(ValueError, match="metric must be 'euclidean' or 'cosine'"):
        KMeans(2, metric="manhattan").fit(X[:1_000])


# -- with everything else ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.distributed
def test_bitwise_identical_across_schedulers(tmp_path):
    from distributed import Client, LocalCluster

    path = as_zarr(tmp_path, directions(n=8_000, seed=10, dtype=np.float32))

    def fit(**config):
        # 20 of its 55 iterations: full and active passes (a cluster's pass costs ~0.3 s)
        model = KMeans(
            6, n_init=2, metric="cosine", random_state=1, tol=0, split_every=3, max_iter=20
        )
        with dask.config.set(**config):
            model.fit(path)
        model.labels_ = model.labels_.compute()  # memory labels may live on the workers
        return model

    expected = fit(scheduler="synchronous")
    assert {record["pass"] for record in expected.history_} == {"full", "active"}
    assert_same_fit(expected, fit(scheduler="threads", num_workers=2))
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster):
            assert_same_fit(expected, fit())


def test_checkpoint_resumes_bitwise_and_refuses_the_other_metric(tmp_path, monkeypatch):
    path = as_zarr(tmp_path, directions(n=6_000, seed=11))
    params = {"init": "random", "n_init": 2, "random_state": 3, "tol": 0, "metric": "cosine"}
    params["algorithm"] = "lloyd"  # saved every iteration
    expected = KMeans(5, **params).fit(path)
    assert expected.n_iter_ > 4
    out = tmp_path / "out.zarr"
    _interrupt_save_at(monkeypatch, 4, before_writing=True)
    with pytest.raises(Interrupted):
        KMeans(5, **params).fit(path, checkpoint=out)
    monkeypatch.undo()
    with pytest.raises(CheckpointMismatchError, match="metric"):
        KMeans(5, **(params | {"metric": "euclidean"})).fit(path, checkpoint=out, resume=True)
    assert_same_fit(KMeans(5, **params).fit(path, checkpoint=out, resume=True), expected)
    assert_same_fit(load(out), expected)
    assert load(out).metric == "cosine"


def test_sweep_gives_each_k_its_own_fit(tmp_path):
    X = directions(n=4_000, seed=12)
    params = {"metric": "cosine", "random_state": 2, "tol": 0}
    found = dkmeans.sweep(X, [2, 5], **params)
    for k in (2, 5):
        assert_same_fit(found.models[k], KMeans(k, **params).fit(X))
    assert found.table["inertia"].tolist() == [found.models[k].inertia_ for k in (2, 5)]


def test_job_file_and_cli(tmp_path):
    X = directions(n=5_000, seed=13, dtype=np.float32)
    data = as_zarr(tmp_path, X)
    model_section = {"n_clusters": 4, "metric": "cosine", "random_state": 1, "tol": 0}
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "input": {"path": data},
                "output": {"path": str(tmp_path / "out.zarr")},
                "model": model_section,
            }
        )
    )
    assert main(["fit", str(job), "-q"]) == 0
    fitted = load(tmp_path / "out.zarr")
    assert_same_fit(fitted, KMeans(**model_section).fit(data))
    assert main(["predict", str(tmp_path / "out.zarr"), data, str(tmp_path / "l.zarr")]) == 0
    written = zarr.open_group(str(tmp_path / "l.zarr"), mode="r")["labels"][:]
    np.testing.assert_array_equal(written, fitted.labels_.compute())
