"""The scikit-learn style API: methods, return types, persistence, options."""

import warnings
from functools import partial

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.base import clone
from sklearn.datasets import make_blobs

from dkmeans import KMeans, load
from dkmeans.state import label_dtype
from tests import reference
from tests.conftest import general_position_init


@pytest.fixture
def fitted(blobs):
    return KMeans(5, init=general_position_init(blobs, 5, 1), tol=0).fit(blobs)


def test_params_roundtrip_and_clone():
    model = KMeans(3, init="random", max_iter=7, tol=0.5, random_state=4, label_store="zarr")
    params = model.get_params()
    assert (
        params["n_clusters"] == 3 and params["max_iter"] == 7 and params["label_store"] == "zarr"
    )
    copy = clone(model)
    assert copy.get_params() == params and copy is not model
    assert model.set_params(n_clusters=9) is model and model.n_clusters == 9
    with pytest.raises(ValueError, match="Invalid parameter 'k'"):
        model.set_params(k=3)
    assert repr(KMeans(3, tol=0.5)) == "KMeans(n_clusters=3, tol=0.5)"


def test_in_memory_input_gives_numpy_answers(fitted, blobs):
    labels = fitted.predict(blobs)
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, fitted.labels_.compute())
    distances = fitted.transform(blobs)
    assert isinstance(distances, np.ndarray) and distances.shape == (len(blobs), 5)
    np.testing.assert_allclose(
        distances, np.sqrt(reference.sq_distances(blobs, fitted.cluster_centers_)), rtol=1e-9
    )
    np.testing.assert_allclose(fitted.score(blobs), -fitted.inertia_, rtol=1e-12)
    w = np.linspace(0, 2, len(blobs))
    expected = reference.objective(blobs, fitted.cluster_centers_, labels, w)
    np.testing.assert_allclose(fitted.score(blobs, sample_weight=w), -expected, rtol=1e-12)


def test_lazy_input_gives_lazy_answers(fitted, blobs, tmp_path):
    arr = da.from_array(blobs, chunks=(400, -1))
    labels = fitted.predict(arr)
    assert isinstance(labels, da.Array) and labels.chunks[0] == arr.chunks[0]
    np.testing.assert_array_equal(labels.compute(), fitted.labels_.compute())
    assert isinstance(fitted.transform(arr), da.Array)
    z = zarr.create_array(tmp_path / "x.zarr", shape=blobs.shape, chunks=(1000, 4), dtype="f8")
    z[:] = blobs
    from_path = fitted.predict(str(tmp_path / "x.zarr"))
    assert isinstance(from_path, da.Array)
    np.testing.assert_array_equal(from_path.compute(), fitted.labels_.compute())


def test_fit_predict_and_fit_transform(blobs):
    init = general_position_init(blobs, 5, 1)
    labels = KMeans(5, init=init).fit_predict(blobs)
    assert isinstance(labels, np.ndarray)
    np.testing.assert_array_equal(labels, KMeans(5, init=init).fit(blobs).predict(blobs))
    assert isinstance(KMeans(5, init=init).fit_predict(da.from_array(blobs)), da.Array)
    np.testing.assert_allclose(
        KMeans(5, init=init).fit_transform(blobs),
        KMeans(5, init=init).fit(blobs).transform(blobs),
    )


def test_labels_are_int32_dask_chunked_like_x(blobs):
    arr = da.from_array(blobs, chunks=(700, -1))
    model = KMeans(5, init="random", random_state=0).fit(arr)
    assert isinstance(model.labels_, da.Array)
    assert model.labels_.dtype == np.int32
    assert model.labels_.chunks[0] == arr.chunks[0]


@pytest.mark.parametrize(
    ("k", "dtype"), [(1, np.int8), (128, np.int8), (129, np.int16), (40_000, np.int32)]
)
def test_label_dtype_by_k(k, dtype):
    assert label_dtype(k) == dtype


