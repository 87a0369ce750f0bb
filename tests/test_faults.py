"""Faults: flaky and corrupt storage, a worker killed mid-iteration, a process killed and resumed.

Each faulty fit is compared with the undisturbed fit of the same data:
it must end bitwise equal to it, or fail with an error that names the
chunk, leaving nothing that looks like a complete result.
"""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from distributed import Client, LocalCluster

from dkmeans import ChunkReadError, KMeans, load, results
from dkmeans.cli import main
from dkmeans.datasets import make_blobs_zarr
from tests.faults import FaultyStore, reads_logged

N_SAMPLES, N_FEATURES, CHUNK_ROWS = 40_000, 6, 5_000  # 8 chunks
CHUNK = 3  # the chunk that misbehaves: rows 15000-19999
CHUNK_KEY = f"c/{CHUNK}/0"
# Plain Lloyd: every pass reads every chunk, which the counts of reads below rely on.
PARAMS = dict(
    n_clusters=5, init="random", n_init=1, tol=0, max_iter=6, random_state=1, algorithm="lloyd"
)
DRIVER = Path(__file__).resolve().parent / "kill_driver.py"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "x.zarr"
    make_blobs_zarr(
        path,
        n_samples=N_SAMPLES,
        n_features=N_FEATURES,
        n_centers=5,
        chunk_rows=CHUNK_ROWS,
        cluster_std=4.0,
    )
    return str(path)


@pytest.fixture(scope="module")
def reference(data):
    """The undisturbed fit, threaded scheduler."""
    return KMeans(**PARAMS).fit(data)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster:
        yield cluster


@pytest.fixture(params=["threads", pytest.param("distributed", marks=pytest.mark.distributed)])
def scheduler(request):
    """Run the test's fits on the threaded scheduler, or on a 2-worker LocalCluster."""
    if request.param == "threads":
        yield request.param
        return
    with Client(request.getfixturevalue("cluster")):
        yield request.param


def faulty(data, tmp_path, **fault) -> zarr.Array:
    """The data through a store that misbehaves on chunk CHUNK as ``fault`` says."""
    store = FaultyStore(data, key=CHUNK_KEY, log=str(tmp_path / "reads.log"), **fault)
    return zarr.open_array(store=store, mode="r")


def assert_same(model, reference):
    assert np.array_equal(model.cluster_centers_, reference.cluster_centers_)  # bitwise
    assert model.inertia_ == reference.inertia_
    assert _history(model) == _history(reference)
    np.testing.assert_array_equal(model.labels_.compute(), reference.labels_.compute())


def _history(model):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in model.history_]


def clean_reads(data, tmp_path) -> int:
    """How many times an undisturbed fit reads chunk CHUNK."""
    log = tmp_path / "reads.log"
    KMeans(**PARAMS).fit(faulty(data, tmp_path, fault="io-error", reads=()))
    n = reads_logged(str(log))
    log.unlink()
    return n


# -- flaky and corrupt storage ------------------------------------------------------


def test_a_chunk_read_that_fails_once_is_retried(data, reference, tmp_path, scheduler, caplog):
    n_reads = clean_reads(data, tmp_path)
    assert n_reads >= PARAMS["max_iter"] + 1  # every pass reads it
    X = faulty(data, tmp_path, fault="io-error", reads=(3,))  # fails in a Lloyd pass
    with caplog.at_level(logging.WARNING, logger="dkmeans"):
        model = KMeans(**PARAMS).fit(X)
    assert_same(model, reference)
    assert reads_logged(str(tmp_path / "reads.log")) == n_reads + 1  # the failed read, again
    if scheduler == "threads":  # the local schedulers re-run the pass, and say so
        assert "running it again (retry 1 of 2)" in caplog.text
        assert f"rows 15000-19999 (chunk {CHUNK} of 8)" in caplog.text


@pytest.mark.parametrize("retries", [0, 2])
def test_a_chunk_that_keeps_failing_ends_the_fit_naming_it(data, tmp_path, scheduler, retries):
    X = faulty(data, tmp_path, fault="io-error", reads=None)
    group = tmp_path / "fit.zarr"
    with pytest.raises(ChunkReadError) as failure:
        KMeans(**PARAMS, retries=retries).fit(X, checkpoint=group)
    message = str(failure.value)
    assert f"X: could not read rows 15000-19999 (chunk {CHUNK} of 8)" in message
    assert data in message and "injected I/O error" in message
    assert reads_logged(str(tmp_path / "reads.log")) == retries + 1  # tried, then retried
    assert results.status(group) == "checkpoint"  # never looks complete
    with pytest.raises(ValueError, match="not a complete dkmeans result"):
        load(group)


