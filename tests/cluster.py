"""A real Dask cluster for tests: `dask scheduler` and `dask worker` processes on 127.0.0.1.

Unlike a LocalCluster, the scheduler runs in its own process too, so the
test process holds only the client (what a user's Jupyter kernel or batch
job holds).
"""

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from distributed import Client


@contextlib.contextmanager
def real_dask_cluster(tmp_path, *, n_workers: int, memory_limit: str) -> Iterator[Client]:
    """Start a scheduler and ``n_workers`` single-threaded workers; yield a Client to them."""
    scheduler_file = str(tmp_path / "scheduler.json")
    dask_cmd = os.path.join(os.path.dirname(sys.executable), "dask")
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scheduler = [dask_cmd, "scheduler", "--host", "127.0.0.1", "--port", "0"]
    procs = [
        subprocess.Popen(
            [*scheduler, "--dashboard-address", ":0", "--scheduler-file", scheduler_file],
            **quiet,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(scheduler_file) and time.monotonic() < deadline:
            time.sleep(0.1)
        for i in range(n_workers):
            worker = [dask_cmd, "worker", "--scheduler-file", scheduler_file]
            options = ["--name", f"w{i + 1}", "--nthreads", "1", "--memory-limit", memory_limit]
            procs.append(subprocess.Popen([*worker, *options, "--no-dashboard"], **quiet))
        with Client(scheduler_file=scheduler_file, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=120)
            yield client
    finally:
        # Workers first, then the scheduler; no graceful shutdown needed (it takes seconds).
        for proc in reversed(procs):
            proc.kill()
            proc.wait(timeout=30)
