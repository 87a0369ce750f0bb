"""The dkmeans command: job files, fit/predict/info/make-blobs, kill and resume, a real cluster."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from dkmeans import KMeans, jobs, load, results
from dkmeans.cli import main
from dkmeans.datasets import make_blobs_zarr
from tests.bad_inputs import BAD_ZARR_INPUTS, write_bad_input
from tests.cluster import real_dask_cluster

CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "x.zarr"
    make_blobs_zarr(
        path, n_samples=40_000, n_features=6, n_centers=5, chunk_rows=5_000, cluster_std=4.0
    )
    return str(path)


def write_job(tmp_path, data_path, **sections):
    """A job file: the given sections on top of a small default job."""
    job = {
        "input": {"path": data_path},
        "output": {"path": str(tmp_path / "out.zarr")},
        "model": {"n_clusters": 5, "init": "random", "n_init": 1, "tol": 0, "random_state": 1},
    }
    for name, body in sections.items():
        job[name] = {**job.get(name, {}), **body}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def api_fit(data_path, **params):
    defaults = {"n_clusters": 5, "init": "random", "n_init": 1, "tol": 0, "random_state": 1}
    return KMeans(**(defaults | params)).fit(data_path)


def assert_same(a, b):
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)  # bitwise
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    assert [r["objective"] for r in a.history_] == [r["objective"] for r in b.history_]
    np.testing.assert_array_equal(a.labels_.compute(), b.labels_.compute())


# -- job files -----------------------------------------------------------------


@pytest.mark.parametrize("example", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_example_job_files_are_valid(example, data_path, tmp_path):
    """Every example validates (its paths pointed at real data), and uses known keys only."""
    job = jobs.load_job(
        example, {"input.path": data_path, "output.path": str(tmp_path / "o.zarr")}
    )
    raw = yaml.safe_load(example.read_text())
    assert {f"{s}.{k}" for s, body in raw.items() for k in body} <= set(jobs.FIELDS)
    assert job["model.n_clusters"] == raw["model"]["n_clusters"]


def test_every_job_key_is_documented():
    readme = (CONFIG / "README.md").read_text()
    missing = [key for key in jobs.FIELDS if f"`{key}`" not in readme]
    assert not missing, f"keys not documented in config/README.md: {missing}"


BAD_JOBS = [
    (
        {"model": {"n_cluster": 5}},
        "unknown key 'model.n_cluster' (did you mean 'model.n_clusters'?)",
    ),
    ({"modle": {"n_clusters": 5}}, "unknown section 'modle' (did you mean 'model'?)"),
    ({"model": {"n_clusters": "five"}}, "model.n_clusters must be an integer, got 'five'"),
    ({"model": {"max_iter": 0}}, "model.max_iter must be an integer >= 1, got 0"),
    ({"model": {"tol": -1}}, "model.tol must be a real number >= 0"),
    ({"model": {"n_clusters": 10**6}}, "n_clusters=1000000 is larger than the number of samples"),
    (
        {"input": {"path": "/nonexistent/x.zarr"}},
        "input.path: no Zarr array at '/nonexistent/x.zarr'",
    ),
    ({"input": {"sample_weight": "/nonexistent/w.zarr"}}, "input.sample_weight: no Zarr array"),
    ({"dask": {"scheduler": "thread"}}, "dask.scheduler must be one of threads"),
    ({"dask": {"memory_limit": "lots"}}, "dask.memory_limit must be a size"),
    ({"output": {"overwrite": "yes please"}}, "output.overwrite must be bool"),
]


@pytest.mark.parametrize(("sections", "message"), BAD_JOBS, ids=[m for _, m in BAD_JOBS])
def test_bad_job_file_is_one_clear_line_and_nothing_is_written(
    data_path, tmp_path, capsys, sections, message
):
    job = write_job(tmp_path, data_path, **sections)
    assert main(["fit", job]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and job in err and message in err, err
    assert not (tmp_path / "out.zarr").exists()


def test_missing_required_key_and_bad_yaml(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("model: {n_clusters: 3}\n")
    assert main(["fit", str(job)]) == 2
    assert "missing required key 'input.path'" in capsys.readouterr().err
    job.write_text("model: [unclosed\n")
    assert main(["fit", str(job)]) == 2
    assert f"{job}: not valid YAML" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "nope.yaml")]) == 2
    assert "job file not found" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The data type")  # zarr: no v3 spec for fixed strings
@pytest.mark.parametrize("name", sorted(BAD_ZARR_INPUTS))
def test_bad_input_array_is_one_line_exit_2_and_nothing_written(tmp_path, capfd, name):
    """Wrong rank or dtype, empty, too few rows, NaN, not Zarr at all.

    Two cases run as a real command (a new process: exit status, stderr), the
    others through the same ``main`` in this process, which is quicker.
    """
    path, n_clusters, message = write_bad_input(tmp_path, name)
    job = write_job(tmp_path, path, model={"n_clusters": n_clusters})
    if name in ("nan.zarr", "cube.zarr"):
        command = [sys.executable, "-m", "dkmeans.cli", "fit", job]
        status = subprocess.run(command, check=False).returncode
    else:
        status = main(["fit", job])
    err = capfd.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    if name != "nan.zarr":  # found when the job is read, before any work
        assert "input.path" in err and job in err, err
    if name == "too-few-rows.zarr":
        assert "model.n_clusters" in err
    assert not (tmp_path / "out.zarr").exists()


# -- fit, info, predict, make-blobs ------------------------------------------------


def test_cli_fit_equals_the_api_and_prints_one_line_per_iteration(data_path, tmp_path, capsys):
    job = write_job(tmp_path, data_path)
    assert main(["fit", job]) == 0
    out = capsys.readouterr().out
    fitted = load(tmp_path / "out.zarr")
    assert_same(fitted, api_fit(data_path))
    iteration_lines = [line for line in out.splitlines() if line.startswith("iter ")]
    assert len(iteration_lines) == fitted.n_iter_
    assert re.search(r"result: .*out.zarr \(\d+ iterations, fixed point", out)


def test_a_warning_is_a_log_line_and_the_fit_ends(tmp_path, capsys):
    """Float64 multiples of 0.1, 16 distinct rows, k=20: the fit reaches a fixed point (it
    ran to max_iter before) and says why it has 16 clusters on stdout, in one line."""
    X = np.random.default_rng(0).integers(0, 4, (8_000, 2)) * 0.1
    zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(2_000, 2), dtype="f8")[:] = X
    job = write_job(tmp_path, str(tmp_path / "x.zarr"), model={"n_clusters": 20})
    assert main(["fit", job, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "ConvergenceWarning: Number of distinct clusters (16) found smaller than n_clusters "
        "(20). Possibly due to duplicate points in X."
    ]
    assert err == ""
    assert load(tmp_path / "out.zarr").stop_reason_ == "fixed point"


def test_cli_fit_with_restarts_reports_each_run_and_keeps_the_best(data_path, tmp_path, capsys):
    job = write_job(tmp_path, data_path, model={"n_init": 3, "random_state": 7})
    assert main(["fit", job]) == 0
    out = capsys.readouterr().out
    fitted = load(tmp_path / "out.zarr")
    assert_same(fitted, api_fit(data_path, n_init=3, random_state=7))
    best = int(re.search(r"\(run (\d) of 3\)", out).group(1))
    lines = {
        run: [line for line in out.splitlines() if line.startswith(f"run {run:2d}  iter ")]
        for run in range(3)
    }
    assert all(lines.values())
    assert len(lines[best]) == fitted.n_iter_


def test_flags_override_the_job_file(data_path, tmp_path, capsys):
    job = write_job(tmp_path, data_path)
    other = tmp_path / "other.zarr"
    code = main(
        ["fit", job, "--n-clusters", "3", "--output", str(other), "--set", "model.max_iter=2"]
    )
    assert code == 0
    fitted = load(other)
    assert fitted.n_clusters == 3 and fitted.n_iter_ == 2 and fitted.stop_reason_ == "max_iter"
    assert not (tmp_path / "out.zarr").exists()
    assert main(["fit", job, "--set", "model.n_clusters"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_existing_output_is_not_clobbered(data_path, tmp_path, capsys):
    job = write_job(tmp_path, data_path)
    assert main(["fit", job, "-q"]) == 0
    assert capsys.readouterr().out == ""  # --quiet
    assert main(["fit", job]) == 2
    assert "already holds a complete result" in capsys.readouterr().err
    assert main(["fit", job, "--resume"]) == 0  # done already: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    assert main(["fit", job, "--set", "output.overwrite=true", "-q"]) == 0


def test_info_text_and_json(data_path, tmp_path, capsys):
    job = write_job(tmp_path, data_path)
    main(["fit", job, "-q"])
    group = str(tmp_path / "out.zarr")
    assert main(["info", group]) == 0
    text = capsys.readouterr().out
    fitted = load(group)
    assert f"iterations: {fitted.n_iter_}  stop reason: fixed point" in text
    assert text.count("  iter ") == fitted.n_iter_ and "versions: dkmeans" in text
    assert main(["info", group, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "complete" and info["params"]["n_clusters"] == 5
    assert [r["objective"] for r in info["history"]] == [r["objective"] for r in fitted.history_]
    assert info["input"]["path"] == data_path and "zarr" in info["versions"]
    assert main(["info", str(tmp_path)]) == 2


def test_predict_writes_labels_like_the_model(data_path, tmp_path, capsys):
    job = write_job(tmp_path, data_path)
    main(["fit", job, "-q"])
    labels_path = str(tmp_path / "labels.zarr")
    assert main(["predict", str(tmp_path / "out.zarr"), data_path, labels_path]) == 0
    written = zarr.open_group(labels_path, mode="r")
    assert written.attrs["dkmeans_complete"] is True
    assert written["labels"].chunks == (5_000,)
    model = load(tmp_path / "out.zarr")
    np.testing.assert_array_equal(written["labels"][:], model.labels_.compute())
    assert main(["predict", str(tmp_path / "out.zarr"), data_path, labels_path]) == 2
    assert "exists; give --overwrite" in capsys.readouterr().err


def test_make_blobs_compressors_store_the_same_data(tmp_path):
    arrays = {}
    for compressor in ("none", "zstd", "gzip", "blosc"):
        path = str(tmp_path / f"{compressor}.zarr")
        args = ["make-blobs", path, "--n-samples", "1000", "--n-features", "3"]
        args += ["--n-centers", "4", "--chunk-rows", "300", "--compressor", compressor, "-q"]
        assert main(args) == 0
        arrays[compressor] = zarr.open_array(path, mode="r")
    assert arrays["none"].compressors == () and arrays["zstd"].compressors != ()
    assert arrays["none"].chunks == (300, 3) and arrays["none"].dtype == np.float32
    for array in arrays.values():
        np.testing.assert_array_equal(array[:], arrays["none"][:])


# -- processes: SIGKILL and resume; a real `dask scheduler` + `dask worker` cluster --------


def run_cli(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "dkmeans.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def saved_iterations(path) -> int:
    try:
        group = zarr.open_group(str(path), mode="r")
        return group[results.UNFINISHED].attrs["state"]["n_iter"]
    except (FileNotFoundError, KeyError):
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["lloyd", "bounded"])
def test_sigkill_then_resume_ends_bitwise_equal(tmp_path, algorithm):
    """Plain Lloyd saves every iteration: killed after the fourth. A bounded fit saves
    before its full passes only (with this data in its memory budget: at the start), so
    it is killed after its third iteration and repeats them from its last save."""
    data = str(tmp_path / "big.zarr")
    make_blobs_zarr(
        data, n_samples=1_000_000, n_features=8, n_centers=12, chunk_rows=100_000, cluster_std=6
    )
    model = {"n_clusters": 12, "max_iter": 25, "random_state": 5, "algorithm": algorithm}
    job = write_job(tmp_path, data, model=model)
    out = tmp_path / "out.zarr"
    proc = run_cli("fit", job)
    deadline = time.monotonic() + 120
    enough = 4 if algorithm == "lloyd" else 0
    while saved_iterations(out) < enough and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    if algorithm == "bounded":
        # Into the iterations, which save nothing until the fit ends: after the third's
        # line (a fixed sleep let a fast fit finish all 25 first).
        for line in proc.stdout:
            if line.startswith("iter ") and int(line.split()[1]) >= 3:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    killed_at = saved_iterations(out)
    assert enough <= killed_at < 25
    assert results.status(out) == "checkpoint"  # never looks complete

    resumed = run_cli("fit", job, "--resume")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert "continuing the unfinished fit" in log
    # The resumed process reports only the iterations it ran.
    assert sum(line.startswith("iter ") for line in log.splitlines()) == 25 - killed_at
    fitted = load(out)
    reference = api_fit(data, n_clusters=12, max_iter=25, random_state=5, algorithm=algorithm)
    assert_same(fitted, reference)


@pytest.fixture
def dask_cluster(tmp_path):
    with real_dask_cluster(tmp_path, n_workers=2, memory_limit="1GiB") as client:
        yield client


@pytest.mark.slow
@pytest.mark.distributed
def test_fit_on_a_real_dask_cluster_equals_the_local_fit(data_path, tmp_path, dask_cluster):
    address = dask_cluster.scheduler.address
    # 12 iterations (+ the final assignment): a pass on a cluster costs ~0.2 s of latency.
    job = write_job(tmp_path, data_path, model={"max_iter": 12})
    proc = run_cli("fit", job, "--scheduler", address, "--progress")
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    assert f"Dask client: {address}" in log
    workers = dask_cluster.scheduler_info()["workers"].values()
    assert sorted(w["name"] for w in workers) == ["w1", "w2"]
    assert all(w["memory_limit"] == 2**30 for w in workers)
    fitted = load(tmp_path / "out.zarr")
    assert fitted.n_iter_ == 12
    assert_same(fitted, api_fit(data_path, max_iter=12))


def test_output_closed_early_is_not_an_error(data_path, tmp_path):
    """`dkmeans info GROUP | head -1`: the reader leaving is no failure and no traceback."""
    job = write_job(tmp_path, data_path)
    assert main(["fit", job, "-q"]) == 0
    proc = subprocess.run(
        f"{sys.executable} -m dkmeans.cli info {tmp_path / 'out.zarr'} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.strip().endswith("out.zarr: complete")
    assert "Traceback" not in proc.stderr


# -- sweep ---------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def test_cli_sweep_equals_the_api_resumes_plots_and_shows_in_info(
    data_path, tmp_path, capsys, monkeypatch
):
    from dkmeans import checkpoint, sweep

    pytest.importorskip("matplotlib")
    # Plain Lloyd saves every iteration (test_sweep.py resumes bounded sweeps).
    job = write_job(
        tmp_path,
        data_path,
        model={"algorithm": "lloyd", "max_iter": 15},
        sweep={"n_clusters": [2, 3, 5]},
    )
    params = dict(init="random", n_init=1, tol=0, random_state=1, algorithm="lloyd", max_iter=15)
    reference = sweep(data_path, [2, 3, 5], **params)
    original, calls = checkpoint.Checkpoint.save, []

    def save(self, states):
        calls.append(1)
        if len(calls) == 4:  # a few iterations saved
            raise Interrupted
        original(self, states)

    monkeypatch.setattr(checkpoint.Checkpoint, "save", save)
    with pytest.raises(Interrupted):
        main(["sweep", job, "-q"])
    monkeypatch.setattr(checkpoint.Checkpoint, "save", original)
    assert main(["info", str(tmp_path / "out.zarr")]) == 0
    assert "unfinished" in capsys.readouterr().out
    plot = tmp_path / "k.png"
    assert main(["sweep", job, "--resume", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "continuing the unfinished sweep" in out and plot.stat().st_size > 10_000
    assert re.search(r"^ *2 +[\d.e+]+ +\d+ +fixed point", out, re.MULTILINE)
    assert "run k=3  iter " in out  # the iterations, each run named by its k
    found = dkmeans_load_sweep(tmp_path / "out.zarr")
    for name, column in reference.table.items():
        np.testing.assert_array_equal(found.table[name], column)
    for k in (2, 3, 5):
        assert_same(load(tmp_path / "out.zarr" / f"k-{k}"), reference.models[k])
    assert main(["info", str(tmp_path / "out.zarr")]) == 0
    text = capsys.readouterr().out
    assert "sweep over k: 2, 3, 5" in text and "simp. silhouette" in text
    # --k replaces the job file's values (a range, not YAML: 2:3 would be the number 123).
    other = str(tmp_path / "other.zarr")
    assert main(["sweep", job, "--k", "2:3", "--output", other, "-q"]) == 0
    assert dkmeans_load_sweep(other).table["n_clusters"].tolist() == [2, 3]


def dkmeans_load_sweep(path):
    from dkmeans import load_sweep

    return load_sweep(path)


@pytest.mark.parametrize(
    ("sweep_section", "flags", "message"),
    [
        ({}, [], "a sweep needs the values of k"),
        ({"n_clusters": 152}, [], "quote a range in YAML"),
        ({"n_clusters": "3:2"}, [], "sweep.n_clusters must be a list of integers"),
        ({"n_clusters": [2, 0]}, [], "sweep.n_clusters must be a list of integers"),
        ({}, ["--k", "2:50000"], "sweep.n_clusters: n_clusters=40001 is larger"),
    ],
)
def test_bad_sweep_jobs_are_one_line_exit_2(
    data_path, tmp_path, capsys, sweep_section, flags, message
):
    job = write_job(tmp_path, data_path, sweep=sweep_section)
    assert main(["sweep", job, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.zarr").exists()


def test_sweep_plot_without_matplotlib_is_one_line_before_any_work(
    data_path, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    job = write_job(tmp_path, data_path, sweep={"n_clusters": [2, 3]})
    assert main(["sweep", job, "--plot", str(tmp_path / "k.png")]) == 2
    err = capsys.readouterr().err
    assert "--plot: plotting a sweep needs matplotlib: pip install 'dkmeans[plot]'" in err
    assert not (tmp_path / "out.zarr").exists()


def test_a_scheduler_whose_package_is_missing_is_one_line(data_path, tmp_path, capsys):
    """dask-kubernetes (and dask-jobqueue) are not dependencies: a clear line, nothing left."""
    for scheduler, package in (("kubernetes", "dask-kubernetes"), ("slurm", "dask-jobqueue")):
        try:
            __import__(package.replace("-", "_"))
            continue  # installed here: nothing to check
        except ImportError:
            pass
        job = write_job(tmp_path, data_path, dask={"scheduler": scheduler})
        assert main(["fit", job]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"needs {package} (pip install {package})"), err
        assert not (tmp_path / "out.zarr").exists()
