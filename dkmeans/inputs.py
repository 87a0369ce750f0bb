"""Opening the data: X and sample weights as validated dask arrays.

X may be a NumPy array (or anything ``np.asarray`` takes), a dask array, a
``zarr.Array``, or the path / fsspec URL of a Zarr array (v2 or v3). All
become a 2-D float32/float64 dask array whose columns are one chunk; rows
keep the chunking of the source (NumPy inputs are cut into blocks of
:func:`default_block_rows` rows, views of the caller's array, never copied).
Everything that can be checked without reading data is checked here, before
any work; what needs the data of a lazy input (NaN, negative weights) is
checked block by block by the first pass.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from dask.core import flatten

from dkmeans import kernel, storage, validation
from dkmeans.errors import ChunkReadError, InputNotFoundError

# Row blocks cut from in-memory inputs: big enough that Dask's per-task cost
# (a few hundred microseconds) stays small next to the kernel, and at least
# DEFAULT_MIN_BLOCKS of them so that small inputs still spread over the
# cores. The rule depends on the array only, not on the machine, so default
# results are the same everywhere.
DEFAULT_BLOCK_BYTES = 32 * 2**20
DEFAULT_BLOCK_MAX_ROWS = 2**20
DEFAULT_MIN_BLOCKS = 8


def default_block_rows(n_rows: int, row_bytes: int) -> int:
    """Rows per block for an in-memory input of ``n_rows`` rows of ``row_bytes`` each."""
    by_bytes = DEFAULT_BLOCK_BYTES // max(row_bytes, 1)
    by_count = -(-n_rows // DEFAULT_MIN_BLOCKS)
    return max(1, min(DEFAULT_BLOCK_MAX_ROWS, by_bytes, by_count))


class ZarrRowReader:
    """A Zarr array as a source for ``da.from_array`` whose read errors name the chunk.

    Zarr's own errors (a failed store read, a codec that cannot decode the
    bytes) say nothing of where they happened; this says which rows, which
    chunk and which array.
    """

    def __init__(self, array: zarr.Array, name: str = "X"):
        self.array = array
        self.name = name
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, index: tuple) -> np.ndarray:
        try:
            return self.array[index]
        except Exception as err:
            raise ChunkReadError(
                f"{self.name}: could not read {self._where(index[0])} of the Zarr array "
                f"{self.array.store_path}: {type(err).__name__}: {err}"
            ) from err

    def _where(self, rows: slice | np.ndarray) -> str:
        chunk_rows = self.array.chunks[0]
        n_chunks = -(-self.shape[0] // chunk_rows)
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(self.shape[0])
            first, last = start // chunk_rows, max(start, stop - 1) // chunk_rows
            span = f"chunk {first}" if first == last else f"chunks {first}-{last}"
            return f"rows {start}-{stop - 1} ({span} of {n_chunks})"
        chunks = np.unique(np.asarray(rows) // chunk_rows)
        return f"{len(rows)} rows in chunks {', '.join(map(str, chunks))} (of {n_chunks})"


def open_zarr_array(
    path: str | os.PathLike, name: str = "X", storage_options: dict | None = None
) -> zarr.Array:
    """Open an existing Zarr array read-only, with a clear error if it is not one.

    ``storage_options``: for an fsspec URL (:mod:`dkmeans.storage`).
    """
    path = os.fspath(path)
    try:
        node = storage.open_node(path, storage_options)
    except FileNotFoundError as err:
        if not os.path.exists(path):
            why = "path does not exist"
        elif os.path.isfile(path):
            why = "it is a file; a Zarr array is a directory, or a URL"
        else:
            why = "no Zarr metadata there"
        raise InputNotFoundError(f"{name}: no Zarr array at {path!r} ({why})") from err
    except PermissionError as err:  # credentials or rights
        raise PermissionError(f"{name}: access to {path!r} denied ({err})") from err
    except Exception as err:  # zarr raises several kinds for "not zarr here"
        raise InputNotFoundError(f"{name}: {path!r} is not a Zarr array ({err})") from err
    if isinstance(node, zarr.Group):
        members = sorted(name for name, _ in node.arrays())
        raise ValueError(
            f"{name}: {path!r} is a Zarr group, not an array; give the path of one of its "
            f"arrays, e.g. {path.rstrip('/')}/{members[0] if members else '<array>'}"
        )
    return node


def _is_sparse(X: Any) -> bool:
    return hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse")


def is_dask_frame(X: Any) -> bool:
    """A dask DataFrame (or Series): dask.dataframe is never imported for other inputs."""
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "to_dask_array")


def _frame_blocks(frame: Any, name: str) -> da.Array:
    """A dask DataFrame or Series as a dask array, a block per partition; a column of text is
    an error here (it would fail in a task later, naming nothing)."""
    dtypes = getattr(frame, "dtypes", None)
    if dtypes is not None and not hasattr(dtypes, "kind"):  # a frame's: one per column
        text = [str(column) for column, dtype in dtypes.items() if dtype.kind not in "biuf"]
        if text:
            raise TypeError(f"{name}: columns {text} are not numeric; k-means needs numbers")
    return frame.to_dask_array(lengths=True)


def feature_names(X: Any, name: str = "X") -> np.ndarray | None:
    """The column names of a pandas or dask DataFrame, scikit-learn's way (else None).

    All strings: they are the names (an object array). None a string (integer
    columns, say): no names. Some strings only: a TypeError, as scikit-learn's.
    """
    columns = getattr(X, "columns", None)
    if columns is None or is_xarray(X):
        return None
    names = list(columns)
    strings = [isinstance(column, str) for column in names]
    if names and all(strings):
        return np.asarray(names, dtype=object)
    if any(strings):
        kinds = sorted({type(column).__name__ for column in names})
        raise TypeError(
            f"{name}: feature names are only supported where every column name is a "
            f"string; its column names are of types {kinds}. Name every column with a "
            f"string (e.g. X.columns = X.columns.astype(str)), or none."
        )
    return None


def is_xarray(X: Any) -> bool:
    """Whether ``X`` is an xarray object (xarray is optional: never imported for others)."""
    return type(X).__module__.split(".")[0] == "xarray"


@dataclass(frozen=True)
class Rows:
    """The row dimension of an xarray input: its name and coordinate (or None)."""

    dim: str
    coordinate: Any  # an xarray coordinate (1-D) along ``dim``, or None
    dims: tuple[str, ...]  # all the input's dimensions, rows first

    def wrap(self, values: Any, other_dim: str | None = None) -> Any:
        """``values`` (NumPy or dask, rows first) as a DataArray along the input's rows."""
        import xarray as xr

        dims = (self.dim,) if other_dim is None else (self.dim, other_dim)
        coords = {} if self.coordinate is None else {self.dim: self.coordinate}
        return xr.DataArray(values, dims=dims, coords=coords)

    def describe(self) -> dict[str, Any]:
        """What a result group records of them (the coordinate's values are stored apart)."""
        return {"dims": list(self.dims), "row_dim": self.dim, "row_coordinate": self.has_values}

    @property
    def has_values(self) -> bool:
        """Whether the coordinate's values can be stored (numbers, booleans, datetimes)."""
        return self.coordinate is not None and self.coordinate.dtype.kind in "biufmM"


