"""Bitwise the same fit on every CPU and BLAS build: labels, centers, inertia, history.

Each variant runs tests/determinism_driver.py in a fresh process whose
environment changes what the hardware-dependent layers do:

- OPENBLAS_CORETYPE picks another of OpenBLAS's kernels (different blocking,
  vector widths and FMA use in the GEMM; the names this machine's OpenBLAS
  0.3.31 accepts map to the kernels Katmai, Nehalem, Sandybridge, Haswell and
  SkylakeX, its default here);
- NUMBA_CPU_NAME=generic compiles the kernels for a generic x86-64 (no AVX,
  no FMA) instead of this CPU;
- NPY_DISABLE_CPU_FEATURES turns off NumPy's AVX2/AVX-512 loops;
- DKMEANS_FUSED=0 turns off the compiled AVX-512 labelling (dkmeans/fused.py),
  as on a CPU without AVX-512.

Float32 and float64, in-memory and Zarr input, tie-heavy (pixels k/255) and
generic data, the three initialisations, weights, restarts, both metrics:
every digest equals the default run's.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).resolve().parent / "determinism_driver.py"
NUMPY_BASELINE = {"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"}
VARIANTS = {
    "OpenBLAS Haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "OpenBLAS Sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge"},
    "OpenBLAS Nehalem": {"OPENBLAS_CORETYPE": "Nehalem"},
    "an old CPU: OpenBLAS Prescott, numba generic, NumPy baseline, no compiled kernel": {
        "OPENBLAS_CORETYPE": "Prescott",
        "NUMBA_CPU_NAME": "generic",
        "DKMEANS_FUSED": "0",
        **NUMPY_BASELINE,
    },
}


def run_driver(workdir: Path, env: dict[str, str]) -> dict:
    environment = {**os.environ, **env}
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(workdir)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("determinism")
    return workdir, run_driver(workdir, {})


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fits_are_bitwise_equal_under_other_blas_kernels_and_cpus(default_run, variant):
    workdir, expected = default_run
    found = run_driver(workdir, VARIANTS[variant])
    assert found == expected
