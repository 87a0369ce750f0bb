"""Every public exception and warning of dkmeans, in one place (all exported by ``dkmeans``).

:class:`NotFittedError` subclasses scikit-learn's ``NotFittedError`` when
scikit-learn is importable, so ``except sklearn.exceptions.NotFittedError``
catches it; scikit-learn stays optional, and since importing it takes about a
second (in every Dask worker too) the class is made on first use (PEP 562).
"""

from __future__ import annotations

import functools


class ParameterTypeError(TypeError, ValueError):
    """A parameter has the wrong type; the message names it and what it must be.

    A ``TypeError``. Also a ``ValueError``, as scikit-learn's
    ``InvalidParameterError`` is, so code written for earlier versions of
    dkmeans (which raised ``ValueError`` for some of these) still catches it.
    """


class InputNotFoundError(FileNotFoundError, ValueError):
    """A path or URL given as input names no Zarr array."""


class ChunkReadError(OSError):
    """A chunk of a Zarr input could not be read or decoded; the message names it.

    An ``OSError``, so that it is retried like other I/O errors (see
    :mod:`dkmeans.passes`).
    """


class CheckpointMismatchError(ValueError):
    """A checkpoint was made by a fit that cannot be continued by this one."""


class JobError(ValueError):
    """A job file (or a flag overriding it) is wrong; the message names the file and key."""


class ObjectiveIncreaseWarning(RuntimeWarning):
    """The objective rose between iterations by more than floating-point noise.

    Lloyd's steps can never raise the objective, so this means a bug: it is
    a warning rather than an error so that a long run still returns its
    result, and the test suite turns it into an error.
    """


@functools.cache
def _not_fitted_error() -> type:
    try:
        from sklearn.exceptions import NotFittedError as base
    except ImportError:
        bases: tuple[type, ...] = (ValueError, AttributeError)  # what scikit-learn's is
    else:
        bases = (base,)
    return type(
        "NotFittedError",
        bases,
        {
            "__module__": __name__,
            "__doc__": "The estimator is used before ``fit``: a subclass of scikit-learn's "
            "NotFittedError when scikit-learn is installed (a ValueError and an "
            "AttributeError either way).",
        },
    )


def __getattr__(name: str):
    if name == "NotFittedError":
        return _not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
