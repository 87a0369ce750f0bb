"""Object storage, for real: an S3 server (moto's, on 127.0.0.1) holds the data and results.

Fit from ``s3://``, checkpoint to ``s3://``, a ``dkmeans fit`` killed and resumed there,
``dkmeans info`` and ``predict`` on the result; credentials from the standard AWS_*
environment variables or from ``storage_options``; a missing bucket, wrong credentials and
a denied write are each one line, with nothing marked complete.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import boto3
import numpy as np
import pytest
import yaml
import zarr

from dkmeans import KMeans, load, results, storage
from dkmeans.cli import main

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
moto_settings = pytest.importorskip("moto.settings")

KEY, SECRET = "dkmeans-test", "dkmeans-test-secret"


@pytest.fixture(scope="module")
def endpoint():
    """A moto S3 server on a free local port, and the AWS_* variables pointing at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": url,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            patch.delenv(name, raising=False)
        boto3.client("s3").create_bucket(Bucket="data")
        yield url
    # Not stopped: a daemon thread, it serves until the process ends, so that temporary
    # state in s3://data/tmp is removed at exit (KMeans' scratch) without waiting on retries.


@pytest.fixture(scope="module")
def data(endpoint):
    """12,000 x 5 float32 blobs in s3://data/x.zarr, 3 chunks (and the array in memory)."""
    rng = np.random.default_rng(0)
    centers = rng.uniform(-10, 10, size=(6, 5))
    X = (centers[rng.integers(6, size=12_000)] + rng.normal(scale=3, size=(12_000, 5))).astype(
        np.float32
    )
    zarr.create_array("s3://data/x.zarr", shape=X.shape, chunks=(4_000, 5), dtype=X.dtype)[:] = X
    return "s3://data/x.zarr", X


def params(**changed):
    defaults = {"n_clusters": 6, "init": "random", "n_init": 2, "random_state": 2, "tol": 0}
    return defaults | {"max_iter": 8} | changed


def assert_same(a, b):
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)  # bitwise
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.labels_.compute(), b.labels_.compute())


def test_fit_checkpoint_save_load_from_s3_urls(data, endpoint, tmp_path):
    url, X = data
    local = str(tmp_path / "x.zarr")
    zarr.create_array(local, shape=X.shape, chunks=(4_000, 5), dtype=X.dtype)[:] = X
    reference = KMeans(**params()).fit(local)
    fitted = KMeans(**params()).fit(url, checkpoint="s3://data/fit.zarr")
    assert_same(fitted, reference)
    assert results.status("s3://data/fit.zarr") == "complete"
    assert_same(load("s3://data/fit.zarr"), reference)
    fitted.save("s3://data/saved.zarr")
    assert_same(load("s3://data/saved.zarr"), reference)
    np.testing.assert_array_equal(fitted.predict(url).compute(), reference.labels_.compute())
    # labels kept at a URL between passes, or in a scratch location every worker reaches
    store = KMeans(**params(), label_store="s3://data/labels.zarr").fit(url)
    assert_same(store, reference)
    scratch = KMeans(**params(), label_store="zarr", scratch="s3://data/tmp").fit(url)
    assert_same(scratch, reference)
    fs, _ = storage.filesystem("s3://data/tmp")
    assert [p.rsplit("/", 1)[1][:14] for p in fs.ls("data/tmp")] == ["dkmeans-state-"] * 2


def test_storage_options_instead_of_the_environment(data, endpoint, monkeypatch):
    url, _ = data
    reference = KMeans(**params()).fit(url)
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
    model = KMeans(**params())
    model.fit(url, checkpoint="s3://data/opts.zarr", storage_options=options)
    assert_same(model, reference)
    model.save("s3://data/opts-saved.zarr", storage_options=options)
    assert_same(load("s3://data/opts-saved.zarr", storage_options=options), reference)
    labels = model.predict(url, storage_options=options).compute()
    np.testing.assert_array_equal(labels, reference.labels_.compute())


