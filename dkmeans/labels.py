"""Label stores: where each pass's labels go, and where the next pass reads them.

Each Lloyd pass writes the new label of every row and compares it with the
label of the previous pass (to count ``changed``). Two stores:

- :class:`MemoryLabelStore` keeps them as a persisted dask array: the
  pass's tasks return their new labels, which stay where the scheduler
  keeps results (this process, or the distributed workers) and feed the
  next pass as an input array. It works under any scheduler.
- :class:`ZarrLabelStore` keeps them in a Zarr array for labels that should
  not live in memory. Its tasks read and write the store themselves, double
  buffered: pass t reads buffer t % 2 and writes buffer (t + 1) % 2, so a
  retried task never reads its own output. The array has shape
  (2, n_blocks, max_block_rows), one Zarr chunk per row block of X, so that
  no two tasks ever write the same chunk, whatever the row chunking.

Labels are stored as int8, int16 or int32, the smallest that holds k
(:func:`label_dtype`); ``KMeans.labels_`` presents them as int32, as
scikit-learn does.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass

import dask.array as da
import numpy as np
import zarr

from dkmeans import io

# "auto" keeps labels in memory up to this many bytes.
MEMORY_LIMIT_BYTES = 2**30


def label_dtype(n_clusters: int) -> np.dtype:
    """The smallest signed integer dtype that holds labels 0..n_clusters-1."""
    for dtype in (np.int8, np.int16, np.int32):
        if n_clusters - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"n_clusters={n_clusters} is too large for int32 labels")


class MemoryLabelStore:
    """Labels kept as a persisted dask array, one block per row block of X.

    Under the local schedulers the blocks are NumPy arrays in this process;
    under dask.distributed they stay on the workers that computed them, so
    labels never travel through the client between passes. A pass run in
    this process (:func:`dkmeans.lloyd._pass_in_process`) leaves its labels
    as a list of NumPy blocks, which the next such pass reads as they are;
    they become a dask array only when one is asked for.
    """

    kind = "memory"

    def __init__(self, row_chunks: tuple[int, ...], dtype: np.dtype):
        self.row_chunks = tuple(row_chunks)
        self.dtype = np.dtype(dtype)
        self._labels: da.Array | list[np.ndarray] | None = None

    @property
    def returns_labels(self) -> bool:
        return True

    def pass_inputs(self, iteration: int) -> tuple[da.Array | list[np.ndarray] | None, None]:
        """(previous labels or None, block I/O for tasks or None).

        The previous labels are a dask array, or the NumPy blocks that a pass
        in this process left (:func:`as_dask_array` turns them into one).
        """
        return self._labels, None

    def finish_pass(self, iteration: int, labels: da.Array | list[np.ndarray] | None) -> None:
        self._labels = labels

    def labels(self) -> da.Array:
        if self._labels is None:
            raise RuntimeError("no labels written yet")
        self._labels = as_dask_array(self._labels)
        return self._labels


def as_dask_array(labels: da.Array | list[np.ndarray] | None) -> da.Array | None:
    """Labels as a pass left them (a dask array or NumPy blocks) as a dask array."""
    if isinstance(labels, list):
        return io.from_blocks(labels, "dkmeans-labels")
    return labels


@dataclass(frozen=True)
class ZarrBlockIO:
    """What a task needs to read and write its block's labels (picklable)."""

    array: zarr.Array
    read_buffer: int | None  # None on the first pass: nothing to read
    write_buffer: int

    def read(self, block: int, n_rows: int) -> np.ndarray | None:
        if self.read_buffer is None:
            return None
        return self.array[self.read_buffer, block, :n_rows]

    def write(self, block: int, labels: np.ndarray) -> None:
        self.array[self.write_buffer, block, : len(labels)] = labels


