"""Where a fit keeps its state: label stores, and with a checkpoint, a resumable Zarr group.

:func:`open_workspace` gives a fit what it works in. Without a checkpoint, a
:class:`Workspace`: label stores chosen by ``label_store``, nothing saved.
With ``checkpoint=PATH`` (``KMeans.fit``; the CLI always does), a
:class:`Checkpoint`: everything needed to continue is kept in the Zarr group
at PATH, which becomes the result group when the fit ends::

    PATH/                     attrs: params, input, fingerprint, versions
      checkpoint/             while the fit runs; attrs["format"] = FORMAT
        run-0/, run-1/, ...   one per run (n_init):
          labels              (2, n_blocks, max_block_rows) label store, double-buffered
          centers             (2, k, d) centers, double-buffered like the labels
        attrs["state"]        {"n_iter", "history": of the run leading so far,
                               "runs": one record per run (see _record)}
      centers, labels,        written when the fit ends (dkmeans.results), then
      history/                attrs["dkmeans_complete"] = True, then checkpoint/ removed

Why it is safe to kill at any moment: pass t reads label buffer t % 2 and
writes (t + 1) % 2; the new centers go to the other centers buffer than the
saved state's (``centers_buffer`` in its record); only then is
``attrs["state"]`` rewritten, in one write of one small document (Zarr's
local store writes through a temporary file and a rename, object stores
replace whole objects). Until that write the saved state still points at the
buffers of iteration t, which nothing has touched. Continuing repeats the
interrupted pass with the same inputs, so it ends with bitwise the same
centers as a run never interrupted.

A bounded fit (:mod:`dkmeans.bounded`) is saved only where every run's next
pass is a full one, after its active labels were written into the label
buffer the last full pass wrote (in place: rewriting them is idempotent, and
the saved state's buffer is the other one). Its record also holds the label
store's pass count and the margin of that full pass, so continuing repeats
the same full pass, the same split, and everything after it bitwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import dask.array as da
import numpy as np
import zarr

from dkmeans import bounded, results, state, storage
from dkmeans.errors import CheckpointMismatchError
from dkmeans.lloyd import LloydState

FORMAT = 1  # of the checkpoint/ member; a checkpoint of another format is refused


def fingerprint(
    X: da.Array,
    *,
    weighted: bool,
    n_clusters: int | list[int],
    n_init: int,
    split_every: int,
    tol: float,
    algorithm: str = "lloyd",
    metric: str = "euclidean",
) -> dict[str, Any]:
    """What must be equal for a saved fit to continue bitwise as the same fit.

    The row chunking fixes the reduction tree (and so the rounding of every
    sum); ``max_iter`` may change between runs (to run longer), the
    initialisation parameters do not matter once the initial centers are saved.
    The algorithm is recorded only when it is "bounded" (whose sums are grouped
    otherwise), so checkpoints of plain Lloyd fits from before it existed match;
    likewise the metric, only when it is "cosine".
    A sweep over k (:func:`dkmeans.sweep`) records its list of k.
    """
    chunks = ",".join(map(str, X.chunks[0])).encode()
    found = {
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
    if algorithm != "lloyd":
        found["algorithm"] = algorithm
    if metric != "euclidean":
        found["metric"] = metric
    return found


def fit_fingerprint(
    X: da.Array, weighted: bool, n_clusters: int | list[int], n_runs: int, params: dict
) -> dict[str, Any]:
    """The :func:`fingerprint` of a fit (or sweep) with these checked parameters.

    Its algorithm is the one the fit runs (``"auto"`` decided here, by
    :func:`dkmeans.bounded.choose_algorithm`): read it with :func:`algorithm_of`.
    """
    fits = len(n_clusters) if isinstance(n_clusters, list) else 1
    return fingerprint(
        X,
        weighted=weighted,
        n_clusters=n_clusters,
        n_init=n_runs,
        split_every=params["split_every"],
        tol=params["tol"],
        algorithm=bounded.choose_algorithm(
            params["algorithm"], params["max_iter"], X, n_runs, fits
        ),
        metric=params["metric"],
    )


def algorithm_of(found: dict[str, Any]) -> str:
    """The algorithm of a :func:`fingerprint` ("lloyd" is not recorded)."""
    return found.get("algorithm", "lloyd")


def check_fingerprint(
    saved: dict, now: dict, path: str | os.PathLike, adopt: bool = False
) -> dict[str, Any]:
    """Raise :class:`CheckpointMismatchError` naming what differs, if anything.

    ``adopt``: the saved algorithm is taken rather than compared (the
    parameter was "auto", whose rule may decide otherwise now: another
    ``max_iter``, other workers). Returns the fingerprint to continue with.
    """
    if adopt:
        now = {key: value for key, value in now.items() if key != "algorithm"}
        if "algorithm" in saved:
            now["algorithm"] = saved["algorithm"]
    differ = [  # both ways: a key recorded only where it is not the default (see fingerprint)
        f"{key}: saved {saved.get(key)!r}, now {now.get(key)!r}"
        for key in [*now, *(key for key in saved if key not in now)]
        if saved.get(key) != now.get(key)
    ]
    if differ:
        raise CheckpointMismatchError(
            f"cannot continue the fit saved at {os.fspath(path)!r}: it was made with different "
            f"data or parameters ({'; '.join(differ)}); start a new fit instead"
        )
    return now


class Workspace:
    """Where a fit without a checkpoint keeps its labels; nothing is saved.

    Attributes
    ----------
    stores : list of RowStore
        Each run's label store.
    algorithm : {"lloyd", "bounded"}
        The algorithm the runs run (a continued fit's: the one it was saved with).
    states : list of LloydState or None
        Saved runs to continue (a :class:`Checkpoint` only).
    result : dkmeans.results.Result or None
        A finished fit found at the checkpoint (resume only): nothing to run.
    """

    def __init__(self, stores: list[state.RowStore], algorithm: str = "lloyd"):
        self.stores = stores
        self.algorithm = algorithm
        self.states: list[LloydState] | None = None
        self.result: results.Result | None = None

    def save(self, states: list[LloydState]) -> None:
        """Called after every pass (and once the initial centers are known)."""

    def finish(self, run: int, fitted: results.Result) -> results.Result:
        """``fitted`` with the chosen run's labels (a lazy dask array)."""
        return dataclasses.replace(fitted, labels=self.stores[run].values())

    def finish_members(
        self, chosen: dict[str, tuple[int, results.Result]], attrs: dict[str, Any]
    ) -> dict[str, results.Result]:
        """A sweep's end: the result of each chosen (run, result), by name."""
        return {
            name: Workspace.finish(self, run, fitted) for name, (run, fitted) in chosen.items()
        }


class Checkpoint(Workspace):
    """The result group of a running fit, and its saved state: see the module docstring."""

    def __init__(self, group: zarr.Group, stores: list[state.RowStore]):
        super().__init__(stores)
        self.group = group
        # run -> (n_iter, buffer) of its latest centers write
        self._centers_written: dict[int, tuple[int, int]] = {}
        # Opened once: on object storage each lookup of a member costs requests.
        self._state_group: zarr.Group | None = None
        self._centers: dict[int, zarr.Array] = {}

    @classmethod
    def create(
        cls, path, X: da.Array, *, n_clusters: list[int], labels_dtype, attrs, storage_options=None
    ) -> Checkpoint:
        """Start a new result group at ``path``, replacing whatever is there (k of each run)."""
        group = storage.open_group(path, "w", storage_options)
        group.attrs.update(results.jsonable(attrs))
        state_group = group.create_group(results.UNFINISHED)
        state_group.attrs["format"] = FORMAT
        stores = []
        for run, k in enumerate(n_clusters):
            run_group = state_group.create_group(_run_name(run))
            labels = state.create_array(run_group, X.chunks[0], labels_dtype)
            run_group.create_array(
                "centers", shape=(2, k, X.shape[1]), chunks=(1, k, X.shape[1]), dtype=X.dtype
            )
            stores.append(state.ZarrStore(X.chunks[0], labels_dtype, array=labels))
        return cls(group, stores)

    @classmethod
    def open(
        cls,
        path,
        X: da.Array,
        *,
        n_runs,
        labels_dtype,
        fingerprint: dict,
        adopt: bool = False,
        storage_options=None,
    ) -> Checkpoint:
        """Open an unfinished fit's group to continue it (``states`` None: start it again).

        Raises
        ------
        CheckpointMismatchError
            If the saved fit differs from this one in anything that changes
            its result (data shape, dtype or chunking, weights, k, n_init,
            tol, split_every), or was saved in another format.
        """
        group = storage.open_group(path, "r+", storage_options)
        found = group.attrs.get("fingerprint", {})
        fingerprint = check_fingerprint(found, fingerprint, path, adopt)
        state_group = group[results.UNFINISHED]
        if state_group.attrs.get("format") != FORMAT:
            raise CheckpointMismatchError(
                f"cannot continue the fit saved at {os.fspath(path)!r}: its checkpoint format "
                f"is {state_group.attrs.get('format')!r}, this dkmeans reads format {FORMAT}"
            )
        runs = [state_group[_run_name(run)] for run in range(n_runs)]
        saved = state_group.attrs.get("state")
        records = [None] * len(runs) if saved is None else saved["runs"]
        stores, states = [], []
        for run_group, record in zip(runs, records, strict=True):
            run_state = None if record is None else _state(record, run_group["centers"])
            passes = 0 if run_state is None else run_state.label_passes
            labels = run_group["labels"]
            stores.append(state.ZarrStore(X.chunks[0], labels_dtype, array=labels, passes=passes))
            states.append(run_state)
        checkpoint = cls(group, stores)
        checkpoint.algorithm = algorithm_of(fingerprint)
        if saved is not None:
            checkpoint.states = states
            checkpoint._centers_written = {
                run: (s.n_iter, _centers_buffer(record))
                for run, (s, record) in enumerate(zip(states, records, strict=True))
            }
        return checkpoint

    def save(self, states: list[LloydState]) -> None:
        """Save every run's state after a pass (or the initial centers)."""
        if self._state_group is None:
            self._state_group = self.group[results.UNFINISHED]
        state_group = self._state_group
        records = []
        for run, run_state in enumerate(states):
            # A run that has stopped keeps its centers: no rewrite of the buffer in use;
            # new centers go to the buffer the saved state does not point at.
            written_at, buffer = self._centers_written.get(run, (None, 1))
            if written_at != run_state.n_iter:
                buffer = 1 - buffer
                if run not in self._centers:
                    self._centers[run] = state_group[_run_name(run)]["centers"]
                self._centers[run][buffer] = run_state.centers
                self._centers_written[run] = (run_state.n_iter, buffer)
            records.append({**_record(run_state), "centers_buffer": buffer})
        # What `dkmeans info` shows of an unfinished fit: the run lowest so far.
        leader = min(states, key=lambda s: s.last_objective)
        document = {
            "n_iter": max(s.n_iter for s in states),
            "history": leader.history,
            "runs": records,
        }
        state_group.attrs["state"] = results.jsonable(document)  # the commit point

    def finish(self, run: int, fitted: results.Result) -> results.Result:
        """Write the chosen run's result, mark it complete, drop the state; read it back."""
        results.write_result(self.group, super().finish(run, fitted))
        del self.group[results.UNFINISHED]
        return results.read_result(self.group)

    def finish_members(
        self, chosen: dict[str, tuple[int, results.Result]], attrs: dict[str, Any]
    ) -> dict[str, results.Result]:
        """A sweep's end: each chosen run's result as member ``name``, then ``attrs``, complete."""
        self.group.attrs.pop(results.COMPLETE_ATTR, None)
        for name, (run, fitted) in chosen.items():
            member = self.group.require_group(name)
            results.write_result(member, Workspace.finish(self, run, fitted))
        self.group.attrs.update(results.jsonable(attrs))
        del self.group[results.UNFINISHED]
        self.group.attrs[results.COMPLETE_ATTR] = True  # last
        return {name: results.read_result(self.group[name]) for name in chosen}


def open_workspace(
    checkpoint: str | os.PathLike | None,
    *,
    resume: bool,
    X: da.Array,
    weighted: bool,
    n_clusters: int | list[int],
    n_runs: int,
    params: dict[str, Any],
    attrs: dict[str, Any],
    storage_options: dict | None = None,
) -> Workspace:
    """What a fit works in: a new or continued checkpoint, a finished result, or plain stores.

    With ``resume``, an unfinished fit at ``checkpoint`` is continued and a
    finished one is read back (``workspace.result``), after checking that it
    is the same fit (:func:`fingerprint`); otherwise (or if there is nothing
    there) a new checkpoint replaces whatever is at ``checkpoint``. Without
    a checkpoint, the label stores are the ``label_store`` parameter's.
    ``n_clusters`` a list: a sweep over k, ``n_runs`` runs of each k in turn
    (a finished sweep is not read back here: :func:`dkmeans.sweep` does).
    ``storage_options`` are for the checkpoint's or label store's URL.
    """
    ks = [n_clusters] if isinstance(n_clusters, int) else list(n_clusters)
    run_clusters = [k for k in ks for _ in range(n_runs)]
    labels_dtype = state.label_dtype(max(ks))
    expected = fit_fingerprint(X, weighted, n_clusters, n_runs, params)
    if checkpoint is None:
        stores = state.make_stores(
            params["label_store"],
            X.chunks[0],
            labels_dtype,
            len(run_clusters),
            storage_options=storage_options,
            scratch=params["scratch"],
        )
        return Workspace(stores, algorithm_of(expected))
    adopt = params["algorithm"] == "auto"
    found = results.status(checkpoint, storage_options) if resume else "absent"
    if found == "complete":
        workspace = Workspace([])
        workspace.result = results.read_result(checkpoint, storage_options)
        saved = workspace.result.attrs.get("fingerprint", {})
        check_fingerprint(saved, expected, checkpoint, adopt)
        return workspace
    if found == "checkpoint":
        return Checkpoint.open(
            checkpoint,
            X,
            n_runs=len(run_clusters),
            labels_dtype=labels_dtype,
            fingerprint=expected,
            adopt=adopt,
            storage_options=storage_options,
        )
    workspace = Checkpoint.create(
        checkpoint,
        X,
        n_clusters=run_clusters,
        labels_dtype=labels_dtype,
        attrs={**attrs, "fingerprint": expected},
        storage_options=storage_options,
    )
    workspace.algorithm = algorithm_of(expected)
    return workspace


# The saved record of a run: explicit keys (the on-disk format), not field names.
def _record(run_state: LloydState) -> dict[str, Any]:
    return {
        "n_iter": run_state.n_iter,
        "history": run_state.history,
        "tol_abs": run_state.tol_abs,
        "stop_reason": run_state.stop_reason,
        "exact_final": run_state.exact_final,
        "inertia": run_state.inertia,
        "final_pass": run_state.final_pass,
        "label_writes": run_state.label_writes,
        "next_margin": run_state.next_margin,
        "final_sums": run_state.final_sums,
        "final_weights": run_state.final_weights,
    }


def _centers_buffer(record: dict[str, Any]) -> int:
    return record.get("centers_buffer", record["n_iter"] % 2)


def _state(record: dict[str, Any], centers: zarr.Array) -> LloydState:
    return LloydState(
        centers=np.asarray(centers[_centers_buffer(record)]),
        n_iter=record["n_iter"],
        history=record["history"],
        tol_abs=record["tol_abs"],
        stop_reason=record["stop_reason"],
        exact_final=record["exact_final"],
        inertia=record["inertia"],
        final_pass=record["final_pass"],
        label_writes=record.get("label_writes"),
        next_margin=record.get("next_margin"),
        final_sums=_array_or_none(record.get("final_sums")),
        final_weights=_array_or_none(record.get("final_weights")),
    )


def _array_or_none(values: list | None) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float64)


def _run_name(run: int) -> str:
    return f"run-{run}"
