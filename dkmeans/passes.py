"""How every pass over X runs: a task per row block, a tree reduction of fixed fan-in.

A Lloyd iteration, a k-means|| round, a final assignment and a score are
all :func:`map_reduce` calls, in the spirit of
``dask.array.reduction(x, chunk, combine, aggregate, split_every)``: the
algorithm says what one block's task computes and how two partial results
combine; everything else is decided here, once:

- **Blocks.** ``task(block, *blocks, states=..., **constants)`` runs once
  per row block of the arrays (X, weights, ...: row-aligned, chunked
  alike). Each block of X is read inside the task that uses it (never by a
  task of its own, which would hold it in memory or move it between
  workers).
- **Per-row state.** Each :class:`~dkmeans.state.RowStore` given to a pass is
  read and written by every task through a
  :class:`~dkmeans.state.BlockState`; memory stores' new values stay where
  the tasks ran, Zarr stores are written by the tasks themselves.
- **The tree.** Per-block results are combined level by level in groups of
  ``split_every`` consecutive blocks, then all that remain: the tree
  ``dask.array.reduction`` builds. Its shape depends only on the number of
  blocks and ``split_every``, so every floating-point addition happens in
  the same order under every scheduler and worker count.
- **Where.** With Dask's threaded (default) or synchronous scheduler and
  every input already in memory (NumPy input), the pass runs here on a
  thread pool of the scheduler's size, without a graph: the same tasks, the
  same tree, bitwise the same result, minus Dask's few milliseconds per
  pass. Otherwise it is one Dask graph (persisted, so memory state stays
  on the workers).
- **Retries.** Under dask.distributed, a task that raises is run again up
  to ``retries`` times, on any worker (Dask's task retries; a task whose
  worker died is re-run by the scheduler anyway). The local schedulers have
  no task retries, so a pass that fails with an ``OSError`` (which includes
  :class:`~dkmeans.errors.ChunkReadError`) is run again whole; other errors
  (bad data, bugs) would fail the same way and are not retried. Re-running
  a task is safe: tasks are pure functions of their inputs, and a pass never
  reads the state buffer it writes.
- **One BLAS thread per task.** Dask runs one block per thread; BLAS
  threads inside each would oversubscribe the cores. This process limits
  BLAS to one thread for the duration of each pass (restored after, shared
  by fits running at once); other processes that run tasks (the processes
  scheduler's, a worker started without Dask's own limit) are limited once,
  by their first task.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import dask
import dask.array as da
import dask.local
import dask.threaded
import numpy as np
from dask.base import get_scheduler
from dask.highlevelgraph import HighLevelGraph
from dask.layers import ArrayBlockIdDep, ArraySliceDep
from dask.system import CPU_COUNT

from dkmeans import inputs, progress
from dkmeans.state import BlockAccess, BlockState, RowStore, StorePass

logger = logging.getLogger("dkmeans")


@dataclass(frozen=True)
class Block:
    """Where a task's block lies in X."""

    index: int  # position among the row blocks
    start: int  # global index of its first row
    n_rows: int


def map_reduce(
    task: Callable[..., Any],
    arrays: Sequence[da.Array | None],
    *,
    combine: Callable[[list], Any],
    split_every: int,
    states: Sequence[RowStore] = (),
    retries: int = 0,
    **constants: Any,
) -> Any:
    """Run ``task`` on every row block of ``arrays`` and combine the results in a fixed tree.

    Parameters
    ----------
    task : callable
        ``task(block, *blocks, states=states, **constants)``: ``block`` a
        :class:`Block`, ``blocks`` the block's rows of each of ``arrays`` (None
        for a None array), ``states`` one :class:`~dkmeans.state.BlockState`
        per store in ``states`` (the task must write each). Returns the
        block's partial result (picklable).
    arrays : sequence of dask arrays or None
        Row-aligned inputs, chunked alike along rows; the first is not None
        and defines the blocks. 2-D arrays (X) must be one chunk along columns.
    combine : callable
        Combines a list of partial results into one (associative).
    split_every : int
        Fan-in of the reduction tree.
    states : sequence of RowStore
        Per-row state each task reads and writes.
    retries : int
        Times a failed task (distributed) or a pass that failed with an
        ``OSError`` (local schedulers) is run again.
    **constants
        Passed to every task (small: centers, keys, flags).

    Returns
    -------
    The combination of every block's result.
    """
    store_passes = [store.begin_pass() for store in states]
    with one_blas_thread():
        threads = in_process_threads()
        blocks = None if threads is None else _blocks_in_memory(arrays, store_passes)
        if blocks is not None:
            run = partial(
                _run_in_process,
                task,
                arrays[0].chunks[0],
                blocks,
                store_passes,
                combine,
                split_every,
                threads,
                constants,
            )
            total, written = retry_io_errors(run, retries)  # the whole pass, again
        else:
            total, written = _run_graph(
                task, arrays, store_passes, combine, split_every, retries, constants
            )
    for store, values in zip(states, written, strict=True):
        store.end_pass(values)
    return total