def xarray_rows(X: Any) -> Rows | None:
    """The :class:`Rows` of an xarray DataArray input, None for any other input."""
    if not is_xarray(X) or not hasattr(X, "dims") or isinstance(X.dims, Mapping):
        return None
    dim = str(X.dims[0])
    coordinate = X.coords[dim] if dim in X.coords else None
    return Rows(dim, coordinate, tuple(str(d) for d in X.dims))


def _xarray_data(X: Any, name: str) -> Any:
    """The NumPy or dask array inside an xarray DataArray (a Dataset: which variable?)."""
    if not hasattr(X, "data") or isinstance(getattr(X, "dims", None), Mapping):
        names = [str(variable) for variable in getattr(X, "data_vars", {})]
        example = names[0] if names else "name"
        raise TypeError(
            f"{name}: an xarray {type(X).__name__} holds several variables; pass one "
            f"DataArray, e.g. {name}=ds[{example!r}] (variables: "
            f"{', '.join(map(repr, names)) or 'none'})"
        )
    return X.data


def as_dask_array(
    X: Any, name: str = "X", metric: str = "euclidean", storage_options: dict | None = None
) -> da.Array:
    """Turn a supported input into a validated 2-D float dask array.

    Checks rank, emptiness and dtype before any data is read; NumPy inputs
    are also checked for NaN/inf here, lazy inputs in the first pass.

    Parameters
    ----------
    X : array-like, dask array, zarr.Array, xarray.DataArray, str or os.PathLike
        The data, shape (n_samples, n_features) (a DataArray: its first
        dimension is the rows, NumPy- or dask-backed; a pandas DataFrame is
        read into memory, a dask DataFrame stays lazy, a block per partition).
    name : str
        Name used in error messages.
    metric : {"euclidean", "cosine"}
        "cosine": the rows as unit vectors, scaled as each block is read
        (:func:`unit_rows`).
    storage_options : dict, optional
        For ``X`` an fsspec URL: the filesystem's options (:mod:`dkmeans.storage`).

    Returns
    -------
    dask.array.Array
        float32 (float32/float16 input) or float64 (everything else), with a
        single chunk along columns.
    """
    if is_xarray(X):
        X = _xarray_data(X, name)
    if isinstance(X, str | os.PathLike):
        X = open_zarr_array(X, name, storage_options)
    if is_dask_frame(X):  # lazily, a block per partition (their lengths are read once)
        X = _frame_blocks(X, name)
    if _is_sparse(X):
        raise TypeError(
            f"{name}: sparse input ({type(X).__name__}) is not supported; "
            "k-means here needs dense data"
        )
    if isinstance(X, zarr.Array):
        validation.check_shape(X.shape, name)
        dtype = validation.working_dtype(X.dtype, name)
        arr = da.from_array(
            ZarrRowReader(X, name),
            chunks=X.chunks,
            name=f"zarr-{tokenize(X)}",
            meta=np.empty((0,) * X.ndim, dtype=X.dtype),
        )
    elif isinstance(X, da.Array):
        validation.check_shape(X.shape, name)
        dtype = validation.working_dtype(X.dtype, name)
        arr = X
    else:
        if not hasattr(X, "__array__") and not isinstance(X, Sequence):
            raise TypeError(
                f"{name} must be a NumPy array, dask array, zarr.Array or Zarr path, "
                f"got {type(X).__name__}"
            )
        raw = np.asarray(X)
        validation.check_shape(raw.shape, name)
        dtype = validation.working_dtype(raw.dtype, name)
        try:
            raw = raw.astype(dtype, copy=False)
        except (TypeError, ValueError) as err:  # object arrays holding non-numbers
            raise TypeError(f"{name} could not be converted to {dtype}: {err}") from err
        validation.check_finite_block(raw, block=0, row_offset=0, name=name)
        n = len(raw)
        rows = default_block_rows(n, raw[0].nbytes)
        arr = _blocks_of(raw, tuple(min(rows, n - start) for start in range(0, n, rows)))
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    if arr.numblocks[1] != 1:
        arr = arr.rechunk({1: -1})
    return unit_rows(arr, name) if metric == "cosine" else arr


