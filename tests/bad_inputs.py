"""Bad Zarr inputs, each with the message its error must contain (API and CLI tests)."""

import numpy as np
import zarr

# name: (what to write at tmp_path / name, n_clusters to ask for, message)
BAD_ZARR_INPUTS = {
    "vector.zarr": ((10,), "f4", 2, r"Expected 2D array .* got 1-D"),
    "cube.zarr": ((4, 5, 2), "f4", 2, r"Expected 2D array .* got 3-D"),
    "strings.zarr": ((10, 2), "<U3", 2, r"must hold numbers, got dtype <U3"),
    "complex.zarr": ((10, 2), "c8", 2, r"Complex data not supported"),
    "empty.zarr": ((0, 3), "f4", 2, r"0 sample\(s\)"),
    "no-columns.zarr": ((5, 0), "f4", 2, r"0 feature\(s\)"),
    "too-few-rows.zarr": ((10, 3), "f4", 11, r"n_clusters=11 is larger than .* n_samples=10"),
    "nan.zarr": ((100, 3), "f8", 2, r"NaN or infinity: block 3 \(rows 75-99\), first at row 93"),
    "plain-directory": (None, None, 2, r"no Zarr metadata there"),
    "text-file.txt": (None, None, 2, r"it is a file; a Zarr array is a directory"),
    "missing.zarr": (None, None, 2, r"path does not exist"),
}


def write_bad_input(tmp_path, name: str) -> tuple[str, int, str]:
    """Create the bad input ``name`` under ``tmp_path``; (its path, n_clusters, message)."""
    shape, dtype, n_clusters, message = BAD_ZARR_INPUTS[name]
    path = tmp_path / name
    if shape is not None:
        array = zarr.create_array(path, shape=shape, chunks=(25, *shape[1:]), dtype=dtype)
        if name == "nan.zarr":
            values = np.random.default_rng(0).normal(size=shape)
            values[93, 1] = np.nan  # found by the first pass, in block 3
            array[:] = values
    elif name == "plain-directory":
        path.mkdir()
    elif name == "text-file.txt":
        path.write_text("not zarr\n")
    return str(path), n_clusters, message
