"""Bad input: a clear error that names what is wrong, before work where possible."""

import re
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr

from dkmeans import InputNotFoundError, KMeans, NotFittedError
from dkmeans.errors import ObjectiveIncreaseWarning
from dkmeans.lloyd import check_objective
from tests.bad_inputs import BAD_ZARR_INPUTS, write_bad_input


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(100, 3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_numpy_input_names_the_row(X, bad):
    X[37, 1] = bad
    with pytest.raises(ValueError, match=r"NaN or infinity.*first at row 37"):
        KMeans(2).fit(X)


def test_nan_in_a_lazy_input_names_the_block_and_row(X):
    X[57, 2] = np.nan
    arr = da.from_array(X, chunks=(20, 3))
    with pytest.raises(
        ValueError, match=r"NaN or infinity: block 2 \(rows 40-59\), first at row 57"
    ):
        KMeans(2, init=np.zeros((2, 3))).fit(arr)


def test_nan_in_zarr_input_is_found_in_the_first_pass(tmp_path, X):
    X[93] = np.inf
    z = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(25, 3), dtype="f8")
    z[:] = X
    with pytest.raises(ValueError, match=r"block 3 \(rows 75-99\), first at row 93"):
        KMeans(2, init=np.zeros((2, 3))).fit(str(tmp_path / "x.zarr"))


@pytest.mark.parametrize("shape", [(10,), (4, 5, 2)])
def test_wrong_rank_is_rejected(shape):
    with pytest.raises(ValueError, match=rf"Expected 2D array .*got {len(shape)}-D"):
        KMeans(2).fit(np.ones(shape))


def test_wrong_rank_of_a_dask_array_is_rejected_before_reading():
    with pytest.raises(ValueError, match="Expected 2D array"):
        KMeans(2).fit(da.ones((10,), chunks=5))


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "must hold numbers, got dtype <U1"),
        (np.ones((4, 2), dtype="datetime64[s]"), TypeError, "must hold numbers"),
        (np.ones((4, 2), dtype=complex), ValueError, "Complex data not supported"),
        (
            np.array([[1.0, {}], [2.0, 3.0]], dtype=object),
            TypeError,
            "X could not be converted to float64: .*must be a string or a",
        ),
    ],
)
def test_non_numeric_dtype_is_rejected(data, error, message):
    with pytest.raises(error, match=message):
        KMeans(1).fit(data)


@pytest.mark.parametrize("shape", [(0, 3), (5, 0)])
def test_empty_input_is_rejected(shape):
    with pytest.raises(ValueError, match=r"0 (sample|feature)\(s\)"):
        KMeans(1).fit(np.ones(shape))


@pytest.mark.parametrize("k", [0, -1])
def test_n_clusters_below_one(X, k):
    with pytest.raises(ValueError, match=f"n_clusters must be an integer >= 1, got {k}"):
        KMeans(k).fit(X)


def test_n_clusters_above_n_samples(X):
    with pytest.raises(ValueError, match=r"n_clusters=101 is larger than .* n_samples=100"):
        KMeans(101).fit(X)


def test_n_clusters_not_an_integer(X):
    with pytest.raises(TypeError, match=r"n_clusters must be an integer, got 2\.5"):
        KMeans(2.5).fit(X)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(99), r"sample_weight must have shape \(100,\).*got shape \(99,\)"),
        (np.ones((100, 2)), r"sample_weight must have shape \(100,\)"),
        (np.r_[np.ones(50), -1.0, np.ones(49)], "non-negative: block 0, row 50 is -1.0"),
        (np.r_[np.ones(10), np.nan, np.ones(89)], "sample_weight contains NaN.*row 10"),
        (np.zeros(100), "sample_weight is all zero"),
    ],
)
def test_bad_sample_weight(X, weights, message):
    with pytest.raises(ValueError, match=message):
        KMeans(2).fit(X, sample_weight=weights)