def per_run(
    combine: Callable[[list], Any] | Sequence[Callable[[list], Any]],
) -> Callable[[list[list]], list]:
    """A combine for results that are lists with one entry per run (restart): run by run.

    ``combine`` is one function for every run, or one per run. Every run's
    entries are combined in the same tree, so each run's total is bitwise
    what it would be reduced alone.
    """

    def combine_runs(parts: list[list]) -> list:
        by_run = zip(*parts, strict=True)
        if callable(combine):
            return [combine(list(run_parts)) for run_parts in by_run]
        return [f(list(run_parts)) for f, run_parts in zip(combine, by_run, strict=True)]

    return combine_runs


def tree_reduce(parts: list, split_every: int, combine: Callable[[list], Any]) -> Any:
    """Combine ``parts`` in the tree ``dask.array.reduction`` builds for them.

    ``ceil(log(n, split_every))`` levels: each but the last combines
    consecutive groups of ``split_every``, the last combines all that remain.
    ``combine`` may build graph tasks instead of computing (as
    :func:`_run_graph` does): the tree is the same.
    """
    depth = max(1, math.ceil(math.log(len(parts), split_every))) if len(parts) > 1 else 1
    for _ in range(depth - 1):
        parts = [combine(parts[i : i + split_every]) for i in range(0, len(parts), split_every)]
    return combine(parts)


# -- one block ------------------------------------------------------------------------------


def _run_block(
    task: Callable,
    block: Block,
    array_blocks: Sequence[np.ndarray | None],
    accesses: Sequence[BlockAccess],
    previous: Sequence[np.ndarray | None],
    constants: dict,
) -> tuple[Any, tuple]:
    """Run the task on one block: its result, and the state values it returned."""
    _limit_blas_in_other_processes()
    states: list[BlockState] = [
        access.open(block.index, block.n_rows, prev)
        for access, prev in zip(accesses, previous, strict=True)
    ]
    result = task(block, *array_blocks, states=states, **constants)
    written = []
    for i, (access, state) in enumerate(zip(accesses, states, strict=True)):
        if access.zarr_array is None and state.written is None:
            raise RuntimeError(f"{task.__name__} wrote no values of state {i} in block {block}")
        written.append(state.written)
    return result, tuple(written)


# -- in this process, without a graph ----------------------------------------------------------


def in_process_threads() -> int | None:
    """Threads to run an in-memory pass with here, or None to run it as a Dask graph.

    Here when the scheduler in use is Dask's threaded one (the default for
    arrays; as many threads as it would use) or the synchronous one (one);
    as a graph for the processes scheduler, dask.distributed, or a pool of
    the user's own.
    """
    schedule = get_scheduler() or dask.threaded.get  # None: the default, threads
    if schedule is dask.local.get_sync:
        return 1
    if schedule is dask.threaded.get and dask.config.get("pool", None) is None:
        return dask.config.get("num_workers", None) or CPU_COUNT
    return None


def _blocks_in_memory(
    arrays: Sequence[da.Array | None], store_passes: Sequence[StorePass]
) -> tuple[list, list] | None:
    """The NumPy blocks of every input and of the memory states' values, or None if any is lazy."""
    wanted = [*arrays, *(store_pass.previous for store_pass in store_passes)]
    found = []
    for array in wanted:
        if array is None or isinstance(array, list):  # absent, or blocks a pass left here
            found.append(array)
            continue
        blocks = inputs.in_memory_blocks(array)
        if blocks is None:
            return None
        found.append(blocks)
    return found[: len(arrays)], found[len(arrays) :]


