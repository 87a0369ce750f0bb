"""Per-row state kept between passes: labels, and any other array with a value per row of X.

Each pass over X reads, for every row, what the previous pass left (a
label, a distance, a pair of bounds) and writes the new value. A
:class:`RowStore` keeps one such array; the pass machinery
(:mod:`dkmeans.passes`) hands each block task a :class:`BlockState` per
store, through which the task reads its block's previous values and writes
the new ones, whatever the store is:

- :class:`MemoryStore` keeps the values as the tasks return them: in this
  process, or on the distributed workers that computed them (persisted),
  so they never travel through the client between passes.
- :class:`ZarrStore` keeps them in a Zarr array that the tasks read and
  write themselves, double-buffered: a pass reads buffer g % 2 and writes
  buffer (g + 1) % 2, g being the passes written so far, so a retried task
  never reads its own output. A pass that only rewrites values idempotently
  (the bounded Lloyd writing its active labels back, :class:`InPlace`)
  writes the latest buffer in place and leaves the one before untouched. The array has shape
  ``(2, n_blocks, max_block_rows, *row_shape)`` and one Zarr chunk per block
  and buffer, so no two tasks ever write the same chunk.

:func:`make_stores` picks one by the ``label_store`` parameter. Labels are
stored as int8, int16 or int32, the smallest that holds k
(:func:`label_dtype`); ``KMeans.labels_`` presents them as int32.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.utils import format_bytes

from dkmeans import inputs, storage

# "auto" keeps state in memory while it takes at most this fraction of the memory it
# would live in: the workers' memory limits together under dask.distributed (each holds
# the values of the blocks it ran), else this machine's memory.
MEMORY_FRACTION = 0.1
logger = logging.getLogger("dkmeans")


@dataclass(frozen=True)
class Placement:
    """Where a fit's per-row state goes: the ``label_store`` and ``scratch`` parameters.

    ``storage_options`` are for the paths among them that are fsspec URLs.
    """

    spec: str | os.PathLike = "auto"
    scratch: str | os.PathLike | None = None
    storage_options: dict | None = None


def worker_memory_limits() -> list[int] | None:
    """Each dask.distributed worker's memory limit; None: no cluster, or a worker has none."""
    from dkmeans import passes  # passes builds on this module

    if not passes.on_distributed():
        return None
    from distributed import get_client

    workers = get_client().scheduler_info(n_workers=-1)["workers"].values()
    limits = [int(worker.get("memory_limit") or 0) for worker in workers]
    return limits if limits and all(limits) else None


def memory_for_state() -> tuple[int, str]:
    """(bytes, what they are): the memory that memory stores would take their room from."""
    limits = worker_memory_limits()
    if limits is not None:
        return sum(limits), f"the memory limits of {len(limits)} workers"
    import psutil  # a dependency of distributed

    return int(psutil.virtual_memory().total), "this machine's memory"


def choose_kind(n_bytes: int, what: str) -> str:
    """Where ``"auto"`` puts state of ``n_bytes``: "memory" or "zarr", said in the log."""
    memory, where = memory_for_state()
    kind = "memory" if n_bytes <= MEMORY_FRACTION * memory else "zarr"
    logger.info(
        "%s: %s (%s; memory up to %d%% of %s, %s)",
        what,
        kind,
        format_bytes(n_bytes),
        round(100 * MEMORY_FRACTION),
        where,
        format_bytes(memory),
    )
    return kind


# What a pass's tasks returned of a memory store (None for a Zarr store, written by the tasks).
Written = da.Array | list[np.ndarray] | None


def label_dtype(n_clusters: int) -> np.dtype:
    """The smallest signed integer dtype that holds labels 0..n_clusters-1."""
    for dtype in (np.int8, np.int16, np.int32):
        if n_clusters - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"n_clusters={n_clusters} is too large for int32 labels")


class BlockState:
    """One store's values for one block, as a task sees them: read the old, write the new."""

    def read(self) -> np.ndarray | None:
        """The block's values from the previous pass (None before the first)."""
        raise NotImplementedError

    def write(self, values: np.ndarray) -> None:
        """The block's new values (once per task)."""
        raise NotImplementedError