def write_job(tmp_path, data_url, out_url, **model):
    job = {
        "input": {"path": data_url},
        "output": {"path": out_url},
        "model": params(**model),
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def saved_iterations(url) -> int:
    try:
        group = zarr.open_group(url, mode="r")
        return group[results.UNFINISHED].attrs["state"]["n_iter"]
    except (FileNotFoundError, KeyError):
        return -1


def run_cli(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "dkmeans.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_cli_killed_then_resumed_on_s3_then_info_and_predict(data, endpoint, tmp_path, capsys):
    url, _ = data
    out = "s3://data/job.zarr"
    job = write_job(tmp_path, url, out, max_iter=12, algorithm="lloyd")
    proc = run_cli("fit", job)
    deadline = time.monotonic() + 120
    while saved_iterations(out) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    killed_at = saved_iterations(out)
    assert 2 <= killed_at < 12
    assert results.status(out) == "checkpoint"  # never looks complete
    assert main(["info", out]) == 0
    assert "unfinished" in capsys.readouterr().out

    resumed = run_cli("fit", job, "--resume")
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log
    assert "continuing the unfinished fit" in log
    assert_same(load(out), KMeans(**params(max_iter=12, algorithm="lloyd")).fit(url))

    assert main(["info", out, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "complete" and info["input"]["path"] == url
    assert main(["predict", out, url, "s3://data/predicted.zarr"]) == 0
    written = zarr.open_group("s3://data/predicted.zarr", mode="r")
    np.testing.assert_array_equal(written["labels"][:], load(out).labels_.compute())


def test_job_file_storage_options(data, endpoint, tmp_path, monkeypatch):
    url, _ = data
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
    job = {
        "input": {"path": url, "storage_options": options},
        "output": {"path": "s3://data/job-opts.zarr", "storage_options": options},
        "model": params(max_iter=3),
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["fit", str(path), "-q"]) == 0
    fitted = load("s3://data/job-opts.zarr", storage_options=options)
    assert fitted.n_iter_ == 3
    assert results.read_attrs("s3://data/job-opts.zarr", options)["input"]["path"] == url
    flag = ["--storage-options", json.dumps(options)]
    assert main(["info", "s3://data/job-opts.zarr", *flag]) == 0
    assert main(["predict", "s3://data/job-opts.zarr", url, "s3://data/p2.zarr", *flag]) == 0


# -- errors: one line each, nothing marked complete -------------------------------------------


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_missing_bucket_is_one_line(data, tmp_path, capsys):
    url, _ = data
    job = write_job(tmp_path, "s3://no-such-bucket/x.zarr", "s3://data/missing.zarr")
    assert main(["fit", job]) == 2
    assert "input.path" in one_line_error(capsys)
    job = write_job(tmp_path, url, "s3://no-such-bucket/out.zarr", max_iter=3)
    assert main(["fit", job]) == 2
    assert "no-such-bucket" in one_line_error(capsys)
    assert results.status("s3://data/missing.zarr") == "absent"


@pytest.fixture
def credentials(endpoint):
    """A read-only user's keys, with the server checking every request's credentials."""
    iam = boto3.client("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(
        UserName="reader",
        PolicyName="read",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": ["s3:Get*", "s3:List*", "s3:Head*"],
                        "Resource": "*",
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    before = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on: IAM checks every request
    try:
        yield {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = before


def test_wrong_credentials_and_a_denied_write_are_one_line(data, tmp_path, credentials, capsys):
    url, _ = data
    wrong = {"key": "AKIAWRONGWRONGWRONG", "secret": "wrong"}
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "input": {"path": url, "storage_options": wrong},
                "output": {"path": str(tmp_path / "out.zarr")},
                "model": params(max_iter=3),
            }
        )
    )
    assert main(["fit", str(job)]) == 2
    assert "input.path" in one_line_error(capsys)
    job.write_text(
        yaml.safe_dump(
            {
                "input": {"path": url, "storage_options": credentials},
                "output": {"path": "s3://data/denied.zarr", "storage_options": credentials},
                "model": params(max_iter=3),
            }
        )
    )
    assert main(["fit", str(job)]) == 2
    assert "denied" in one_line_error(capsys).lower()
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
    assert results.status("s3://data/denied.zarr") == "absent"
    assert not os.path.exists(tmp_path / "out.zarr")
