"""Out of core for real: a Zarr array several times the workers' memory."""

import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

from dkmeans import KMeans, load
from dkmeans.datasets import make_blobs_zarr

WORKERS = 2
# A worker with numpy, zarr, dask and the compiled kernel loaded holds about
# 200 MiB before any data; Dask pauses a worker at 80% of its limit.
WORKER_MEMORY = 512 * 2**20  # bytes, each
N_SAMPLES, N_FEATURES, CHUNK_ROWS = 50_000_000, 16, 62_500  # 2.98 GiB of float32, 4 MiB chunks


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
    )
    data_bytes = N_SAMPLES * N_FEATURES * 4
    assert data_bytes > 2.9 * WORKERS * WORKER_MEMORY  # the point of the test
    params = dict(n_clusters=8, init="random", n_init=1, random_state=4, max_iter=3, tol=0)

    with (
        LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            memory_limit=WORKER_MEMORY,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        workers_before = set(client.scheduler_info()["workers"])
        model = KMeans(**params).fit(str(path))
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
        f"{[round(r['peak'] / 2**20) for r in reports.values()]}"
    )

    for address, report in reports.items():
        assert report["peak"] < WORKER_MEMORY, (
            f"{address} peaked at {report['peak'] / 2**20:.0f} MiB"
        )
        assert report["spilled"] == 0, f"{address} spilled to disk"

    # The same fit in memory, same chunking, local threads: bitwise the same.
    in_memory = zarr.open_array(str(path), mode="r")[:]
    reference = KMeans(**params).fit(da.from_array(in_memory, chunks=(CHUNK_ROWS, -1)))
    assert np.array_equal(model.cluster_centers_, reference.cluster_centers_)
    assert model.inertia_ == reference.inertia_
    saved = load(tmp_path / "result.zarr")
    np.testing.assert_array_equal(saved.labels_.compute(), reference.labels_.compute())
    assert np.array_equal(saved.cluster_centers_, reference.cluster_centers_)
