"""The result group: how a fit is saved, loaded and described (``save``, ``load``, ``info``).

A fit is saved as a Zarr group (written by :meth:`KMeans.save` and, at the
end, by a checkpointed fit in its own group)::

    GROUP/
      centers               (k, d), X's dtype
      labels                (n,), chunked like X's rows
      history/              one float64 array per column of HISTORY_COLUMNS
                            (and of BOUNDED_COLUMNS for a bounded fit)
      row_coordinate        (n,) an xarray input's row coordinate (numbers, datetimes)
      attrs:  params, input, versions, inertia, n_iter, converged, stop_reason,
              n_features_in, n_samples (and a checkpointed fit's fingerprint;
              an xarray input's ROWS_ATTR: dims, row_dim, row_coordinate; a
              DataFrame's FEATURE_NAMES_ATTR: its column names),
              then COMPLETE_ATTR = True, written last

A reader checks COMPLETE_ATTR: a write that failed part-way never looks
complete. While a checkpointed fit runs, the group holds its state in the
member ``checkpoint/`` instead (its layout is :mod:`dkmeans.checkpoint`'s);
``attrs["state"]`` of that member has ``n_iter`` and ``history`` of the run
leading so far, which is what :func:`describe` shows of an unfinished fit.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from dkmeans import storage
from dkmeans.errors import InputNotFoundError
from dkmeans.storage import StorageOptions

COMPLETE_ATTR = "dkmeans_complete"
UNFINISHED = "checkpoint"  # the member holding an unfinished fit's state
# An xarray input's rows: attrs[ROWS_ATTR] = their dims; the coordinate's values, where
# they are numbers or datetimes, in the member ROW_COORDINATE.
ROWS_ATTR, ROW_COORDINATE = "rows", "row_coordinate"
FEATURE_NAMES_ATTR = "feature_names"  # KMeans.feature_names_in_, where X had them
HISTORY_COLUMNS = ("objective", "labels_changed", "center_shift", "reseeded", "seconds")
# Columns of a bounded fit's history (dkmeans.bounded): "full_pass" stands for "pass".
BOUNDED_COLUMNS = ("full_pass", "rows_read", "rows_assigned")
_INTEGER_COLUMNS = ("labels_changed", "reseeded", "rows_read", "rows_assigned")


@dataclass
class Result:
    """A fit as saved in a result group."""

    centers: np.ndarray
    labels: da.Array
    history: list[dict]
    inertia: float
    n_iter: int
    converged: bool
    stop_reason: str
    n_features_in: int
    params: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)  # everything in the group's attrs
    rows: Any = None  # the rows of an xarray input (dkmeans.inputs.Rows), or None


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    from dkmeans import __version__

    return {
        "dkmeans": __version__,
        "dask": dask.__version__,
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "python": sys.version.split()[0],
    }


def status(path: str | os.PathLike, storage_options: StorageOptions = None) -> str:
    """What is at ``path``: "absent", "complete", "checkpoint" or "other".

    "checkpoint" is an unfinished fit that can be continued; "other" is
    anything else (not a Zarr group, or a group dkmeans did not write).
    """
    try:
        group = storage.open_group(path, "r", storage_options)
    except FileNotFoundError:
        return "absent"
    except Exception:
        return "other"
    if group.attrs.get(COMPLETE_ATTR, False):
        return "complete"
    if UNFINISHED in group and "fingerprint" in group.attrs:
        return "checkpoint"
    return "other"


def write_result(
    target: str | os.PathLike | zarr.Group, result: Result, storage_options: StorageOptions = None
) -> None:
    """Write a fit to a Zarr group; mark it complete only once all is written.

    ``target`` is a path/URL (the group there is replaced) or an open group
    (a checkpoint's: its members are added or replaced).
    """
    if isinstance(target, zarr.Group):
        group = target
        group.attrs.pop(COMPLETE_ATTR, None)
    else:
        group = storage.open_group(target, "w", storage_options)
    group.create_array("centers", data=np.asarray(result.centers), overwrite=True)
    write_labels(group, "labels", result.labels)
    hist = group.create_group("history", overwrite=True)
    bounded = bool(result.history) and "pass" in result.history[0]
    for key in HISTORY_COLUMNS + (BOUNDED_COLUMNS if bounded else ()):
        if key == "full_pass":
            column = [record["pass"] == "full" for record in result.history]
        else:
            column = [record[key] for record in result.history]
        hist.create_array(key, data=np.array(column, dtype=np.float64))
    attrs = {
        **result.attrs,
        "params": result.params,
        "inertia": result.inertia,
        "n_iter": result.n_iter,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "n_features_in": result.n_features_in,
        "n_samples": int(result.labels.shape[0]),
    }
    if result.rows is not None:
        attrs[ROWS_ATTR] = result.rows.describe()
        if result.rows.has_values:
            values = np.asarray(result.rows.coordinate.values)
            group.create_array(ROW_COORDINATE, data=values, overwrite=True)
    group.attrs.update(jsonable(attrs))
    group.attrs[COMPLETE_ATTR] = True  # last: the mark of a complete result


def write_labels(group: zarr.Group, name: str, labels: da.Array) -> zarr.Array:
    """Store a dask array of labels as member ``name`` of ``group``, chunked like its rows.

    Irregular row chunks (allowed in dask, not in Zarr) become regular ones
    of the largest size. Each task writes whole Zarr chunks: no locks needed.
    """
    rows = labels.chunks[0]
    if len(set(rows[:-1])) > 1 or (len(rows) > 1 and rows[-1] > rows[0]):
        labels = labels.rechunk(max(rows))
    out = group.create_array(
        name, shape=labels.shape, dtype=labels.dtype, chunks=(labels.chunks[0][0],), overwrite=True
    )
    da.store(labels, out, lock=False)
    return out


def write_labels_group(
    path: str | os.PathLike,
    labels: da.Array,
    attrs: Mapping,
    storage_options: StorageOptions = None,
) -> None:
    """A group holding only ``labels`` (``dkmeans predict``'s output), marked complete last."""
    group = storage.open_group(path, "w", storage_options)
    write_labels(group, "labels", labels)
    group.attrs.update(jsonable({**attrs, COMPLETE_ATTR: True}))


def read_result(
    source: str | os.PathLike | zarr.Group, storage_options: StorageOptions = None
) -> Result:
    """Read a result group (a path/URL or an open group) written by :func:`write_result`.

    Raises
    ------
    ValueError
        If the group is not marked complete (a failed or interrupted run).
    """
    if isinstance(source, zarr.Group):
        group, path = source, str(source.store_path)
    else:
        path = os.fspath(source)
        try:
            group = storage.open_group(path, "r", storage_options)
        except FileNotFoundError as err:
            raise InputNotFoundError(f"no dkmeans result group at {path!r}") from err
    attrs = dict(group.attrs)
    if not attrs.get(COMPLETE_ATTR, False):
        raise ValueError(
            f"{path!r} is not a complete dkmeans result (the run that wrote it did not finish)"
        )
    return Result(
        centers=group["centers"][:],
        labels=da.from_zarr(group["labels"]),
        history=_read_history(group["history"]),
        inertia=attrs["inertia"],
        n_iter=attrs["n_iter"],
        converged=attrs["converged"],
        stop_reason=attrs["stop_reason"],
        n_features_in=attrs["n_features_in"],
        params=attrs["params"],
        attrs=attrs,
        rows=_read_rows(group, attrs),
    )


def _read_rows(group: zarr.Group, attrs: dict) -> Any:
    """The recorded rows of an xarray input, if xarray is installed to give them back."""
    recorded = attrs.get(ROWS_ATTR)
    if recorded is None:
        return None
    try:
        import xarray as xr
    except ImportError:
        return None
    from dkmeans.inputs import Rows

    dim = recorded["row_dim"]
    coordinate = None
    if recorded["row_coordinate"] and ROW_COORDINATE in group:
        coordinate = xr.DataArray(group[ROW_COORDINATE][:], dims=(dim,))
    return Rows(dim, coordinate, tuple(recorded["dims"]))


def _read_history(hist: zarr.Group) -> list[dict]:
    names = HISTORY_COLUMNS + (BOUNDED_COLUMNS if "full_pass" in hist else ())
    columns = {key: hist[key][:] for key in names}
    history = []
    for i in range(len(columns["objective"])):
        record = {"iteration": i + 1, **{key: float(columns[key][i]) for key in names}}
        for key in _INTEGER_COLUMNS:
            if key in record:
                record[key] = int(record[key])
        if "full_pass" in record:
            record["pass"] = "full" if record.pop("full_pass") else "active"
        history.append(record)
    return history


def read_attrs(path: str | os.PathLike, storage_options: StorageOptions = None) -> dict[str, Any]:
    """The attributes of the group at ``path`` (an error naming it if there is none)."""
    try:
        return dict(storage.open_group(path, "r", storage_options).attrs)
    except FileNotFoundError as err:
        raise InputNotFoundError(f"no dkmeans result group at {os.fspath(path)!r}") from err


def describe(path: str | os.PathLike, storage_options: StorageOptions = None) -> dict[str, Any]:
    """What ``dkmeans info`` shows: a result group, or the saved progress of an unfinished fit.

    A sweep's group (:func:`dkmeans.sweep`) shows its attributes, the table among them.

    Raises
    ------
    ValueError
        If ``path`` holds neither.
    """
    found = status(path, storage_options)
    if found == "complete" and "sweep" in read_attrs(path, storage_options):  # a sweep's group
        return {"status": "complete", **read_attrs(path, storage_options), "history": []}
    if found == "complete":
        result = read_result(path, storage_options)
        return {"status": "complete", **result.attrs, "history": result.history}
    if found == "checkpoint":
        group = storage.open_group(path, "r", storage_options)
        state = dict(group[UNFINISHED].attrs.get("state", {}))
        progress = {"n_iter": state.get("n_iter", 0), "history": state.get("history", [])}
        return {"status": "unfinished", **dict(group.attrs), **progress}
    raise ValueError(f"GROUP {os.fspath(path)!r}: not a dkmeans result group ({found})")


def remove(path: str | os.PathLike, storage_options: StorageOptions = None) -> None:
    """Delete whatever is at a path or fsspec URL, if anything."""
    fs, root = storage.filesystem(path, storage_options)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays made plain JSON types (for Zarr attributes)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)
