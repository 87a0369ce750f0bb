"""Checkpoints: a fit that writes its state to its result group every iteration.

A fit given ``checkpoint=PATH`` (``KMeans.fit``; the CLI always does) keeps
everything it needs to continue in the Zarr group at PATH, which becomes the
result group when the fit ends::

    PATH/                     attrs: params, input, fingerprint, versions
      checkpoint/             while the fit runs
        run-0/, run-1/, ...   one per run (n_init):
          labels              (2, n_blocks, max_block_rows) label store, double-buffered
          centers             (2, k, d) centers, double-buffered like the labels
        attrs["state"]        each run's n_iter, history, tol_abs, stop_reason, ...
      centers, labels,        written when the fit ends (see io.write_result), then
      history/                attrs["dkmeans_complete"] = True, then checkpoint/ removed

Why it is safe to kill at any moment: pass t reads label buffer t % 2 and
writes (t + 1) % 2; the new centers go to centers buffer (t + 1) % 2; only
then is ``attrs["state"]`` rewritten, in one write of one small document
(Zarr's local store writes through a temporary file and a rename, object
stores replace whole objects). Until that write the saved state still points
at the buffers of iteration t, which nothing has touched. Continuing repeats
the interrupted pass with the same inputs, so it ends with bitwise the same
centers as a run never interrupted.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from typing import Any

import dask.array as da
import numpy as np
import zarr

from dkmeans import io
from dkmeans.labels import ZarrLabelStore, create_label_array
from dkmeans.lloyd import LloydState

CHECKPOINT = "checkpoint"


class CheckpointMismatchError(ValueError):
    """A checkpoint was made by a fit that cannot be continued by this one."""


def fingerprint(
    X: da.Array,
    *,
    weighted: bool,
    n_clusters: int,
    n_init: int,
    split_every: int,
    tol: float,
) -> dict[str, Any]:
    """What must be equal for a saved fit to continue bitwise as the same fit.

    The row chunking fixes the reduction tree (and so the rounding of every
    sum); ``max_iter`` may change between runs (to run longer), the
    initialisation parameters do not matter once the initial centers are saved.
    """
    chunks = ",".join(map(str, X.chunks[0])).encode()
    return {
        "shape": list(X.shape),
        "dtype": str(X.dtype),
        "row_chunks_sha256": hashlib.sha256(chunks).hexdigest(),
        "n_blocks": X.numblocks[0],
        "weighted": weighted,
        "n_clusters": n_clusters,
        "n_init": n_init,
        "split_every": split_every,
        "tol": tol,
    }


def check_fingerprint(saved: dict, now: dict, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointMismatchError` naming what differs, if anything."""
    differ = [
        f"{key}: saved {saved.get(key)!r}, now {value!r}"
        for key, value in now.items()
        if saved.get(key) != value
    ]
    if differ:
        raise CheckpointMismatchError(
            f"cannot continue the fit saved at {os.fspath(path)!r}: it was made with different "
            f"data or parameters ({'; '.join(differ)}); start a new fit instead"
        )


def status(path: str | os.PathLike) -> str:
    """What is at ``path``: "absent", "complete", "checkpoint" or "other".

    "checkpoint" is an unfinished fit that can be continued; "other" is
    anything else (not a Zarr group, or a group dkmeans did not write).
    """
    try:
        group = zarr.open_group(store=os.fspath(path), mode="r")
    except FileNotFoundError:
        return "absent"
    except Exception:
        return "other"
    if group.attrs.get(io.COMPLETE_ATTR, False):
        return "complete"
    if CHECKPOINT in group and "fingerprint" in group.attrs:
        return "checkpoint"
    return "other"