def test_a_chunk_that_decodes_to_garbage_ends_the_fit_naming_it(data, tmp_path, scheduler):
    X = faulty(data, tmp_path, fault="garbage", reads=None)
    group = tmp_path / "fit.zarr"
    with pytest.raises(ChunkReadError, match=rf"rows 15000-19999 \(chunk {CHUNK} of 8\)"):
        KMeans(**PARAMS, retries=1).fit(X, checkpoint=group)
    assert results.status(group) == "checkpoint"


def test_a_chunk_read_back_as_nan_names_the_block_and_row(data, tmp_path):
    """Storage that returns other, well-formed data later: NaN where the first pass saw numbers."""
    spoiled = tmp_path / "spoiled.zarr"
    source = zarr.open_array(data, mode="r")
    copy = zarr.create_array(spoiled, shape=source.shape, chunks=source.chunks, dtype=source.dtype)
    values = source[:]
    values[17_345, 2] = np.nan
    copy[:] = values
    # The first passes read the good chunk; from the third read on, the spoiled one.
    X = faulty(data, tmp_path, fault="substitute", reads=tuple(range(3, 100)), substitute=spoiled)
    with pytest.raises(
        ValueError, match=r"NaN or infinity: block 3 \(rows 15000-19999\), first at row 17345"
    ):
        KMeans(**PARAMS).fit(X)


# -- a worker dies ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("label_store", ["memory", "zarr"])
def test_a_worker_killed_mid_iteration(data, reference, tmp_path, label_store):
    """SIGKILL of the worker process reading chunk CHUNK in the second Lloyd pass."""
    X = faulty(data, tmp_path, fault="kill", reads=(3,), spare_pid=os.getpid())
    log = str(tmp_path / "reads.log")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        before = set(client.run(os.getpid).values())
        model = KMeans(**PARAMS, label_store=label_store).fit(X)
        assert_same(model, reference)
        readers = [int(pid) for pid in Path(log).read_text().split()]
        killed = readers[2]
        assert killed in before  # a worker read it, and died reading it:
        assert killed not in client.run(os.getpid).values()
        assert len(readers) > 3  # the read was done again elsewhere


# -- the process dies, and the job is resumed --------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("point", ["init", "labels", "result"])
def test_process_killed_then_resumed(data, tmp_path, point):
    """SIGKILL of `dkmeans fit` during k-means||, during a label write, during the result write.

    The label write is that of a plain Lloyd pass (saved after every iteration); the
    other two points are those of the default, bounded fit."""
    model = {"n_clusters": 5, "n_init": 1, "tol": 0, "max_iter": 8, "random_state": 2}
    model["algorithm"] = "lloyd" if point == "labels" else "bounded"
    out = tmp_path / "out.zarr"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({"input": {"path": data}, "output": {"path": str(out)}, "model": model})
    )
    killed = subprocess.run(
        [sys.executable, str(DRIVER), point, "fit", str(job)], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert results.status(out) == "checkpoint"  # an unfinished fit, never a result
    with pytest.raises(ValueError, match="not a complete dkmeans result"):
        load(out)
    saved = zarr.open_group(str(out), mode="r")[results.UNFINISHED].attrs.get("state")
    expected_saved = {"init": None, "labels": 3, "result": 8}[point]
    assert (saved and saved["n_iter"]) == expected_saved

    resumed = subprocess.run(
        [sys.executable, "-m", "dkmeans.cli", "fit", str(job), "--resume"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same(load(out), KMeans(**model).fit(data))


def test_cli_storage_failure_is_one_line_then_resume_after_the_fix(
    data, tmp_path, monkeypatch, capsys
):
    """Exit status 1 and the chunk named; the checkpoint kept, and --resume finishes the job."""
    model = {**PARAMS, "n_clusters": 5}
    out = tmp_path / "out.zarr"
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump({"input": {"path": data}, "output": {"path": str(out)}, "model": model})
    )
    read = zarr.Array.__getitem__
    reads = []

    def broken_disk(array, index):
        if isinstance(index, tuple) and isinstance(index[0], slice) and index[0].start == 15_000:
            reads.append(index)
            if len(reads) >= 3:  # fine at first, then gone for good
                raise OSError(5, "Input/output error")
        return read(array, index)

    monkeypatch.setattr(zarr.Array, "__getitem__", broken_disk)
    assert main(["fit", str(job), "--set", "model.retries=1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"could not read rows 15000-19999 (chunk {CHUNK} of 8)" in err and data in err
    assert len(reads) == 2 + 2  # two good reads, then the failure and its one retry
    assert results.status(out) == "checkpoint"

    monkeypatch.setattr(zarr.Array, "__getitem__", read)  # the disk is fixed
    assert main(["fit", str(job), "--resume"]) == 0
    assert_same(load(out), KMeans(**model).fit(data))