def unit_rows(X: da.Array, name: str = "X") -> da.Array:
    """X with every row scaled to unit length as its block is read (``metric="cosine"``).

    Nothing is stored: each task that reads a block scales its rows in memory
    (:func:`dkmeans.kernel.unit_rows`, the same bits on every CPU); X itself
    is never modified. A row of zeros has no direction: NumPy input is
    checked here, before any work; lazy input as its blocks are read, the
    error naming the block and row. Passes over NumPy input still run
    without a graph (:func:`in_memory_blocks`).
    """
    blocks = in_memory_blocks(X)
    if blocks is not None:
        start = 0
        for index, block in enumerate(blocks):
            _check_no_zero_row(kernel.first_zero_row(block), index, start, len(block), name)
            start += len(block)
    view = X.map_blocks(_unit_block, array_name=name, dtype=X.dtype, meta=X._meta)
    view._dkmeans_unit_rows_of = (X, name)  # see in_memory_blocks
    return view


def _check_no_zero_row(first_zero: int, index: int, start: int, n_rows: int, name: str) -> None:
    if first_zero >= 0:
        raise ValueError(
            f"{name} has a row of zeros, which has no direction (metric='cosine'): block "
            f"{index} (rows {start}-{start + n_rows - 1}), row {start + first_zero}"
        )


def _unit_block(x: np.ndarray, array_name: str, block_info=None) -> np.ndarray:
    """One block's rows as unit vectors; raises on a zero row (see :func:`unit_rows`)."""
    unit, zero = kernel.unit_rows(x)
    if zero.any():
        index, start = 0, 0
        if block_info is not None:
            where = block_info[0]
            index, start = where["chunk-location"][0], where["array-location"][0][0]
        _check_no_zero_row(int(np.argmax(zero)), index, start, len(x), array_name)
    return unit


class _UnitBlocks(Sequence):
    """The in-memory blocks of a :func:`unit_rows` view, each scaled when it is taken."""

    def __init__(self, blocks: list[np.ndarray], name: str):
        self.blocks, self.name = blocks, name
        self.starts = np.concatenate([[0], np.cumsum([len(b) for b in blocks])])

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index):
        where = {"chunk-location": (index, 0), "array-location": [(int(self.starts[index]),)]}
        return _unit_block(self.blocks[index], self.name, block_info={0: where})


