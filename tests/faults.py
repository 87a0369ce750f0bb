"""Fault injection for the reliability tests: a Zarr store that misbehaves on one chunk.

The store counts the reads of one chunk key in a log file (one line per
read, from any thread or process), so a fault can be aimed at "the third
read of chunk 3" and fire once even when tasks run in worker processes
that die and restart.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import numpy as np
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, WrapperStore

FAULTS = ("io-error", "garbage", "substitute", "kill")


class FaultyStore(WrapperStore):
    """A read-only local Zarr store whose reads of ``key`` fail as told.

    Parameters
    ----------
    path : str
        The Zarr array's directory.
    key : str
        The chunk key to misbehave on, e.g. ``"c/3/0"``.
    log : str
        File counting the reads of ``key`` (created if needed).
    fault : {"io-error", "garbage", "substitute", "kill"}
        What a faulty read does: raise ``OSError(EIO)``; return random bytes
        (which no codec decodes); return the same key of the Zarr array at
        ``substitute`` (valid bytes, other data); SIGKILL the reading process
        (unless it is ``spare_pid``, the test's own).
    reads : tuple of int, optional
        Which reads of ``key`` (1-based) are faulty; None: all of them.
    """

    def __init__(
        self,
        path: str,
        *,
        key: str,
        log: str,
        fault: str,
        reads: tuple[int, ...] | None = None,
        substitute: str | None = None,
        spare_pid: int | None = None,
        store: LocalStore | None = None,
    ):
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        super().__init__(store or LocalStore(path, read_only=True))
        self.options = dict(
            path=path,
            key=key,
            log=log,
            fault=fault,
            reads=reads,
            substitute=substitute,
            spare_pid=spare_pid,
        )

    def _with_store(self, store):
        return type(self)(**self.options, store=store)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if key != self.options["key"]:
            return await self._store.get(key, prototype, byte_range)
        read = count_read(self.options["log"])
        reads = self.options["reads"]
        if reads is not None and read not in reads:
            return await self._store.get(key, prototype, byte_range)
        fault = self.options["fault"]
        if fault == "io-error":
            raise OSError(errno.EIO, f"injected I/O error on read {read} of {key}")
        if fault == "garbage":
            noise = np.random.default_rng(read).integers(0, 256, 4096, dtype=np.uint8)
            return prototype.buffer.from_bytes(noise.tobytes())
        if fault == "substitute":
            other = LocalStore(self.options["substitute"], read_only=True)
            return await other.get(key, prototype, byte_range)
        if os.getpid() != self.options["spare_pid"]:  # "kill"
            os.kill(os.getpid(), signal.SIGKILL)
        return await self._store.get(key, prototype, byte_range)


def count_read(log: str) -> int:
    """Record one read in ``log``; return how many reads it holds now (this one included)."""
    with open(log, "a") as f:  # O_APPEND: lines from several processes do not mix
        f.write(f"{os.getpid()}\n")
    return reads_logged(log)


def reads_logged(log: str) -> int:
    path = Path(log)
    return len(path.read_text().splitlines()) if path.exists() else 0
