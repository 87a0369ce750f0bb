"""Run the ``dkmeans`` command and SIGKILL its own process at a chosen point.

    python tests/kill_driver.py POINT dkmeans-arguments...

POINT is where the process dies (SIGKILL: nothing is cleaned up, as when a
node is lost):

- ``init``: during k-means||, as its second pass over X ends (no iteration
  saved yet);
- ``labels``: in the middle of writing the labels of the fourth pass (half
  of its blocks written, three iterations saved);
- ``result``: in the middle of writing the result's labels, after the last
  iteration was saved.

Used by tests/test_faults.py with the threaded scheduler, so the tasks run
in this process.
"""

import os
import signal
import sys
import threading

import zarr

import dkmeans.passes
from dkmeans.cli import main

BLOCKS = 8  # row blocks of the test data


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_on_call(function, call: int, when=lambda *args: True):
    """``function``, but the process dies at its ``call``-th call that satisfies ``when``."""
    lock, calls = threading.Lock(), [0]

    def wrapper(*args, **kwargs):
        if when(*args):
            with lock:
                calls[0] += 1
                if calls[0] == call:
                    die()
        return function(*args, **kwargs)

    return wrapper


point, argv = sys.argv[1], sys.argv[2:]
if point == "init":
    dkmeans.passes.map_reduce = kill_on_call(dkmeans.passes.map_reduce, 2)
elif point == "labels":
    zarr.Array.__setitem__ = kill_on_call(
        zarr.Array.__setitem__,
        3 * BLOCKS + BLOCKS // 2,
        when=lambda array, *_: array.path.endswith("run-0/labels"),
    )
elif point == "result":
    zarr.Array.__setitem__ = kill_on_call(
        zarr.Array.__setitem__, 3, when=lambda array, *_: array.path == "labels"
    )
else:
    raise SystemExit(f"unknown kill point {point!r}")
sys.exit(main(argv))