def test_negative_weight_in_a_dask_array_names_the_block(X):
    w = np.ones(100)
    w[66] = -2
    with pytest.raises(ValueError, match="non-negative: block 3, row 66"):
        KMeans(2, init=X[:2]).fit(
            da.from_array(X, chunks=(20, 3)), sample_weight=da.from_array(w, 20)
        )


def test_missing_zarr_path(tmp_path):
    missing = tmp_path / "nope.zarr"
    with pytest.raises(InputNotFoundError, match=r"no Zarr array at .*nope\.zarr"):
        KMeans(2).fit(str(missing))
    assert issubclass(InputNotFoundError, ValueError)
    assert issubclass(InputNotFoundError, FileNotFoundError)


@pytest.mark.filterwarnings("ignore:The data type")  # zarr: no v3 spec for fixed strings
@pytest.mark.parametrize("name", sorted(BAD_ZARR_INPUTS))
def test_bad_zarr_input_is_named(tmp_path, name):
    path, n_clusters, message = write_bad_input(tmp_path, name)
    with pytest.raises((ValueError, TypeError), match=message):
        KMeans(n_clusters).fit(path)


def test_zarr_group_instead_of_array_suggests_an_array(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("points", shape=(10, 2), dtype="f4")
    with pytest.raises(ValueError, match=r"is a Zarr group, not an array.*g\.zarr/points"):
        KMeans(2).fit(str(tmp_path / "g.zarr"))


def test_sparse_input_is_rejected():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse input"):
        KMeans(2).fit(sparse.csr_matrix(np.eye(4)))


@pytest.mark.parametrize("method", ["predict", "transform", "score"])
def test_wrong_number_of_features_after_fit(X, method):
    model = KMeans(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 4 features, but KMeans is expecting 3 features"):
        getattr(model, method)(np.ones((5, 4)))


@pytest.mark.parametrize("method", ["predict", "transform", "score"])
def test_use_before_fit(X, method):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        getattr(KMeans(2), method)(X)


def test_not_fitted_error_is_scikit_learns():
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    with pytest.raises(SklearnNotFittedError):
        KMeans(2).predict(np.zeros((3, 2)))
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)


def test_convergence_warning_is_scikit_learns(X):
    """Fewer distinct rows than clusters: scikit-learn's warning, which its filters catch."""
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

    from dkmeans import ConvergenceWarning

    assert issubclass(ConvergenceWarning, SklearnConvergenceWarning)
    assert issubclass(ConvergenceWarning, UserWarning)
    with pytest.warns(SklearnConvergenceWarning, match=r"distinct clusters \(1\)"):
        KMeans(2, random_state=0).fit(np.ones((10, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SklearnConvergenceWarning)
        KMeans(2, random_state=0).fit(X)  # as many distinct rows as clusters: no warning


def test_not_fitted_error_without_scikit_learn():
    """scikit-learn stays optional: without it the error is still a ValueError/AttributeError.

    (And the warning of fewer clusters a UserWarning.)
    """
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import dkmeans, numpy as np\n"
        "try:\n    dkmeans.KMeans(2).predict(np.zeros((3, 2)))\n"
        "except (ValueError, AttributeError) as err:\n"
        "    assert type(err) is dkmeans.NotFittedError, type(err).__mro__\n"
        "    print(type(err).__mro__[1].__name__)\n"
        "print(dkmeans.ConvergenceWarning.__mro__[1].__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ValueError", "UserWarning"]


def test_every_public_exception_and_warning_is_exported_from_one_module():
    import dkmeans
    from dkmeans import errors

    for name in dkmeans.__all__:
        value = getattr(dkmeans, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert value.__module__ == "dkmeans.errors", name
            assert getattr(errors, name) is value
    public = {n for n in vars(errors) if not n.startswith("_") and n[0].isupper()}
    assert public | {"NotFittedError"} <= set(dkmeans.__all__)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4), (2,)])
