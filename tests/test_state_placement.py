"""Where per-row state lives: "auto" sized by the workers' memory, temporary Zarr in `scratch`."""

import logging

import numpy as np
import pytest
from distributed import Client, LocalCluster

from dkmeans import KMeans, state


def kinds(stores) -> set[str]:
    return {store.kind for store in stores}


@pytest.mark.distributed
def test_auto_follows_the_workers_memory(caplog):
    """The same labels (24M rows, int8: 24 MB) go to memory on 2 x 1 GB workers and to
    Zarr on 2 x 100 MB workers (10% of their memory limits together), and the log says so."""
    row_chunks = (1_000_000,) * 24
    found = {}
    for limit in ("1GB", "100MB"):
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, memory_limit=limit, dashboard_address=":0"
            ) as cluster,
            Client(cluster),
            caplog.at_level(logging.INFO, logger="dkmeans"),
        ):
            caplog.clear()
            found[limit] = kinds(state.make_stores("auto", row_chunks, np.int8))
            (line,) = [r.getMessage() for r in caplog.records if "label store" in r.getMessage()]
            assert "the memory limits of 2 workers" in line
    assert found == {"1GB": {"memory"}, "100MB": {"zarr"}}
    assert line.startswith("label store: zarr (22.89 MiB; memory up to 10%")


def test_locally_auto_follows_this_machines_memory(caplog, monkeypatch):
    monkeypatch.setattr(state, "memory_for_state", lambda: (10_000_000, "a small machine"))
    with caplog.at_level(logging.INFO, logger="dkmeans"):
        assert kinds(state.make_stores("auto", (600_000, 600_000), np.int8)) == {"zarr"}
        assert kinds(state.make_stores("auto", (400_000, 500_000), np.int8)) == {"memory"}
    assert "label store: zarr (1.14 MiB; memory up to 10% of a small machine" in caplog.text


@pytest.mark.distributed
def test_scratch_holds_temporary_state_that_workers_reach(tmp_path, caplog):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20_000, 3)) + rng.integers(4, size=(20_000, 1)) * 5
    params = {"n_clusters": 4, "random_state": 0, "tol": 0, "max_iter": 10}
    reference = KMeans(**params).fit(X)
    scratch = tmp_path / "scratch"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        model = KMeans(**params, label_store="zarr", scratch=str(scratch)).fit(X)
        assert len(list(scratch.glob("dkmeans-state-*"))) == 1  # the labels, until exit
        np.testing.assert_array_equal(model.labels_.compute(), reference.labels_.compute())
    assert np.array_equal(model.cluster_centers_, reference.cluster_centers_)  # bitwise
