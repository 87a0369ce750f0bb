"""Every public exception and warning of dkmeans, in one place (all exported by ``dkmeans``).

:class:`NotFittedError` and :class:`ConvergenceWarning` subclass scikit-learn's
classes of those names when scikit-learn is importable, so ``except
sklearn.exceptions.NotFittedError`` catches the one and a filter on
scikit-learn's ConvergenceWarning the other; scikit-learn stays optional, and
since importing it takes about a second (in every Dask worker too) the classes
are made on first use (PEP 562).
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


# Made on first use (see the module docstring): name -> (bases without scikit-learn, doc).
_LAZY = {
    "NotFittedError": (
        (ValueError, AttributeError),  # what scikit-learn's is
        "The estimator is used before ``fit``: a subclass of scikit-learn's "
        "NotFittedError when scikit-learn is installed (a ValueError and an "
        "AttributeError either way).",
    ),
    "ConvergenceWarning": (
        (UserWarning,),  # what scikit-learn's is
        "A fit found fewer distinct clusters than ``n_clusters`` (more clusters than "
        "distinct rows, say): a subclass of scikit-learn's ConvergenceWarning when "
        "scikit-learn is installed (a UserWarning either way).",
    ),
}


@functools.cache
def _made(name: str) -> type:
    """The class ``name`` of :data:`_LAZY`, on scikit-learn's of that name where it imports."""
    bases, doc = _LAZY[name]
    try:
        from sklearn import exceptions
    except ImportError:
        pass
    else:
        bases = (getattr(exceptions, name),)
    return type(name, bases, {"__module__": __name__, "__doc__": doc})


def __getattr__(name: str):
    if name in _LAZY:
        return _made(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
