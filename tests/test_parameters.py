"""One parameter table: KMeans and the job file's model section check every parameter alike.

A wrong type raises a TypeError (ParameterTypeError), a wrong value of the
right type a ValueError that is not a TypeError, both naming the parameter,
before any data is read.
"""

import inspect

import dask.array as da
import numpy as np
import pytest
import yaml

from dkmeans import KMeans, ParameterTypeError, jobs
from dkmeans.cli import main
from dkmeans.datasets import make_blobs_zarr
from dkmeans.testing import counting_dask_array
from dkmeans.validation import PARAMETERS, job_defaults

# For every parameter: a value of a wrong type, and one of the right type but out of
# range (None where every value of the right type is valid). A parameter added to the
# table without examples here fails test_every_parameter_has_bad_examples.
BAD = {
    "n_clusters": (2.5, 0),
    "init": (5, "kmeans"),
    "n_init": (1.5, 0),
    "max_iter": ("10", 0),
    "tol": ("a lot", -1.0),
    "algorithm": (1, "elkan"),
    "metric": (1, "manhattan"),
    "random_state": ("seed", None),
    "split_every": (2.0, 1),
    "label_store": (3, None),
    "scratch": (3, None),
    "init_sample_size": (1.5, 0),
    "init_rounds": (2.0, 0),
    "init_oversampling": ("2", float("inf")),
    "retries": (0.5, -1),
    "verbose": ("yes", -1),
}
TYPE_CASES = [(name, bad_type) for name, (bad_type, _) in BAD.items()]
VALUE_CASES = [(name, bad) for name, (_, bad) in BAD.items() if bad is not None]


def test_the_table_is_kmeans_signature():
    signature = inspect.signature(KMeans.__init__).parameters
    assert set(PARAMETERS) == set(signature) - {"self"}
    for name, parameter in PARAMETERS.items():
        assert parameter.default is signature[name].default or (
            parameter.default == signature[name].default
        ), name
        assert parameter.doc, name


def test_every_parameter_has_bad_examples():
    assert set(BAD) == set(PARAMETERS)


def test_defaults_pass_their_checks():
    for name, parameter in PARAMETERS.items():
        assert parameter.check(parameter.default, name) == parameter.default


@pytest.fixture
def unread():
    """Data whose every read is counted: a bad parameter must fail before the first."""
    counter, X = counting_dask_array(np.random.default_rng(0).normal(size=(200, 3)), 50)
    yield X
    assert counter.reads == 0


@pytest.mark.parametrize(("name", "bad"), TYPE_CASES, ids=[n for n, _ in TYPE_CASES])
def test_a_wrong_type_is_a_type_error_naming_the_parameter(name, bad, unread):
    with pytest.raises(TypeError, match=f"^{name} must be") as raised:
        KMeans(**{name: bad}).fit(unread)
    assert isinstance(raised.value, ParameterTypeError)
    # Also a ValueError (as scikit-learn's InvalidParameterError): code that caught the
    # ValueError earlier versions raised for some of these still catches it.
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(("name", "bad"), VALUE_CASES, ids=[n for n, _ in VALUE_CASES])
def test_a_wrong_value_is_a_value_error_naming_the_parameter(name, bad, unread):
    with pytest.raises(ValueError, match=f"^{name} must be") as raised:
        KMeans(**{name: bad}).fit(unread)
    assert not isinstance(raised.value, TypeError)


def test_job_file_model_section_is_the_table():
    model_keys = {key.split(".", 1)[1] for key in jobs.FIELDS if key.startswith("model.")}
    assert model_keys == {name for name, p in PARAMETERS.items() if p.in_job}
    for name, default in job_defaults().items():
        assert jobs.FIELDS[f"model.{name}"].default == default
    assert job_defaults()["random_state"] == 0  # batch jobs are reproducible by default


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("params") / "x.zarr"
    make_blobs_zarr(path, n_samples=500, n_features=3, n_centers=3, chunk_rows=100)
    return str(path)


JOB_CASES = [
    (name, bad)
    for name, pair in BAD.items()
    if PARAMETERS[name].in_job
    for bad in pair
    if bad is not None and not (name == "init" and isinstance(bad, str))  # a path, there
]


@pytest.mark.parametrize(("name", "bad"), JOB_CASES, ids=[f"{n}={b!r}" for n, b in JOB_CASES])
def test_a_bad_model_key_in_a_job_file_is_named_the_same_way(
    name, bad, data_path, tmp_path, capsys
):
    job = tmp_path / "job.yaml"
    document = {"input": {"path": data_path}, "output": {"path": str(tmp_path / "out.zarr")}}
    job.write_text(yaml.safe_dump({**document, "model": {name: bad}}))
    assert main(["fit", str(job)]) == 2
    err = capsys.readouterr().err
    assert f"{job}: model.{name} must be" in err, err
    assert err.count("\n") == 1
    if name != "init":  # the estimator's message, with the key for the name
        with pytest.raises((TypeError, ValueError)) as raised:
            KMeans(**{name: bad}).fit(da.zeros((10, 3), chunks=5))
        assert str(raised.value).replace(name, f"model.{name}", 1) in err
    assert not (tmp_path / "out.zarr").exists()
