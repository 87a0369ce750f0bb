"""Running a pass's graph on the scheduler in use, with retries.

Under dask.distributed, ``retries`` are Dask's own task retries: a task
that raises is run again, up to ``retries`` times, on any worker, and a
task whose worker died is re-run by the scheduler (that is Dask's
``distributed.scheduler.allowed-failures``, not ``retries``). The local
schedulers (threads, processes, synchronous) have no task retries, so a
computation that fails with an I/O error (``OSError``, which includes
:class:`dkmeans.io.ChunkReadError`) is run again whole, up to ``retries``
times; other errors (bad data, bugs) are not retried, since they would
fail the same way.

Running a task twice is safe: every task of a pass is a pure function of
its inputs, and the labels a pass writes go to the buffer it does not read
(:mod:`dkmeans.labels`), so a re-run writes the same bytes.
"""

from __future__ import annotations

import logging
from typing import Any

import dask
from dask.base import get_scheduler

logger = logging.getLogger("dkmeans")


def on_distributed() -> bool:
    """Will ``dask.compute`` run on a dask.distributed Client here?"""
    owner = getattr(get_scheduler(), "__self__", None)  # a Client's bound ``get``
    return type(owner).__module__.startswith("distributed")


def compute(*collections: Any, retries: int = 0) -> tuple:
    """``dask.compute(*collections)``, retried as the module docstring says."""
    return _run(dask.compute, collections, retries)


def persist(*collections: Any, retries: int = 0) -> tuple:
    """``dask.persist(*collections)``, retried as the module docstring says."""
    return _run(dask.persist, collections, retries)


def _run(function, collections: tuple, retries: int) -> tuple:
    if on_distributed():
        return function(*collections, retries=retries)
    for attempt in range(1, retries + 1):
        try:
            return function(*collections)
        except OSError as err:
            logger.warning(
                "a pass over X failed (%s: %s); running it again (retry %d of %d)",
                type(err).__name__,
                err,
                attempt,
                retries,
            )
    return function(*collections)