@dataclass
class _MemoryBlockState(BlockState):
    previous: np.ndarray | None
    written: np.ndarray | None = field(default=None, init=False)

    def read(self) -> np.ndarray | None:
        return self.previous

    def write(self, values: np.ndarray) -> None:
        self.written = values


@dataclass(frozen=True)
class _ZarrBlockState(BlockState):
    array: zarr.Array
    read_buffer: int | None  # None before the first pass: nothing to read
    write_buffer: int
    block: int
    n_rows: int

    def read(self) -> np.ndarray | None:
        if self.read_buffer is None:
            return None
        return self.array[self.read_buffer, self.block, : self.n_rows]

    def write(self, values: np.ndarray) -> None:
        self.array[self.write_buffer, self.block, : len(values)] = values

    @property
    def written(self) -> None:
        return None  # the values are in the Zarr array, not returned by the task


@dataclass(frozen=True)
class BlockAccess:
    """How a task reaches its block's values of one store (small, picklable: sent to tasks)."""

    dtype: np.dtype
    row_shape: tuple[int, ...] = ()
    zarr_array: zarr.Array | None = None  # None: a memory store, values passed in and returned
    read_buffer: int | None = None
    write_buffer: int = 0

    def open(self, block: int, n_rows: int, previous: np.ndarray | None) -> BlockState:
        """The :class:`BlockState` of one block (``previous``: its previous values, if passed)."""
        if self.zarr_array is None:
            return _MemoryBlockState(previous)
        return _ZarrBlockState(self.zarr_array, self.read_buffer, self.write_buffer, block, n_rows)


@dataclass(frozen=True)
class StorePass:
    """One pass's use of a store: how tasks reach it, and the previous values to hand them.

    ``previous`` (memory stores) is a row-aligned input holding the previous
    values: a dask array (persisted, on the workers under distributed) or the
    NumPy blocks a pass in this process left. It stays with the pass's
    inputs, never inside ``access``, so that a task depends on its own block
    of it only.
    """

    access: BlockAccess
    previous: da.Array | list[np.ndarray] | None = None


class RowStore:
    """Per-row values kept between passes; see the module docstring.

    Attributes
    ----------
    row_chunks : tuple of int
        Row chunks of X (one block of values per block of X).
    dtype : numpy dtype
    row_shape : tuple of int
        Shape of each row's value (``()`` for one value per row).
    passes : int
        Passes whose values the store has received.
    """

    kind = "abstract"

    def __init__(self, row_chunks: tuple[int, ...], dtype: Any, row_shape: tuple[int, ...] = ()):
        self.row_chunks = tuple(int(c) for c in row_chunks)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.passes = 0

    def begin_pass(self, in_place: bool = False) -> StorePass:
        """What the next pass's tasks read and write through.

        ``in_place``: the pass rewrites the latest values where they are (it
        must be idempotent, as writing labels that were already written):
        the buffer before them is left untouched.
        """
        raise NotImplementedError

    def end_pass(self, written: Written, in_place: bool = False) -> None:
        """Make the values the pass wrote current (``written``: those the tasks returned)."""
        if not in_place:
            self.passes += 1

    def values(self) -> da.Array:
        """The latest values, a lazy dask array chunked like X's rows."""
        raise NotImplementedError

    def discard(self) -> None:
        """Let go of the values (and of a temporary directory holding them)."""

    @property
    def nbytes(self) -> int:
        return sum(self.row_chunks) * self.dtype.itemsize * int(np.prod(self.row_shape))