def _blocks_of(array: np.ndarray, row_chunks: tuple[int, ...]) -> da.Array:
    """A dask array whose blocks are views of ``array``'s row slices.

    ``da.from_array`` copies NumPy input (guarding against later mutation),
    which would double the memory of a large in-memory X; views do not.
    """
    starts = np.concatenate([[0], np.cumsum(row_chunks)])
    return from_blocks([array[starts[i] : starts[i + 1]] for i in range(len(row_chunks))])


def from_blocks(blocks: Sequence[np.ndarray], name: str = "dkmeans-input") -> da.Array:
    """A dask array made of NumPy row blocks (no copy), the graph holding them as they are."""
    name = f"{name}-{uuid.uuid4().hex}"
    trailing = (0,) * (blocks[0].ndim - 1)
    graph = {(name, i, *trailing): block for i, block in enumerate(blocks)}
    chunks = (tuple(len(block) for block in blocks), *((size,) for size in blocks[0].shape[1:]))
    return da.Array(graph, name, chunks, meta=blocks[0][:0])


def in_memory_blocks(array: da.Array) -> list[np.ndarray] | None:
    """The row blocks of ``array`` if its graph holds them as NumPy arrays, else None.

    True of NumPy input (:func:`_blocks_of`) and of arrays persisted by a
    local scheduler: their blocks can be used without running a graph.
    """
    if array.ndim == 2 and array.numblocks[1] != 1:
        return None
    unit_rows_of = getattr(array, "_dkmeans_unit_rows_of", None)
    if unit_rows_of is not None:  # scaled by the task that takes each block
        blocks = in_memory_blocks(unit_rows_of[0])
        return None if blocks is None else _UnitBlocks(blocks, unit_rows_of[1])
    graph = array.__dask_graph__()
    blocks = []
    for key in flatten(array.__dask_keys__()):
        block = graph.get(key)
        if not isinstance(block, np.ndarray):
            return None
        blocks.append(block)
    return blocks


def as_weights(sample_weight: Any, X: da.Array) -> da.Array | None:
    """Validate sample weights and chunk them like the rows of X.

    In-memory weights are checked in full here; dask weights (a dask Series
    too, kept lazy) are checked block by block in the first pass.
    """
    if sample_weight is None:
        return None
    n = X.shape[0]
    if is_dask_frame(sample_weight):  # a dask Series (a column of X's frame, say): lazily
        sample_weight = _frame_blocks(sample_weight, "sample_weight")
    if isinstance(sample_weight, da.Array):
        w = sample_weight
    elif np.isscalar(sample_weight):
        w = np.full(n, sample_weight, dtype=np.float64)
    else:
        w = np.asarray(sample_weight)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(
            f"sample_weight must have shape ({n},), one weight per row of X, got shape {w.shape}"
        )
    if w.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight must hold real numbers, got dtype {w.dtype}")
    if isinstance(w, np.ndarray):
        w = w.astype(np.float64, copy=False)
        validation.check_weights_block(w, block=0, row_offset=0)
        if not (w > 0).any():
            raise ValueError("sample_weight is all zero: at least one weight must be positive")
        return _blocks_of(w, X.chunks[0])
    w = w.astype(np.float64)
    return w.rechunk((X.chunks[0],)) if w.chunks[0] != X.chunks[0] else w


def _location(array: zarr.Array) -> str:
    """Where a zarr.Array lives: its URL for an fsspec store, else zarr's own description."""
    fs = getattr(array.store, "fs", None)
    if fs is None:
        return str(array.store_path)
    base = fs.unstrip_protocol(array.store.path)
    return f"{base.rstrip('/')}/{array.path}" if array.path else base


def describe_input(source: Any, X: da.Array) -> dict[str, Any]:
    """A JSON-able description of the input of a fit, for its result group."""
    rows = xarray_rows(source)
    if rows is not None:
        kind, where = "xarray", None
    elif isinstance(source, str | os.PathLike):
        kind, where = "zarr", os.fspath(source)
    elif isinstance(source, zarr.Array):
        kind, where = "zarr", _location(source)
    elif isinstance(source, da.Array):
        kind, where = "dask", None
    else:
        kind, where = "numpy", None
    return {
        "kind": kind,
        "path": where,
        "shape": list(X.shape),
        "dtype": str(X.dtype),
        "row_chunk": int(X.chunks[0][0]),
        "n_blocks": int(X.numblocks[0]),
    } | ({} if rows is None else rows.describe())