def test_zarr_label_store_at_a_path_is_double_buffered(blobs, tmp_path):
    path = tmp_path / "labels.zarr"
    arr = da.from_array(blobs, chunks=(1000, -1))
    model = KMeans(
        5, init=general_position_init(blobs, 5, 1), tol=0, algorithm="lloyd", label_store=str(path)
    )
    model.fit(arr)
    store = zarr.open_array(str(path), mode="r")
    assert store.shape == (2, 3, 1000) and store.dtype == np.int8 and store.chunks == (1, 1, 1000)
    # The two buffers hold the last two passes; at a fixed point they agree.
    np.testing.assert_array_equal(store[0].ravel(), store[1].ravel())
    np.testing.assert_array_equal(store[0].ravel(), model.labels_.compute())
    memory = KMeans(5, init=general_position_init(blobs, 5, 1), tol=0).fit(arr)
    np.testing.assert_array_equal(memory.labels_.compute(), model.labels_.compute())


def test_zarr_label_store_handles_irregular_chunks(blobs, tmp_path):
    arr = da.from_array(blobs, chunks=((1000, 7, 1993), (4,)))
    path = tmp_path / "labels.zarr"
    model = KMeans(5, init=general_position_init(blobs, 5, 2), label_store=path).fit(arr)
    assert zarr.open_array(str(path), mode="r").shape == (2, 3, 1993)
    assert model.labels_.chunks[0] == (1000, 7, 1993)
    labels, _ = reference.assign(blobs, model.cluster_centers_)
    np.testing.assert_array_equal(model.labels_.compute(), labels)


def test_save_and_load_roundtrip(fitted, blobs, tmp_path):
    path = tmp_path / "fit.zarr"
    fitted.save(path)
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["dkmeans_complete"] is True
    assert set(group.attrs["versions"]) >= {"dkmeans", "dask", "numpy", "zarr"}
    loaded = load(path)
    np.testing.assert_array_equal(loaded.cluster_centers_, fitted.cluster_centers_)
    np.testing.assert_array_equal(loaded.labels_.compute(), fitted.labels_.compute())
    assert loaded.history_ == fitted.history_
    assert (loaded.inertia_, loaded.n_iter_, loaded.stop_reason_) == (
        fitted.inertia_,
        fitted.n_iter_,
        fitted.stop_reason_,
    )
    np.testing.assert_array_equal(loaded.predict(blobs), fitted.predict(blobs))


def test_an_incomplete_result_group_is_refused(fitted, tmp_path):
    path = tmp_path / "fit.zarr"
    fitted.save(path)
    group = zarr.open_group(str(path), mode="r+")
    del group.attrs["dkmeans_complete"]  # what a run killed before the end leaves
    with pytest.raises(ValueError, match="not a complete dkmeans result"):
        load(path)


def test_random_state_makes_inits_reproducible(blobs):
    for init in ("random", "k-means++"):
        a = KMeans(5, init=init, random_state=7).fit(blobs)
        b = KMeans(5, init=init, random_state=7).fit(da.from_array(blobs, chunks=(333, -1)))
        np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-12)


def test_kmeans_plusplus_on_a_sample_when_x_is_large(blobs, monkeypatch):
    from dkmeans import seeding

    monkeypatch.setattr(seeding, "KMEANS_PLUSPLUS_MAX_BYTES", 1000)
    arr = da.from_array(blobs, chunks=(500, -1))
    a = KMeans(5, random_state=3, init_sample_size=400).fit(arr)
    b = KMeans(5, random_state=3, init_sample_size=400).fit(da.from_array(blobs, chunks=(77, -1)))
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-12)
    # Sensible centers: each true blob has a fitted center near it.
    assert a.inertia_ < 1.2 * KMeans(5, random_state=3).fit(blobs).inertia_


def test_kmeans_plusplus_spreads_the_centers():
    # Three far-apart tight groups: greedy k-means++ picks one center in each.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 0.01, size=(100, 2)) for c in ([0, 0], [100, 0], [0, 100])])
    for seed in range(5):
        model = KMeans(3, random_state=seed, max_iter=1).fit(X)
        assert len(set(model.predict(X[[0, 100, 200]]))) == 3


