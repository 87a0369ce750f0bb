"""Checkpointed fits: the state is saved every iteration and a continued fit ends bitwise equal.

Interruptions here are exceptions raised at chosen points inside the fit (after
a checkpoint is saved, while one is being saved, while the result is being
written); tests/test_cli.py kills a real process with SIGKILL.
"""

import dask.array as da
import numpy as np
import psutil
import pytest
import zarr

from dkmeans import CheckpointMismatchError, KMeans, bounded, checkpoint, load, results
from dkmeans.datasets import make_blobs_zarr


class Interrupted(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way handles it."""


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "x.zarr"
    make_blobs_zarr(
        path, n_samples=30_000, n_features=5, n_centers=6, chunk_rows=4_000, cluster_std=3.0
    )
    return str(path)


def _model(**params):
    defaults = {
        "init": "random",
        "n_init": 1,
        "random_state": 4,
        "tol": 0,
        "max_iter": 40,
        "algorithm": "lloyd",  # saved every iteration (bounded fits: test_bounded.py)
    }
    return KMeans(6, **(defaults | params))


@pytest.fixture(scope="module")
def reference(data_path):
    return _model().fit(data_path)


def _assert_same_fit(a, b):
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)  # bitwise
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    assert a.stop_reason_ == b.stop_reason_
    assert [r["objective"] for r in a.history_] == [r["objective"] for r in b.history_]
    np.testing.assert_array_equal(a.labels_.compute(), b.labels_.compute())


def test_checkpointed_fit_equals_plain_fit_and_leaves_a_result_group(
    data_path, reference, tmp_path
):
    out = tmp_path / "out.zarr"
    model = _model().fit(data_path, checkpoint=out)
    assert reference.n_iter_ > 5  # enough iterations for the interruption tests
    _assert_same_fit(model, reference)
    group = zarr.open_group(str(out), mode="r")
    assert results.status(out) == "complete"
    assert results.UNFINISHED not in group  # the state is dropped once the result is in
    assert group["labels"].chunks == (4_000,)  # the row chunks of X
    assert group.attrs["input"]["path"] == data_path
    assert group.attrs["fingerprint"]["n_clusters"] == 6
    _assert_same_fit(load(out), reference)


def _interrupt_save_at(monkeypatch, call: int, before_writing: bool):
    """Make Checkpoint.save raise on its ``call``-th call, before or after it writes."""
    original = checkpoint.Checkpoint.save
    calls = []

    def save(self, states):
        calls.append(states[0].n_iter)
        if len(calls) == call and before_writing:
            raise Interrupted
        original(self, states)
        if len(calls) == call:
            raise Interrupted

    monkeypatch.setattr(checkpoint.Checkpoint, "save", save)


@pytest.mark.parametrize(
    ("call", "before_writing"),
    [(1, False), (1, True), (2, True), (4, False), (6, True)],
    ids=["after-init", "before-init-saved", "first-iteration", "after-iter-3", "in-iter-5"],
)
def test_interrupted_fit_continues_to_the_same_result(
    data_path, reference, tmp_path, monkeypatch, call, before_writing
):
    out = tmp_path / "out.zarr"
    _interrupt_save_at(monkeypatch, call, before_writing)
    with pytest.raises(Interrupted):
        _model().fit(data_path, checkpoint=out)
    monkeypatch.undo()
    assert results.status(out) == "checkpoint"
    with pytest.raises(ValueError, match="not a complete dkmeans result"):
        load(out)
    saved = zarr.open_group(str(out), mode="r")[results.UNFINISHED].attrs.get("state")
    expected_saved = call - 1 if before_writing else call
    assert (0 if saved is None else saved["n_iter"] + 1) == expected_saved
    # Killed before the initial centers were saved, the fit starts again (same
    # seed, same result); otherwise it must not initialise again, so a
    # different seed cannot change the result.
    seed = 4 if saved is None else 99
    resumed = _model(random_state=seed).fit(data_path, checkpoint=out, resume=True)
    _assert_same_fit(resumed, reference)
    assert results.status(out) == "complete"
    _assert_same_fit(load(out), reference)


def test_interrupted_result_write_never_looks_complete(
    data_path, reference, tmp_path, monkeypatch
):
    out = tmp_path / "out.zarr"

    def failing_write(*args, **kwargs):
        raise Interrupted

    monkeypatch.setattr(results, "write_labels", failing_write)
    with pytest.raises(Interrupted):
        _model().fit(data_path, checkpoint=out)
    monkeypatch.undo()
    assert results.status(out) == "checkpoint"
    _assert_same_fit(_model().fit(data_path, checkpoint=out, resume=True), reference)


def test_resume_of_a_complete_fit_reads_it(data_path, reference, tmp_path, monkeypatch):
    out = tmp_path / "out.zarr"
    first = _model().fit(data_path, checkpoint=out)
    monkeypatch.setattr(checkpoint.Checkpoint, "create", None)  # any new work would fail
    again = _model().fit(data_path, checkpoint=out, resume=True)
    _assert_same_fit(again, first)
    assert again.history_ == first.history_  # read back, seconds included: nothing re-run


def test_resume_without_a_checkpoint_starts_a_fit(data_path, reference, tmp_path):
    model = _model().fit(data_path, checkpoint=tmp_path / "new.zarr", resume=True)
    _assert_same_fit(model, reference)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"n_clusters": 5}, "n_clusters: saved 6, now 5"),
        ({"tol": 1e-3}, "tol: saved 0.0, now 0.001"),
        ({"split_every": 3}, "split_every"),
        ({"n_init": 2}, "n_init: saved 1, now 2"),
        ({"chunks": 3_000}, "row_chunks_sha256"),
    ],
)
def test_resume_refuses_a_different_fit(data_path, tmp_path, monkeypatch, change, named):
    out = tmp_path / "out.zarr"
    _interrupt_save_at(monkeypatch, 3, before_writing=False)
    with pytest.raises(Interrupted):
        _model().fit(data_path, checkpoint=out)
    monkeypatch.undo()
    X = da.from_zarr(data_path)
    if "chunks" in change:
        X = X.rechunk((change.pop("chunks"), -1))
    params = _model().get_params() | change
    with pytest.raises(CheckpointMismatchError, match=named):
        KMeans(**params).fit(X, checkpoint=out, resume=True)
    assert results.status(out) == "checkpoint"  # untouched: still resumable


def test_a_key_saved_only_where_not_the_default_is_compared_both_ways():
    """A bounded fit's checkpoint records "algorithm"; continuing it as plain Lloyd (no key
    now) must be refused, as must the other way round."""
    plain = {"n_clusters": 6, "tol": 0.0}
    bounded = plain | {"algorithm": "bounded"}
    for saved, now in [(bounded, plain), (plain, bounded)]:
        with pytest.raises(CheckpointMismatchError, match="algorithm"):
            checkpoint.check_fingerprint(saved, now, "out.zarr")
    checkpoint.check_fingerprint(bounded, dict(bounded), "out.zarr")


def _memory(monkeypatch, n_bytes: int) -> None:
    """The room that ``algorithm="auto"`` weighs the active rows against."""
    monkeypatch.setattr(bounded, "room_for_active_rows", lambda: (n_bytes, "a test's room"))


def test_auto_runs_lloyd_where_the_active_rows_would_crowd_memory(data_path, monkeypatch):
    X = da.from_zarr(data_path)
    needed = bounded.active_bytes(X, runs_per_fit=1)
    assert needed == X.shape[0] * (5 * X.dtype.itemsize + 32)  # every row, within the budget
    for memory, expected in [(needed, "bounded"), (needed - 1, "lloyd")]:
        _memory(monkeypatch, memory)
        assert bounded.choose_algorithm("auto", 300, X, runs_per_fit=1) == expected
        assert bounded.choose_algorithm("bounded", 300, X, runs_per_fit=1) == "bounded"
        fitted = _model(algorithm="auto", max_iter=25).fit(data_path)
        assert ("pass" in fitted.history_[0]) == (expected == "bounded")  # bounded's records
    _memory(monkeypatch, 2**50)
    assert bounded.choose_algorithm("auto", bounded.AUTO_MIN_ITER - 1, X, 1) == "lloyd"
    # restarts and the k of a sweep each hold their active rows
    assert bounded.active_bytes(X, runs_per_fit=3, fits=2) == 6 * needed
    big = da.zeros((10**8, 5), chunks=(10**6, 5))
    assert bounded.active_bytes(big, 1) == bounded.ACTIVE_MEMORY_BYTES  # the fit's budget


def test_auto_continues_with_the_algorithm_it_was_saved_with(data_path, tmp_path, monkeypatch):
    _memory(monkeypatch, 2**50)
    uninterrupted = _model(algorithm="auto").fit(data_path)
    assert "pass" in uninterrupted.history_[0]  # "auto" chose "bounded"
    out = tmp_path / "out.zarr"
    _interrupt_save_at(monkeypatch, 2, before_writing=False)
    with pytest.raises(Interrupted):
        _model(algorithm="auto").fit(data_path, checkpoint=out)
    monkeypatch.undo()
    _memory(monkeypatch, 1)  # "auto" would now choose "lloyd" for a new fit
    with pytest.raises(CheckpointMismatchError, match="algorithm: saved 'bounded', now None"):
        _model(algorithm="lloyd").fit(data_path, checkpoint=out, resume=True)
    resumed = _model(algorithm="auto").fit(data_path, checkpoint=out, resume=True)
    _assert_same_fit(resumed, uninterrupted)
    assert [r["pass"] for r in resumed.history_] == [r["pass"] for r in uninterrupted.history_]
    _assert_same_fit(_model(algorithm="auto").fit(data_path, checkpoint=out, resume=True), resumed)


@pytest.mark.distributed
def test_the_room_for_active_rows_is_the_smallest_workers_spare_memory_per_worker(monkeypatch):
    from distributed import Client, LocalCluster

    def spare(limit):
        return int(bounded.AUTO_WORKER_FRACTION * limit) - bounded.AUTO_WORKER_BASE_BYTES

    kwargs = dict(n_workers=2, processes=False, memory_limit="1GiB", dashboard_address=":0")
    with LocalCluster(**kwargs) as cluster, Client(cluster):
        assert bounded.room_for_active_rows()[0] == 2 * spare(2**30)  # the cluster's limits
    machine = psutil.virtual_memory().total
    assert bounded.room_for_active_rows()[0] == int(bounded.AUTO_MACHINE_FRACTION * machine)
    # workers of different sizes: each holds about its share, so the smallest one counts
    monkeypatch.setattr(bounded, "worker_memory_limits", lambda: [3 * 2**30, 2**30, 2**31])
    assert bounded.room_for_active_rows()[0] == 3 * spare(2**30)
    monkeypatch.setattr(bounded, "worker_memory_limits", lambda: [2**28, 2**31])
    assert bounded.room_for_active_rows()[0] == 0  # a worker with no room to spare