class MemoryStore(RowStore):
    """Values returned by the tasks, kept where the scheduler keeps results.

    Under the local schedulers the blocks are NumPy arrays in this process;
    under dask.distributed they stay on the workers that computed them. A
    pass run in this process leaves them as a list of NumPy blocks, which the
    next such pass reads as they are; they become a dask array only when one
    is asked for.
    """

    kind = "memory"

    def __init__(self, row_chunks, dtype, row_shape=()):
        super().__init__(row_chunks, dtype, row_shape)
        self._values: da.Array | list[np.ndarray] | None = None

    def begin_pass(self, in_place: bool = False) -> StorePass:
        return StorePass(BlockAccess(self.dtype, self.row_shape), previous=self._values)

    def end_pass(self, written: Written, in_place: bool = False) -> None:
        if written is None:
            raise ValueError("a memory store needs the values its pass returned")
        self._values = written
        super().end_pass(written, in_place)

    def discard(self) -> None:
        self._values = None

    def values(self) -> da.Array:
        if self._values is None:
            raise RuntimeError("no values written yet")
        if isinstance(self._values, list):
            self._values = inputs.from_blocks(self._values, "dkmeans-state")
        return self._values


class ZarrStore(RowStore):
    """Values in a double-buffered Zarr array that the tasks read and write themselves.

    Parameters
    ----------
    row_chunks, dtype, row_shape
        As for :class:`RowStore`.
    path : str or os.PathLike, optional
        Where to create the array (replacing what is there); a temporary
        directory, removed at exit, when neither this nor ``array`` is given.
    array : zarr.Array, optional
        An array made by :func:`create_array` to use instead (e.g. in a
        checkpoint group), holding the values of ``passes`` passes.
    passes : int
        With ``array``: the passes it holds (their latest values are in
        buffer ``passes % 2``).
    storage_options : dict, optional
        For a ``path`` or ``scratch`` that is an fsspec URL (:mod:`dkmeans.storage`).
    scratch : str or os.PathLike, optional
        Without ``path`` or ``array``: the temporary array goes there (a path
        or URL the workers can reach) instead of a local temporary directory.
    """

    kind = "zarr"

    def __init__(
        self,
        row_chunks,
        dtype,
        row_shape=(),
        *,
        path: str | os.PathLike | None = None,
        array: zarr.Array | None = None,
        passes: int = 0,
        storage_options: dict | None = None,
        scratch: str | os.PathLike | None = None,
    ):
        super().__init__(row_chunks, dtype, row_shape)
        self._temporary: str | None = None
        self._storage_options = storage_options
        if array is None:
            if path is None and scratch is None:
                path = self._temporary = tempfile.mkdtemp(prefix="dkmeans-state-")
            elif path is None:
                base = os.fspath(scratch).rstrip("/")
                path = self._temporary = f"{base}/dkmeans-state-{uuid.uuid4().hex}"
            if self._temporary is not None:
                atexit.register(self.discard)
            array = create_array(
                os.fspath(path), self.row_chunks, self.dtype, self.row_shape, storage_options
            )
        expected = (2, len(self.row_chunks), max(self.row_chunks), *self.row_shape)
        if array.shape != expected or array.dtype != self.dtype:
            raise ValueError(
                f"state array {array.store_path} has shape {array.shape} and dtype "
                f"{array.dtype}; this X needs shape {expected} and dtype {self.dtype}"
            )
        self.array = array
        self.passes = passes

    def discard(self) -> None:
        if self._temporary is not None:
            if storage.is_url(self._temporary):
                with contextlib.suppress(Exception):  # best effort: the store may be gone
                    fs, root = storage.filesystem(self._temporary, self._storage_options)
                    if fs.exists(root):
                        fs.rm(root, recursive=True)
            else:
                shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None

    def _current_buffer(self) -> int | None:
        return self.passes % 2 if self.passes > 0 else None

    def begin_pass(self, in_place: bool = False) -> StorePass:
        current = self._current_buffer()
        if in_place and current is None:
            raise RuntimeError("no values written yet to rewrite in place")
        access = BlockAccess(
            self.dtype,
            self.row_shape,
            zarr_array=self.array,
            read_buffer=current,
            write_buffer=current if in_place else (self.passes + 1) % 2,
        )
        return StorePass(access)

    def values(self) -> da.Array:
        buffer = self._current_buffer()
        if buffer is None:
            raise RuntimeError("no values written yet")
        return da.map_blocks(
            _read_block,
            da.arange(len(self.row_chunks), chunks=1),
            array=self.array,
            buffer=buffer,
            row_chunks=self.row_chunks,
            chunks=(self.row_chunks, *((size,) for size in self.row_shape)),
            new_axis=list(range(1, 1 + len(self.row_shape))) or None,
            dtype=self.dtype,
            meta=np.empty((0,) * (1 + len(self.row_shape)), dtype=self.dtype),
        )