def test_dtypes(blobs):
    assert (
        KMeans(2, random_state=0).fit(blobs.astype(np.float32)).cluster_centers_.dtype
        == np.float32
    )
    assert (
        KMeans(2, random_state=0).fit(blobs.astype(np.float16)).cluster_centers_.dtype
        == np.float32
    )
    assert (
        KMeans(2, random_state=0).fit(np.rint(blobs).astype(np.int64)).cluster_centers_.dtype
        == np.float64
    )


def test_verbose_prints_one_line_per_iteration(blobs, capsys):
    model = KMeans(5, init=general_position_init(blobs, 5, 1), verbose=True).fit(blobs)
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("iter ") for line in lines) == model.n_iter_
    assert "objective" in lines[0] and "changed" in lines[0] and "shift" in lines[0]
    assert lines[-1].startswith(f"stopped: {model.stop_reason_}")


def test_library_is_silent_by_default(blobs, capsys):
    KMeans(5, random_state=0).fit(blobs)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_inputs_v2_v3_path_and_url(blobs, tmp_path, zarr_format):
    path = tmp_path / f"x{zarr_format}.zarr"
    z = zarr.create_array(
        str(path), shape=blobs.shape, chunks=(700, 4), dtype="f8", zarr_format=zarr_format
    )
    z[:] = blobs
    init = general_position_init(blobs, 5, 4)
    reference_fit = KMeans(5, init=init, tol=0).fit(da.from_array(blobs, chunks=(700, -1)))
    for source in (str(path), path, f"file://{path}", zarr.open_array(str(path), mode="r")):
        model = KMeans(5, init=init, tol=0).fit(source)
        assert np.array_equal(model.cluster_centers_, reference_fit.cluster_centers_)
        assert model.labels_.chunks[0] == reference_fit.labels_.chunks[0]


def test_column_chunks_are_joined_and_rows_kept(blobs):
    split_columns = da.from_array(blobs, chunks=(1000, 2))  # 4 columns in 2 chunks
    init = general_position_init(blobs, 5, 6)
    model = KMeans(5, init=init, tol=0).fit(split_columns)
    whole = KMeans(5, init=init, tol=0).fit(da.from_array(blobs, chunks=(1000, -1)))
    assert np.array_equal(model.cluster_centers_, whole.cluster_centers_)
    assert model.labels_.chunks[0] == (1000, 1000, 1000)


def test_numpy_input_is_not_copied(blobs):
    from dkmeans import inputs

    X = np.ascontiguousarray(blobs)
    arr = inputs.as_dask_array(X)
    graph = dict(arr.__dask_graph__())
    blocks = [graph[(arr.name, i, 0)] for i in range(arr.numblocks[0])]
    assert len(blocks) > 1
    # The graph holds views of X (dask.array.from_array would hold a copy).
    assert all(isinstance(b, np.ndarray) and np.shares_memory(b, X) for b in blocks)


