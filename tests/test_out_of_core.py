"""Out of core for real: a Zarr array 3x the workers' total memory, a client that stays small."""

import tracemalloc

import dask
import numpy as np
import pytest

from dkmeans import KMeans, load
from dkmeans.datasets import make_blobs_zarr
from tests.cluster import real_dask_cluster

WORKERS = 2
# A worker with numpy, zarr, dask and the compiled kernel loaded holds about
# 300 MiB before any data (dask.array imports xarray, and with it pandas and
# scipy, wherever xarray is installed, as it is for the tests); Dask spills
# stored results at 70% of a worker's limit and pauses it at 80%.
WORKER_MEMORY = 640 * 2**20  # bytes, each
N_SAMPLES, N_FEATURES, CHUNK_ROWS = 64_000_000, 16, 250_000  # 3.81 GiB of float32, 16 MiB chunks
BLOCK_BYTES = CHUNK_ROWS * N_FEATURES * 4


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(900)  # a paused or dead worker must fail the test, not hang CI
def test_zarr_larger_than_worker_memory_is_clustered_without_spilling(tmp_path):
    path = tmp_path / "big.zarr"
    make_blobs_zarr(
        path,
        n_samples=N_SAMPLES,
        n_features=N_FEATURES,
        n_centers=8,
        chunk_rows=CHUNK_ROWS,
        seed=1,
        compressor="none",  # random floats hardly compress: plain chunks write and read faster
    )
    data_bytes = N_SAMPLES * N_FEATURES * 4
    assert data_bytes > 3 * WORKERS * WORKER_MEMORY  # the point of the test
    params = dict(n_clusters=8, init="random", n_init=1, random_state=4, max_iter=1, tol=0)

    with real_dask_cluster(tmp_path, n_workers=WORKERS, memory_limit=str(WORKER_MEMORY)) as client:
        workers_before = set(client.scheduler_info()["workers"])
        # The client never holds a block of X: what it receives is per-block
        # statistics of size O(k d). (The scheduler runs in its own process.)
        tracemalloc.start()
        try:
            model = KMeans(**params).fit(str(path))
            client_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # Labels as big as the data are written by the workers, block by block
        # (computing them into one array would concatenate them on one worker).
        model.save(tmp_path / "result.zarr")

        def memory_report(dask_worker):
            return {
                "peak": max(dask_worker.monitor.quantities["memory"]),
                "spilled": dask_worker.data.cumulative_metrics.get(("disk-write", "count"), 0),
            }

        reports = client.run(memory_report)
        assert set(client.scheduler_info()["workers"]) == workers_before  # none died
    print(
        f"\n{data_bytes / 2**30:.2f} GiB of data vs {WORKERS} workers x "
        f"{WORKER_MEMORY / 2**20:.0f} MiB; worker peaks (MiB): "
        f"{[round(r['peak'] / 2**20) for r in reports.values()]}; client peak "
        f"{client_peak / 2**20:.1f} MiB (allocated during the fit) vs a block of "
        f"{BLOCK_BYTES / 2**20:.0f} MiB"
    )
    assert client_peak < BLOCK_BYTES / 2

    for address, report in reports.items():
        assert report["peak"] < WORKER_MEMORY, (
            f"{address} peaked at {report['peak'] / 2**20:.0f} MiB"
        )
        assert report["spilled"] == 0, f"{address} spilled to disk"

    # The same fit with the local threaded scheduler: bitwise the same.
    with dask.config.set(scheduler="threads"):
        reference = KMeans(**params).fit(str(path))
    assert np.array_equal(model.cluster_centers_, reference.cluster_centers_)
    assert model.inertia_ == reference.inertia_
    saved = load(tmp_path / "result.zarr")
    np.testing.assert_array_equal(saved.labels_.compute(), reference.labels_.compute())
    assert np.array_equal(saved.cluster_centers_, reference.cluster_centers_)
