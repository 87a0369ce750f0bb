"""Running a pass on the scheduler in use: with retries, or here without a graph.

Under dask.distributed, ``retries`` are Dask's own task retries: a task
that raises is run again, up to ``retries`` times, on any worker, and a
task whose worker died is re-run by the scheduler (that is Dask's
``distributed.scheduler.allowed-failures``, not ``retries``). The local
schedulers (threads, processes, synchronous) have no task retries, so a
computation that fails with an I/O error (``OSError``, which includes
:class:`dkmeans.io.ChunkReadError`) is run again whole, up to ``retries``
times; other errors (bad data, bugs) are not retried, since they would
fail the same way.

With Dask's threaded or synchronous scheduler and data already in memory
(NumPy input), a pass runs here instead (:func:`in_process_threads`,
:func:`map_in_process`): the same per-block function on a thread pool and
the same reduction tree (:func:`dkmeans.reduce.reduce_in_process`), so the
result is bitwise the same, without the few milliseconds a Dask graph costs
per pass (which on small data is more than the pass itself).

Running a task twice is safe: every task of a pass is a pure function of
its inputs, and the labels a pass writes go to the buffer it does not read
(:mod:`dkmeans.labels`), so a re-run writes the same bytes.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.local
import dask.threaded
from dask.base import get_scheduler
from dask.system import CPU_COUNT

logger = logging.getLogger("dkmeans")


def on_distributed() -> bool:
    """Will ``dask.compute`` run on a dask.distributed Client here?"""
    owner = getattr(get_scheduler(), "__self__", None)  # a Client's bound ``get``
    return type(owner).__module__.startswith("distributed")


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


def compute(*collections: Any, retries: int = 0) -> tuple:
    """``dask.compute(*collections)``, retried as the module docstring says."""
    return _run(dask.compute, collections, retries)


def persist(*collections: Any, retries: int = 0) -> tuple:
    """``dask.persist(*collections)``, retried as the module docstring says."""
    return _run(dask.persist, collections, retries)


def _run(function, collections: tuple, retries: int) -> tuple:
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