@pytest.mark.parametrize("algorithm", ["lloyd", "bounded"])
@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e300), (np.float32, 1e37)])
def test_data_whose_squares_overflow_fit_without_numpys_warnings(algorithm, init, dtype, scale):
    """Squares beyond the dtype's range are inf by design (the objective, the estimates);
    numpy warned of each overflow, from the seeding to the stop test, by the dozen."""
    X, _ = make_blobs(500, n_features=3, centers=3, random_state=0)
    X = (X * scale).astype(dtype)
    model = KMeans(3, init=init, n_init=2, random_state=0, algorithm=algorithm, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in the dask tasks' threads too: the filters are global
        model.fit(X)
    labels = model.labels_.compute()
    np.testing.assert_array_equal(labels, reference.exact_labels(X, model.cluster_centers_))
    assert np.all(np.isfinite(model.cluster_centers_))


def _messages(call) -> list[str]:
    """The warnings' messages of ``call()``, or its ValueError's ("error: ...")."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
        except ValueError as err:
            return [f"error: {err}"]
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_feature_names_follow_scikit_learn():
    """A DataFrame's column names: kept, checked and reported as scikit-learn's KMeans does."""
    import pandas as pd
    from sklearn.cluster import KMeans as SklearnKMeans

    X, _ = make_blobs(300, n_features=3, centers=3, random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    others = {
        "array": X,
        "same": frame,
        "renamed": frame.rename(columns={"a": "z"}),
        "reordered": frame[["b", "a", "c"]],
        "integer columns": pd.DataFrame(X),
    }
    init = X[:3]
    ours = KMeans(3, init=init).fit(frame)
    theirs = SklearnKMeans(3, init=init, n_init=1).fit(frame)
    np.testing.assert_array_equal(ours.feature_names_in_, theirs.feature_names_in_)
    assert ours.feature_names_in_.dtype == object
    np.testing.assert_array_equal(ours.get_feature_names_out(), theirs.get_feature_names_out())
    for fitted_on in (frame, X):
        ours = KMeans(3, init=init).fit(fitted_on)
        theirs = SklearnKMeans(3, init=init, n_init=1).fit(fitted_on)
        assert hasattr(ours, "feature_names_in_") == hasattr(theirs, "feature_names_in_")
        for name, other in others.items():
            for method in ("predict", "transform", "score"):
                expected = _messages(partial(getattr(theirs, method), other))
                assert _messages(partial(getattr(ours, method), other)) == expected, name
    with pytest.raises(TypeError, match="every column name is a string"):
        KMeans(3).fit(pd.DataFrame(X, columns=["a", 1, "c"]))


def test_feature_names_are_saved_and_loaded(tmp_path):
    import pandas as pd

    X, _ = make_blobs(300, n_features=3, centers=3, random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    model = KMeans(3, random_state=0).fit(frame)
    model.save(tmp_path / "saved.zarr")
    np.testing.assert_array_equal(load(tmp_path / "saved.zarr").feature_names_in_, ["a", "b", "c"])
    KMeans(3, random_state=0).fit(frame, checkpoint=tmp_path / "run.zarr")
    again = load(tmp_path / "run.zarr")
    np.testing.assert_array_equal(again.feature_names_in_, ["a", "b", "c"])
    KMeans(3, random_state=0).fit(X).save(tmp_path / "array.zarr")
    assert not hasattr(load(tmp_path / "array.zarr"), "feature_names_in_")


def test_a_dask_dataframe_stays_lazy_a_block_per_partition():
    """It was read whole into memory (np.asarray): now each partition is a block, read per pass."""
    import dask.dataframe as dd
    import pandas as pd

    from dkmeans import inputs

    X, _ = make_blobs(3_000, n_features=3, centers=4, random_state=0)
    frame = dd.from_pandas(pd.DataFrame(X, columns=["a", "b", "c"]), npartitions=4)
    lazy = inputs.as_dask_array(frame)
    assert lazy.chunks == (tuple(frame.map_partitions(len).compute()), (3,))
    init = X[:4]
    from_frame = KMeans(4, init=init, tol=0).fit(frame)
    from_array = KMeans(4, init=init, tol=0).fit(da.from_array(X, chunks=lazy.chunks))
    np.testing.assert_array_equal(from_frame.labels_.compute(), from_array.labels_.compute())
    np.testing.assert_array_equal(from_frame.cluster_centers_, from_array.cluster_centers_)
    np.testing.assert_array_equal(from_frame.feature_names_in_, ["a", "b", "c"])
    assert isinstance(from_frame.predict(frame), da.Array)
    # A column as the weights: a dask Series, lazy too (it was read whole).
    assert isinstance(inputs.as_weights(frame["a"], lazy), da.Array)
    weighted = KMeans(4, init=init[:, 1:], tol=0)
    weighted.fit(frame[["b", "c"]], sample_weight=frame["a"].abs())
    plain = KMeans(4, init=init[:, 1:], tol=0).fit(X[:, 1:], sample_weight=np.abs(X[:, 0]))
    np.testing.assert_array_equal(weighted.labels_.compute(), plain.labels_.compute())
    np.testing.assert_allclose(weighted.cluster_centers_, plain.cluster_centers_, rtol=1e-12)