def test_init_array_of_wrong_shape(X, shape):
    with pytest.raises(ValueError, match=re.escape(f"init array has shape {shape!r}")):
        KMeans(2, init=np.zeros(shape)).fit(X)


def test_init_array_with_nan(X):
    init = np.zeros((2, 3))
    init[1, 0] = np.nan
    with pytest.raises(ValueError, match="init array contains NaN"):
        KMeans(2, init=init).fit(X)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"init": "kmeans"},
            "init must be 'k-means\\|\\|', 'k-means\\+\\+', 'random' or an array",
        ),
        ({"max_iter": 0}, "max_iter must be an integer >= 1, got 0"),
        ({"tol": -1.0}, "tol must be a real number >= 0"),
        ({"split_every": 1}, "split_every must be an integer >= 2"),
        ({"label_store": 3}, "label_store must be 'auto', 'memory', 'zarr' or a path"),
        ({"random_state": "seed"}, "random_state must be None, an int"),
    ],
)
def test_bad_parameters_are_named(X, params, message):
    with pytest.raises(ValueError, match=message):
        KMeans(2, **params).fit(X)


def test_a_rising_objective_warns():
    with pytest.warns(ObjectiveIncreaseWarning, match="rose at iteration 4"):
        check_objective(100.0, 100.01, np.dtype(np.float64), 4)


def test_floating_point_noise_in_the_objective_does_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_objective(100.0, 100.0 * (1 + 1e-12), np.dtype(np.float64), 4)
        check_objective(100.0, 100.0 * (1 + 1e-5), np.dtype(np.float32), 4)
        # Every row at its center: the rounding of the means is all there is
        # (found by hypothesis: weighted means of 1/3 a rounding off 1/3).
        check_objective(0.0, 1.1e-31, np.dtype(np.float64), 1, scale=6.0)
    with pytest.warns(ObjectiveIncreaseWarning):
        check_objective(0.0, 1e-12, np.dtype(np.float64), 1, scale=6.0)


def test_squares_below_float64s_normal_range_round_absolutely():
    """Data of 1e-160: squared deviations are subnormal and round by 2^-1074, not relatively.

    The objectives below rose so, between two passes of a 30-row fit (found by
    the bounded property test with magnitudes); a rise among normal numbers
    still warns.
    """
    import warnings

    from dkmeans import lloyd
    from dkmeans.stats import ChunkStats, Farthest

    totals = ChunkStats(np.zeros((2, 1)), np.array([14.0, 16.0]), 0.0, 0, Farthest.empty(1))
    allowance = lloyd._allowance(totals, np.array([[1.1e-160], [2.7e-160]]))
    float64 = np.dtype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_objective(1.8729134e-317, 1.8730177e-317, float64, 8, *allowance)
    with pytest.warns(ObjectiveIncreaseWarning):
        check_objective(1e-300, 1.001e-300, float64, 8, *allowance)


def test_the_noise_allowance_holds_float32_data_beyond_float32s_squares():
    """Rows of 1e18 in float32: objectives and the centers' squared norms exceed float32's range.

    The allowance is reckoned in float64, so it neither overflows (a
    RuntimeWarning, found by a stress run) nor becomes infinite, which would
    let a real rise pass unwarned.
    """
    import warnings

    float32 = np.dtype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_objective(4e40, 4e40 * (1 + 1e-5), float32, 3, scale=4e40)
    with pytest.warns(ObjectiveIncreaseWarning, match="rose at iteration 3"):
        check_objective(4e40, 8e40, float32, 3, scale=4e40)


def test_a_dask_dataframes_text_columns_are_named_before_work():
    """They failed inside a task, in the first pass, naming nothing."""
    import dask.dataframe as dd
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(20.0), "b": ["x"] * 20, "c": pd.Categorical(["u"] * 20)})
    with pytest.raises(TypeError, match=r"X: columns \['b', 'c'\] are not numeric"):
        KMeans(2).fit(dd.from_pandas(frame, npartitions=2))