def _run_in_process(
    task, row_chunks, blocks, store_passes, combine, split_every, threads, constants
):
    array_blocks, previous = blocks
    starts = np.concatenate([[0], np.cumsum(row_chunks[:-1])]).astype(np.int64)

    accesses = [store_pass.access for store_pass in store_passes]

    def run(index: int) -> tuple[Any, tuple]:
        return _run_block(
            task,
            Block(index, int(starts[index]), int(row_chunks[index])),
            [None if b is None else b[index] for b in array_blocks],
            accesses,
            [None if p is None else p[index] for p in previous],
            constants,
        )

    results = map_in_process(run, range(len(row_chunks)), threads)
    total = tree_reduce([result for result, _ in results], split_every, combine)
    written = [
        [written[i] for _, written in results] if store_pass.access.zarr_array is None else None
        for i, store_pass in enumerate(store_passes)
    ]
    return total, written


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def map_in_process(function: Callable, items: Sequence, threads: int) -> list:
    """``[function(item) for item in items]`` on ``threads`` threads (kept between passes)."""
    if threads == 1 or len(items) == 1:
        return [function(item) for item in items]
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="dkmeans")
            atexit.register(_pools[threads].shutdown)
        pool = _pools[threads]
    return list(pool.map(function, items))


# -- as a Dask graph ---------------------------------------------------------------------------


def _graph_block(
    first: np.ndarray,
    block_id: tuple,
    where: tuple,
    *rest: np.ndarray | None,
    task: Callable,
    n_arrays: int,
    accesses: tuple[BlockAccess, ...],
    with_previous: tuple[bool, ...],
    constants: dict,
) -> np.ndarray:
    """:func:`_run_block` as a blockwise function: the result as the one element of an array."""
    array_blocks = (first, *rest[: n_arrays - 1])
    previous = iter(rest[n_arrays - 1 :])
    previous_blocks = [next(previous) if given else None for given in with_previous]
    block = Block(int(block_id[0]), int(where[0].start), len(first))
    out = np.empty((1,) * first.ndim, dtype=object)
    out[(0,) * first.ndim] = _run_block(
        task, block, array_blocks, accesses, previous_blocks, constants
    )
    return out


def _graph_blocks(task, arrays, store_passes, constants) -> da.Array:
    """One object element per row block: (result, state values returned)."""
    first = arrays[0]
    index = "ij" if first.ndim == 2 else "i"
    args: list = [first, index]
    for array in [*arrays[1:], *(p.previous for p in store_passes if p.previous is not None)]:
        if isinstance(array, list):
            array = inputs.from_blocks(array, "dkmeans-state")
        args += [array, None if array is None else ("ij" if array.ndim == 2 else "i")]
    if any(a is not None and a.ndim == 2 and a.numblocks[1] != 1 for a in arrays):
        raise ValueError("a pass needs 2-D inputs in one chunk along columns")
    return da.blockwise(
        _graph_block,
        index,
        first,
        index,
        ArrayBlockIdDep(first.chunks),  # the block's index and rows: constants of its
        index,  # task, not tasks of their own
        ArraySliceDep(first.chunks),
        index,
        *args[2:],
        adjust_chunks=dict.fromkeys(index, 1),
        align_arrays=False,  # aligned by block index: one block of each per row block
        dtype=object,
        meta=np.empty((0,) * first.ndim, dtype=object),
        task=task,
        n_arrays=len(arrays),
        accesses=tuple(p.access for p in store_passes),  # never the previous values themselves:
        with_previous=tuple(p.previous is not None for p in store_passes),  # those are inputs
        constants=constants,
    )


def _combine_elements(combine: Callable, parts: list) -> Any:
    """``combine`` at the tree's first level, whose inputs are blocks' (result, written)."""
    return combine([part.item()[0] for part in parts])


def _written_of(element: np.ndarray, *, state: int) -> np.ndarray:
    return element.item()[1][state]