class ZarrLabelStore:
    """Double-buffered labels in a Zarr array.

    Parameters
    ----------
    row_chunks : tuple of int
        Row chunks of X: one Zarr chunk per block.
    dtype : numpy dtype
        Label dtype (:func:`label_dtype`).
    path : str or os.PathLike, optional
        Where to create the array (replacing what is there); a temporary
        directory, removed at exit, when neither this nor ``array`` is given.
    array : zarr.Array, optional
        An array made by :func:`create_label_array` to use instead, e.g. in a
        checkpoint group.
    """

    kind = "zarr"

    def __init__(
        self,
        row_chunks: tuple[int, ...],
        dtype: np.dtype,
        path: str | os.PathLike | None = None,
        *,
        array: zarr.Array | None = None,
    ):
        self.row_chunks = tuple(row_chunks)
        self.dtype = np.dtype(dtype)
        if array is None:
            if path is None:
                path = tempfile.mkdtemp(prefix="dkmeans-labels-")
                atexit.register(shutil.rmtree, path, ignore_errors=True)
            array = create_label_array(os.fspath(path), self.row_chunks, self.dtype)
        expected = (2, len(self.row_chunks), max(self.row_chunks))
        if array.shape != expected or array.dtype != self.dtype:
            raise ValueError(
                f"label array {array.store_path} has shape {array.shape} and dtype "
                f"{array.dtype}; this X needs shape {expected} and dtype {self.dtype}"
            )
        self.array = array
        self._current: int | None = None  # buffer holding the latest labels

    def restore(self, n_passes: int) -> None:
        """Continue after ``n_passes`` completed passes (their labels are in buffer n % 2)."""
        self._current = n_passes % 2 if n_passes > 0 else None

    @property
    def returns_labels(self) -> bool:
        return False

    def pass_inputs(self, iteration: int) -> tuple[None, ZarrBlockIO]:
        return None, ZarrBlockIO(self.array, self._current, (iteration + 1) % 2)

    def finish_pass(self, iteration: int, labels: None) -> None:
        self._current = (iteration + 1) % 2

    def labels(self) -> da.Array:
        """The latest labels as a lazy dask array, one chunk per block of X."""
        if self._current is None:
            raise RuntimeError("no labels written yet")
        block_ids = da.arange(len(self.row_chunks), chunks=1)
        return da.map_blocks(
            _read_block,
            block_ids,
            io=ZarrBlockIO(self.array, self._current, self._current),
            row_chunks=self.row_chunks,
            chunks=(self.row_chunks,),
            dtype=self.dtype,
            meta=np.empty((0,), dtype=self.dtype),
        )


def create_label_array(
    where: str | zarr.Group, row_chunks: tuple[int, ...], dtype: np.dtype, name: str = "labels"
) -> zarr.Array:
    """The (2, n_blocks, max_block_rows) double-buffered label array, filled with -1.

    ``where`` is a path/URL (the array is created there, replacing what is
    there) or a Zarr group (the array is its member ``name``).
    """
    width = max(row_chunks)
    spec = {
        "shape": (2, len(row_chunks), width),
        "chunks": (1, 1, width),
        "dtype": dtype,
        "fill_value": -1,
        "overwrite": True,
    }
    if isinstance(where, zarr.Group):
        return where.create_array(name, **spec)
    return zarr.create_array(store=where, **spec)


def _read_block(index: np.ndarray, *, io: ZarrBlockIO, row_chunks: tuple[int, ...]):
    block = int(index[0])
    return io.read(block, row_chunks[block])


LabelStore = MemoryLabelStore | ZarrLabelStore


def make_label_stores(
    spec: str | os.PathLike, row_chunks: tuple[int, ...], n_clusters: int, n_runs: int = 1
) -> list[LabelStore]:
    """Build the stores that ``KMeans(label_store=spec)`` asks for, one per run.

    Parameters
    ----------
    spec : {"auto", "memory", "zarr"} or path
        "auto": memory when the labels of all runs take at most
        ``MEMORY_LIMIT_BYTES``, else Zarr in a temporary directory; "zarr": a
        temporary directory; a path or URL: a Zarr array created there
        (replacing what is there), or with several runs one array per run
        at ``PATH/run-0``, ``PATH/run-1``, ...
    row_chunks : tuple of int
        Row chunks of X.
    n_clusters : int
        k, which fixes the label dtype.
    n_runs : int
        Number of runs (``n_init``).
    """
    dtype = label_dtype(n_clusters)
    if spec == "auto":
        in_memory = n_runs * sum(row_chunks) * dtype.itemsize <= MEMORY_LIMIT_BYTES
        spec = "memory" if in_memory else "zarr"
    if spec == "memory":
        return [MemoryLabelStore(row_chunks, dtype) for _ in range(n_runs)]
    if spec == "zarr":
        return [ZarrLabelStore(row_chunks, dtype) for _ in range(n_runs)]
    if isinstance(spec, str | os.PathLike):
        if n_runs == 1:
            return [ZarrLabelStore(row_chunks, dtype, path=spec)]
        base = os.fspath(spec).rstrip("/")
        return [ZarrLabelStore(row_chunks, dtype, path=f"{base}/run-{r}") for r in range(n_runs)]
    raise ValueError(f"label_store must be 'auto', 'memory', 'zarr' or a path/URL, got {spec!r}")
