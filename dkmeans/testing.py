"""Helpers for testing code that uses dkmeans (as ``zarr.testing`` is for zarr).

Used by dkmeans' own tests, benchmarks and notebooks to count how often X
is read: a fit's passes over X are ``reads / n_blocks``.
"""

from __future__ import annotations

import dask.array as da


class CountingArray:
    """An array-like (NumPy or Zarr inside) that counts the reads made through it.

    Passes over X are ``reads / n_blocks`` for a dask array made by
    :func:`counting_dask_array`: how the tests, benchmarks and notebooks
    check that restarts and k-means|| read X as often as they claim.
    """

    def __init__(self, array):
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return self.array[key]


def counting_dask_array(array, chunk_rows: int) -> tuple[CountingArray, da.Array]:
    """A dask array of ``array`` in row blocks whose every block read is counted.

    Returns the counter (``reads`` starts at 0) and the dask array.
    """
    counter = CountingArray(array)
    X = da.from_array(counter, chunks=(chunk_rows, -1), asarray=True, inline_array=True)
    counter.reads = 0  # from_array reads once for its meta
    return counter, X