class Checkpoint:
    """The result group of a running fit, and its saved state.

    Make one with :meth:`create` (a new fit) or :meth:`open` (continue).
    ``label_stores`` holds one Zarr label store per run.
    """

    def __init__(self, group: zarr.Group, label_stores: list[ZarrLabelStore]):
        self.group = group
        self.label_stores = label_stores
        self._centers_written: dict[int, int] = {}  # run -> n_iter of its latest centers write

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        X: da.Array,
        *,
        n_clusters: int,
        n_runs: int,
        label_dtype: np.dtype,
        fingerprint: dict[str, Any],
        attrs: dict[str, Any],
    ) -> Checkpoint:
        """Start a new result group at ``path``, replacing whatever is there."""
        group = zarr.open_group(store=os.fspath(path), mode="w")
        group.attrs.update(io.jsonable({**attrs, "fingerprint": fingerprint}))
        state_group = group.create_group(CHECKPOINT)
        stores = []
        for run in range(n_runs):
            run_group = state_group.create_group(_run_name(run))
            labels = create_label_array(run_group, X.chunks[0], label_dtype)
            run_group.create_array(
                "centers",
                shape=(2, n_clusters, X.shape[1]),
                chunks=(1, n_clusters, X.shape[1]),
                dtype=X.dtype,
            )
            stores.append(ZarrLabelStore(X.chunks[0], label_dtype, array=labels))
        return cls(group, stores)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        X: da.Array,
        *,
        label_dtype: np.dtype,
        fingerprint: dict[str, Any],
    ) -> tuple[Checkpoint, list[LloydState] | None]:
        """Open an unfinished fit's group to continue it.

        Returns the checkpoint and each run's saved state (None if the fit
        was killed before its initial centers were saved: start it again).

        Raises
        ------
        CheckpointMismatchError
            If the saved fit differs from this one in anything that changes
            its result (data shape, dtype or chunking, weights, k, n_init,
            tol, split_every).
        """
        group = zarr.open_group(store=os.fspath(path), mode="r+")
        check_fingerprint(group.attrs.get("fingerprint", {}), fingerprint, path)
        state_group = group[CHECKPOINT]
        run_groups = [state_group[_run_name(run)] for run in range(fingerprint["n_init"])]
        stores = [
            ZarrLabelStore(X.chunks[0], label_dtype, array=run_group["labels"])
            for run_group in run_groups
        ]
        checkpoint = cls(group, stores)
        saved = state_group.attrs.get("state")
        if saved is None:
            return checkpoint, None
        states = []
        for run_group, store, record in zip(run_groups, stores, saved["runs"], strict=True):
            state = LloydState(centers=run_group["centers"][record["n_iter"] % 2], **record)
            store.restore(state.label_passes)
            states.append(state)
        checkpoint._centers_written = {run: state.n_iter for run, state in enumerate(states)}
        return checkpoint, states

    def save(self, states: list[LloydState]) -> None:
        """Save every run's state after a pass (or the initial centers)."""
        state_group = self.group[CHECKPOINT]
        records = []
        for run, state in enumerate(states):
            # A run that has stopped keeps its centers: no rewrite of the buffer in use.
            if self._centers_written.get(run) != state.n_iter:
                state_group[_run_name(run)]["centers"][state.n_iter % 2] = state.centers
                self._centers_written[run] = state.n_iter
            record = asdict(state)
            del record["centers"]
            records.append(record)
        # What `dkmeans info` shows of an unfinished fit: the run lowest so far.
        leader = min(states, key=lambda state: state.last_objective)
        summary = {"n_iter": max(state.n_iter for state in states), "history": leader.history}
        # The commit point: one write of one small document.
        state_group.attrs["state"] = io.jsonable({**summary, "runs": records})

    def finish(
        self, *, run: int, centers: np.ndarray, history: list[dict], attrs: dict[str, Any]
    ) -> None:
        """Write the result of the chosen run, mark it complete, drop the state."""
        io.write_result(
            self.group,
            centers=centers,
            labels=self.label_stores[run].labels(),
            history=history,
            attrs=attrs,
        )
        del self.group[CHECKPOINT]


def _run_name(run: int) -> str:
    return f"run-{run}"
