"""Synthetic data written to Zarr block by block, so it may exceed memory."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr
from zarr import codecs

# Compressor names accepted by make_blobs_zarr (and ``dkmeans make-blobs``).
COMPRESSORS = {
    "default": "auto",  # Zarr's default (zstd for v3 arrays)
    "none": None,
    "zstd": codecs.ZstdCodec(),
    "blosc": codecs.BloscCodec(),
    "gzip": codecs.GzipCodec(),
}


def make_blobs_zarr(
    path: str | os.PathLike,
    *,
    n_samples: int,
    n_features: int,
    n_centers: int,
    chunk_rows: int = 250_000,
    dtype: str = "float32",
    cluster_std: float = 1.0,
    center_box: float = 10.0,
    seed: int = 0,
    compressor: str = "default",
) -> zarr.Array:
    """Write Gaussian blobs to a Zarr array, one row chunk at a time.

    Block ``i`` is drawn from its own generator, seeded by ``(seed, i)``, so
    the data do not depend on how many blocks were written before and only
    one block is ever in memory. The true centers are in
    ``attrs["centers"]``.

    Parameters
    ----------
    path : str or os.PathLike
        Where to create the array (replaced if present).
    n_samples, n_features, n_centers : int
        Rows, columns, number of blobs.
    chunk_rows : int
        Rows per Zarr chunk (and per block written).
    dtype : str
        "float32" or "float64".
    cluster_std : float
        Standard deviation of each blob.
    center_box : float
        Blob centers are uniform in [-center_box, center_box].
    seed : int
        Seed of the centers and every block.
    compressor : {"default", "none", "zstd", "blosc", "gzip"}
        How chunks are compressed ("default": Zarr's default).

    Returns
    -------
    zarr.Array
    """
    if compressor not in COMPRESSORS:
        raise ValueError(f"compressor must be one of {', '.join(COMPRESSORS)}, got {compressor!r}")
    centers = np.random.default_rng(seed).uniform(
        -center_box, center_box, size=(n_centers, n_features)
    )
    array = zarr.create_array(
        store=os.fspath(path),
        shape=(n_samples, n_features),
        chunks=(min(chunk_rows, n_samples), n_features),
        dtype=dtype,
        compressors=COMPRESSORS[compressor],
        overwrite=True,
    )

    def write_block(start: int) -> None:
        rows = min(chunk_rows, n_samples - start)
        rng = np.random.default_rng([seed, start // chunk_rows])
        which = rng.integers(n_centers, size=rows)
        block = centers[which] + rng.normal(scale=cluster_std, size=(rows, n_features))
        array[start : start + rows] = block.astype(dtype)

    # Blocks are independent (own seed, own chunks): draw and compress them on
    # every core, holding one block per thread.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(write_block, range(0, n_samples, chunk_rows)):
            pass
    array.attrs["centers"] = centers.tolist()
    return array


def make_directions(
    n_samples: int,
    n_features: int,
    n_centers: int,
    *,
    spread: float = 0.5,
    norm_sigma: float = 1.0,
    dtype: str = "float32",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embedding-like rows: directions around ``n_centers`` mean directions, lengths varying.

    Each row is its cluster's unit mean direction plus Gaussian noise of
    standard deviation ``spread / sqrt(n_features)`` per feature (so
    ``spread`` is the noise's typical length against the mean's 1: a
    von Mises-Fisher-like cloud on the sphere), times a log-normal length
    (``norm_sigma``): what clustering by cosine should see through.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
    labels : ndarray of shape (n_samples,), the true clusters
    directions : ndarray of shape (n_centers, n_features), float64 unit vectors
    """
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n_centers, n_features))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    labels = rng.integers(n_centers, size=n_samples)
    X = np.empty((n_samples, n_features), dtype=dtype)
    for start in range(0, n_samples, 1 << 18):  # in pieces: no float64 copy of all of X
        stop = min(n_samples, start + (1 << 18))
        noise = rng.normal(scale=spread / np.sqrt(n_features), size=(stop - start, n_features))
        lengths = rng.lognormal(sigma=norm_sigma, size=(stop - start, 1))
        X[start:stop] = (directions[labels[start:stop]] + noise) * lengths
    return X, labels, directions
