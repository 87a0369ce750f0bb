"""xarray in and out: DataArrays (NumPy- or dask-backed, from Zarr) keep their rows' coordinate."""

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr

from dkmeans import KMeans, load

xr = pytest.importorskip("xarray")


@pytest.fixture(scope="module")
def array():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3_000, 4)) + rng.integers(3, size=(3_000, 1)) * 6
    time = pd.date_range("2024-01-01", periods=len(X), freq="h")
    return xr.DataArray(X, dims=("time", "band"), coords={"time": time, "band": list("rgbn")})


def model(**changed):
    return KMeans(3, random_state=1, tol=0, **changed)


def test_numpy_backed_dataarray_in_and_out(array):
    fitted = model().fit(array)
    plain = model().fit(array.values)
    assert np.array_equal(fitted.cluster_centers_, plain.cluster_centers_)  # bitwise
    labels = fitted.labels_
    assert isinstance(labels, xr.DataArray) and labels.dims == ("time",)
    assert labels["time"].equals(array["time"])
    np.testing.assert_array_equal(labels.values, plain.labels_.compute())
    predicted = fitted.predict(array)
    assert isinstance(predicted, xr.DataArray) and isinstance(predicted.data, np.ndarray)
    assert predicted["time"].equals(array["time"])
    distances = fitted.transform(array)
    assert distances.dims == ("time", "cluster") and distances.shape == (3_000, 3)
    np.testing.assert_array_equal(fitted.fit_predict(array).values, labels.values)
    assert isinstance(fitted.predict(array.values), np.ndarray)  # plain in, plain out


def test_dask_backed_dataarray_from_zarr_is_lazy(array, tmp_path):
    path = str(tmp_path / "data.zarr")
    stored = array.drop_vars("band").to_dataset(name="x").chunk({"time": 500})
    stored.to_zarr(path, consolidated=False)
    opened = xr.open_zarr(path, consolidated=False)["x"]
    assert isinstance(opened.data, da.Array)
    fitted = model().fit(opened)
    reference = model().fit(array)
    assert np.array_equal(
        fitted.cluster_centers_, model().fit(array.chunk({"time": 500})).cluster_centers_
    )
    assert fitted.cluster_centers_ == pytest.approx(reference.cluster_centers_, rel=1e-12)
    predicted = fitted.predict(opened)
    assert isinstance(predicted, xr.DataArray) and isinstance(predicted.data, da.Array)
    assert predicted["time"].equals(array["time"])
    np.testing.assert_array_equal(predicted.compute().values, fitted.labels_.values)


def test_result_groups_record_the_rows(array, tmp_path):
    fitted = model().fit(array, checkpoint=tmp_path / "fit.zarr")
    attrs = dict(zarr.open_group(str(tmp_path / "fit.zarr"), mode="r").attrs)
    assert attrs["input"]["kind"] == "xarray" and attrs["input"]["dims"] == ["time", "band"]
    for path in (tmp_path / "fit.zarr", tmp_path / "saved.zarr"):
        if not path.exists():
            fitted.save(path)
        labels = load(path).labels_
        assert isinstance(labels, xr.DataArray) and labels["time"].equals(array["time"])
        np.testing.assert_array_equal(labels.values, fitted.labels_.values)
    named = array.assign_coords(time=[f"t{i}" for i in range(len(array))])  # strings: dims only
    model().fit(named).save(tmp_path / "named.zarr")
    labels = load(tmp_path / "named.zarr").labels_
    assert labels.dims == ("time",) and "time" not in labels.coords


def test_a_dataset_asks_for_one_variable(array):
    ds = xr.Dataset({"emb": array, "count": ("time", np.arange(len(array)))})
    with pytest.raises(TypeError, match=r"pass one DataArray, e.g. X=ds\['emb'\]"):
        model().fit(ds)
    assert isinstance(model().fit(ds["emb"]).labels_, xr.DataArray)
