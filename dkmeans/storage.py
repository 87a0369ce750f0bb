"""Zarr groups and arrays at a local path or an fsspec URL, with the filesystem's options.

Every place that opens a path a user gave (the data, a checkpoint or result
group, a label store) goes through here, so that ``storage_options`` (e.g.
``{"endpoint_url": ..., "key": ..., "secret": ...}`` for S3) reach the
filesystem wherever a URL is accepted. Without them, fsspec's filesystems
read their usual configuration (for S3, the ``AWS_*`` environment variables
and files). Options are passed for URLs only: a local path needs none.
"""

from __future__ import annotations

import os
from typing import Any

import zarr

StorageOptions = dict[str, Any] | None


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an fsspec URL (``protocol://...``) rather than a local path."""
    return "://" in os.fspath(path)


def _options(path: str | os.PathLike, storage_options: StorageOptions) -> dict[str, Any]:
    return {"storage_options": storage_options} if storage_options and is_url(path) else {}


def _naming(path: str | os.PathLike, err: OSError) -> OSError:
    """The same error, its message naming the path (S3's say only "Access Denied")."""
    named = type(err)(f"{os.fspath(path)}: {err}")
    named.__cause__ = err
    return named


def open_group(
    path: str | os.PathLike, mode: str, storage_options: StorageOptions = None
) -> zarr.Group:
    """``zarr.open_group`` of a path or URL; errors name it."""
    try:
        return zarr.open_group(store=os.fspath(path), mode=mode, **_options(path, storage_options))
    except OSError as err:
        raise _naming(path, err) from err


def open_node(path: str | os.PathLike, storage_options: StorageOptions = None):
    """The Zarr array or group at a path or URL, read-only (``zarr.open``)."""
    return zarr.open(store=os.fspath(path), mode="r", **_options(path, storage_options))


def create_array(
    path: str | os.PathLike, storage_options: StorageOptions = None, **spec: Any
) -> zarr.Array:
    """``zarr.create_array`` at a path or URL; errors name it."""
    try:
        return zarr.create_array(store=os.fspath(path), **_options(path, storage_options), **spec)
    except OSError as err:
        raise _naming(path, err) from err


def filesystem(path: str | os.PathLike, storage_options: StorageOptions = None) -> tuple:
    """(fsspec filesystem, path within it) of a path or URL."""
    from fsspec.core import url_to_fs  # a dependency of dask

    options = storage_options if storage_options and is_url(path) else {}
    return url_to_fs(os.fspath(path), **options)