def _run_graph(task, arrays, store_passes, combine, split_every, retries, constants):
    parts = _graph_blocks(task, arrays, store_passes, constants)
    rows = arrays[0].chunks[0]
    block_keys = [key[0] if parts.ndim == 2 else key for key in parts.__dask_keys__()]
    name = f"dkmeans-reduce-{uuid.uuid4().hex}"
    layer: dict = {}

    def combine_keys(group: list) -> tuple:
        key = (name, len(layer) + 1)
        first_level = group[0][0] == parts.name
        layer[key] = (partial(_combine_elements, combine) if first_level else combine, group)
        return key

    last = tree_reduce(block_keys, split_every, combine_keys)
    layer[(name, 0)] = (as_element, last)
    # A one-element array rather than a Delayed: Dask then optimises it together with
    # the state arrays below, and each block's task runs once for both.
    total = da.Array(
        HighLevelGraph.from_collections(name, layer, dependencies=[parts]),
        name,
        chunks=((1,),),
        dtype=object,
        meta=np.empty((0,), dtype=object),
    )
    written = [
        None if p.access.zarr_array is not None else _written_array(parts, i, p.access, rows)
        for i, p in enumerate(store_passes)
    ]
    kept = [w for w in written if w is not None]
    total, *kept = persist(total, *kept, retries=retries)  # memory state stays where computed
    progress.watch(total)  # a progress bar under dask.distributed, when asked for
    kept_values = iter(kept)
    return total.compute().item(), [None if w is None else next(kept_values) for w in written]


def as_element(value: Any) -> np.ndarray:
    """``value`` as the one element of an object array: how a non-array travels as a block."""
    element = np.empty((1,), dtype=object)
    element[0] = value
    return element


def _written_array(parts: da.Array, state: int, access: BlockAccess, row_chunks) -> da.Array:
    """The values a memory state's tasks returned, as a dask array chunked like X's rows."""
    ndim = 1 + len(access.row_shape)
    return parts.map_blocks(
        _written_of,
        state=state,
        chunks=(row_chunks, *((size,) for size in access.row_shape)),
        drop_axis=list(range(ndim, parts.ndim)) or None,
        new_axis=list(range(parts.ndim, ndim)) or None,
        dtype=access.dtype,
        meta=np.empty((0,) * ndim, dtype=access.dtype),
    )


# -- running Dask, with retries ------------------------------------------------------------


def on_distributed() -> bool:
    """Will ``dask.compute`` run on a dask.distributed Client here?"""
    owner = getattr(get_scheduler(), "__self__", None)  # a Client's bound ``get``
    return type(owner).__module__.startswith("distributed")


def compute(*collections: Any, retries: int = 0) -> tuple:
    """``dask.compute(*collections)``, retried as the module docstring says."""
    return _run_dask(dask.compute, collections, retries)


def persist(*collections: Any, retries: int = 0) -> tuple:
    """``dask.persist(*collections)``, retried as the module docstring says."""
    return _run_dask(dask.persist, collections, retries)


def _run_dask(function, collections: tuple, retries: int) -> tuple:
    if on_distributed():
        return function(*collections, retries=retries)
    return retry_io_errors(lambda: function(*collections), retries)


def retry_io_errors(call: Callable[[], Any], retries: int) -> Any:
    """``call()``, called again (up to ``retries`` times) while it fails with an ``OSError``."""
    for attempt in range(1, retries + 1):
        try:
            return call()
        except OSError as err:
            logger.warning(
                "a pass over X failed (%s: %s); running it again (retry %d of %d)",
                type(err).__name__,
                err,
                attempt,
                retries,
            )
    return call()


# -- one BLAS thread per task -----------------------------------------------------------------


class _OneBlasThread:
    """One BLAS thread while passes run in this process; the user's setting restored after.

    Passes running at once from several threads (two fits on one Client)
    share the limit: the first to start sets it, the last to finish restores
    the original setting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._controller = None
        self._limiter = None

    @property
    def active(self) -> bool:
        return self._active > 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._active == 0:
                if self._controller is None:
                    from threadpoolctl import ThreadpoolController

                    self._controller = ThreadpoolController()
                self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if self._active == 0:
                    self._limiter.restore_original_limits()


one_blas_thread = _OneBlasThread()
_limited_pid: int | None = None


def _limit_blas_in_other_processes() -> None:
    """BLAS to one thread, once, in a process that runs tasks but no pass of its own.

    A process running a pass is inside :data:`one_blas_thread` already;
    dask.distributed workers start with one thread; the processes
    scheduler's workers do not, and are limited by their first task.
    """
    global _limited_pid
    if one_blas_thread.active or _limited_pid == os.getpid():
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _limited_pid = os.getpid()
