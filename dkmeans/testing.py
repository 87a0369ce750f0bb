"""Helpers for testing code that uses dkmeans (as ``zarr.testing`` is for zarr).

Used by dkmeans' own tests, benchmarks and notebooks to count how often X
is read: a fit's passes over X are ``reads / n_blocks``, or the bytes a
:class:`CountingStore` saw over the array's stored bytes.
"""

from __future__ import annotations

import dask.array as da
from zarr.abc.store import Store
from zarr.storage import WrapperStore


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


class CountingStore(WrapperStore):
    """A Zarr store that counts the bytes of the chunks read through it.

    ``bytes_read`` counts the reads made in this process; with ``log`` (a file
    path), each read's size is also appended to that file, so reads made by
    worker processes (a pickled copy of the store) can be summed with
    :func:`bytes_logged`. Metadata documents are not counted.
    """

    def __init__(self, store: Store, log: str | None = None):
        super().__init__(store)
        self.log = log
        self.bytes_read = 0

    def _with_store(self, store: Store) -> CountingStore:
        return type(self)(store, self.log)

    async def get(self, key: str, prototype, byte_range=None):
        value = await super().get(key, prototype, byte_range)
        if value is not None and not key.endswith("zarr.json"):
            self.bytes_read += len(value)
            if self.log is not None:
                with open(self.log, "a") as f:  # one short append: whole lines, any process
                    f.write(f"{len(value)}\n")
        return value


def bytes_logged(log: str) -> int:
    """The bytes read through every :class:`CountingStore` writing to ``log``."""
    try:
        with open(log) as f:
            return sum(int(line) for line in f)
    except FileNotFoundError:
        return 0