class InPlace:
    """A store as a pass sees it when the pass rewrites its latest values in place."""

    def __init__(self, store: RowStore):
        self.store = store

    def begin_pass(self) -> StorePass:
        return self.store.begin_pass(in_place=True)

    def end_pass(self, written: da.Array | list[np.ndarray] | None) -> None:
        self.store.end_pass(written, in_place=True)


def _read_block(index: np.ndarray, *, array: zarr.Array, buffer: int, row_chunks) -> np.ndarray:
    block = int(index[0])
    return array[buffer, block, : row_chunks[block]]


def create_array(
    where: str | zarr.Group,
    row_chunks: tuple[int, ...],
    dtype: Any,
    row_shape: tuple[int, ...] = (),
    storage_options: dict | None = None,
    name: str = "labels",
) -> zarr.Array:
    """The ``(2, n_blocks, max_block_rows, *row_shape)`` double-buffered array, filled with -1.

    ``where`` is a path/URL (the array is created there, replacing what is
    there) or a Zarr group (the array is its member ``name``).
    """
    width = max(row_chunks)
    spec = {
        "shape": (2, len(row_chunks), width, *row_shape),
        "chunks": (1, 1, width, *row_shape),
        "dtype": dtype,
        "fill_value": -1,
        "overwrite": True,
    }
    if isinstance(where, zarr.Group):
        return where.create_array(name, **spec)
    return storage.create_array(where, storage_options, **spec)


def make_stores(
    spec: str | os.PathLike,
    row_chunks: tuple[int, ...],
    dtype: Any,
    n_runs: int = 1,
    row_shape: tuple[int, ...] = (),
    storage_options: dict | None = None,
    scratch: str | os.PathLike | None = None,
    what: str = "label store",
) -> list[RowStore]:
    """The stores ``KMeans(label_store=spec)`` asks for, one per run.

    Parameters
    ----------
    spec : {"auto", "memory", "zarr"} or path
        "auto": memory when the values of all runs take at most
        :data:`MEMORY_FRACTION` of the memory they would live in
        (:func:`choose_kind`, which logs the choice), else "zarr"; "zarr": a
        temporary array in ``scratch`` (default: a temporary directory of
        this machine), removed at the end; a path or URL: a Zarr array
        created there (replacing what is there), or with several runs one
        array per run at ``PATH/run-0``, ``PATH/run-1``, ...
    row_chunks : tuple of int
        Row chunks of X.
    dtype : numpy dtype
        Of the values (:func:`label_dtype` for labels).
    n_runs : int
        Number of runs (``n_init``).
    row_shape : tuple of int
        Shape of each row's value.
    storage_options : dict, optional
        For paths that are fsspec URLs (:mod:`dkmeans.storage`).
    scratch : str or os.PathLike, optional
        Where temporary Zarr stores go: a path or URL the workers can reach.
    what : str
        What the stores hold, for the log.
    """
    if spec == "auto":
        spec = choose_kind(n_runs * MemoryStore(row_chunks, dtype, row_shape).nbytes, what)
    if spec == "memory":
        return [MemoryStore(row_chunks, dtype, row_shape) for _ in range(n_runs)]
    if spec == "zarr":
        return [
            ZarrStore(
                row_chunks, dtype, row_shape, scratch=scratch, storage_options=storage_options
            )
            for _ in range(n_runs)
        ]
    paths = (
        [spec]
        if n_runs == 1
        else [f"{os.fspath(spec).rstrip('/')}/run-{r}" for r in range(n_runs)]
    )
    return [
        ZarrStore(row_chunks, dtype, row_shape, path=path, storage_options=storage_options)
        for path in paths
    ]
