"""Batch jobs: the YAML job file, its validation, and the Dask scheduler it asks for.

A job file has four sections (every key is listed in :data:`FIELDS` and
documented in config/README.md)::

    input:  {path, sample_weight, storage_options}
    output: {path, overwrite, storage_options}
    model:  {n_clusters, init, n_init, max_iter, tol, algorithm, metric, random_state,
             split_every, scratch, init_sample_size, init_rounds, init_oversampling,
             retries}: KMeans' parameters, checked by the estimator's own table
             (dkmeans.validation.PARAMETERS)
    dask:   {scheduler, num_workers, n_workers, threads_per_worker, memory_limit,
             dashboard_address, slurm, slurm_jobs, kubernetes, kubernetes_workers}

:func:`load_job` reads and checks all of it before any work starts: an
unknown key, a wrong type or value, a missing input or an output that would
be clobbered is a :class:`JobError` naming the file and the key.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import yaml
import zarr

from dkmeans import inputs, results, validation
from dkmeans.errors import JobError

logger = logging.getLogger(__name__)

LOCAL_SCHEDULERS = ("threads", "synchronous", "processes")
SCHEDULERS = (*LOCAL_SCHEDULERS, "local-cluster", "slurm", "kubernetes")


@dataclass(frozen=True)
class Field:
    """One key of a job file: its default, the check of its value, and what it means."""

    default: Any
    check: Callable[[Any, str], Any]  # (value, key) -> value (normalised), or raises
    doc: str
    required: bool = False


def _typed(*kinds: type, allow_none: bool = False) -> Callable[[Any, str], Any]:
    names = " or ".join(k.__name__ for k in kinds) + (" or null" if allow_none else "")

    def check(value, key):
        if value is None and allow_none:
            return None
        is_bool = isinstance(value, bool)
        if (is_bool and bool not in kinds) or not isinstance(value, kinds):
            raise ValueError(f"{key} must be {names}, got {value!r} ({type(value).__name__})")
        return value

    return check


def _model(name: str) -> Callable[[Any, str], Any]:
    """The check of ``model.<name>``: the estimator's own (dkmeans.validation.PARAMETERS)."""
    check = validation.PARAMETERS[name].check

    def model_check(value, key):
        if name == "tol" and isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if name == "init":  # a method, or the path of a (k, d) Zarr array (see _check_data)
            if not isinstance(value, str):
                raise ValueError(
                    f"{key} must be one of {', '.join(validation.INIT_METHODS)} or the path of "
                    f"a (k, d) Zarr array, got {value!r}"
                )
            return value
        return check(value, key)

    return model_check


def k_values(value: Any, key: str) -> list[int]:
    """The values of k of a sweep: a list of integers, or 'FIRST:LAST[:STEP]' (inclusive)."""
    if isinstance(value, str) and ":" in value:
        try:
            first, last, *step = (int(part) for part in value.split(":"))
        except ValueError:
            first, last, step = 0, -1, [0]
        if len(step) <= 1 and 1 <= first <= last and (not step or step[0] >= 1):
            return list(range(first, last + 1, step[0] if step else 1))
    elif isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            f"{key} is the number {value}: quote a range in YAML ('2:32'; unquoted, YAML 1.1 "
            "reads 2:32 as a base-60 number) or give a list"
        )
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in value)
    ):
        return value
    raise ValueError(
        f"{key} must be a list of integers >= 1 or 'FIRST:LAST[:STEP]' such as '2:32', "
        f"got {value!r}"
    )


def _scheduler(value, key):
    if not isinstance(value, str) or not (value in SCHEDULERS or "://" in value):
        raise ValueError(
            f"{key} must be one of {', '.join(SCHEDULERS)} or a scheduler address such as "
            f"tcp://10.0.0.1:8786, got {value!r}"
        )
    return value


def _memory_limit(value, key):
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            dask.utils.parse_bytes(value)
        except ValueError as err:
            raise ValueError(
                f"{key} must be a size such as '2GiB' or '500MB', got {value!r}"
            ) from err
        return value
    raise ValueError(f"{key} must be a size such as '2GiB' (or bytes, or null), got {value!r}")


FIELDS: dict[str, Field] = {
    "input.path": Field(
        None, _typed(str), "Zarr array (n, d) to cluster: path or fsspec URL", required=True
    ),
    "input.sample_weight": Field(
        None, _typed(str, allow_none=True), "Zarr array (n,) of non-negative row weights"
    ),
    "input.storage_options": Field(
        None,
        _typed(dict, allow_none=True),
        "fsspec options for the input's URLs (e.g. endpoint_url, key, secret; default: the "
        "filesystem's own configuration, such as the AWS_* variables)",
    ),
    "output.path": Field(
        None, _typed(str), "Zarr group for checkpoints and the result", required=True
    ),
    "output.storage_options": Field(
        None, _typed(dict, allow_none=True), "fsspec options for output.path, as for the input"
    ),
    "output.overwrite": Field(
        False, _typed(bool), "replace a result or unfinished fit already at output.path"
    ),
    **{
        f"model.{name}": Field(default, _model(name), validation.PARAMETERS[name].doc)
        for name, default in validation.job_defaults().items()
    },
    "sweep.n_clusters": Field(
        None,
        lambda value, key: None if value is None else k_values(value, key),
        "`dkmeans sweep`: the values of k, a list or 'FIRST:LAST[:STEP]' (e.g. '2:32')",
    ),
    "dask.scheduler": Field("threads", _scheduler, "where the passes run"),
    "dask.num_workers": Field(
        None, validation.integer_check(1, allow_none=True), "threads/processes: pool size"
    ),
    "dask.n_workers": Field(2, validation.integer_check(1), "local-cluster: worker processes"),
    "dask.threads_per_worker": Field(
        1, validation.integer_check(1), "local-cluster: threads each"
    ),
    "dask.memory_limit": Field("auto", _memory_limit, "local-cluster: memory per worker"),
    "dask.dashboard_address": Field(
        ":0", _typed(str, allow_none=True), "local-cluster: dashboard (':0' any free port)"
    ),
    "dask.slurm": Field({}, _typed(dict), "slurm: keyword arguments of SLURMCluster"),
    "dask.slurm_jobs": Field(1, validation.integer_check(1), "slurm: jobs to start"),
    "dask.kubernetes": Field(
        {}, _typed(dict), "kubernetes: keyword arguments of dask_kubernetes' KubeCluster"
    ),
    "dask.kubernetes_workers": Field(
        2, validation.integer_check(1), "kubernetes: worker pods to start"
    ),
}

SECTIONS = sorted({key.split(".")[0] for key in FIELDS})


@dataclass(frozen=True)
class Job:
    """A validated job: ``values`` maps every key of :data:`FIELDS` to its value."""

    source: str  # the job file, for messages
    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def section(self, name: str) -> dict[str, Any]:
        """The keys of one section, without the section prefix."""
        return {
            key.split(".", 1)[1]: value
            for key, value in self.values.items()
            if key.startswith(name + ".")
        }


def _flatten(document: Any, source: str) -> dict[str, Any]:
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise JobError(f"{source}: a job file must be a mapping of sections, got {document!r}")
    flat = {}
    for section, body in document.items():
        if section not in SECTIONS:
            raise JobError(f"{source}: unknown section {section!r}{_suggest(section, SECTIONS)}")
        if not isinstance(body, dict):
            raise JobError(f"{source}: section {section!r} must be a mapping, got {body!r}")
        for key, value in body.items():
            flat[f"{section}.{key}"] = value
    return flat


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from the command line; the value is read as YAML (``8``, ``null``, ...)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise JobError(f"--set {text!r}: expected KEY=VALUE, e.g. model.n_clusters=16")
    return key.strip(), yaml.safe_load(value)


def load_job(
    path: str | os.PathLike, overrides: dict[str, Any] | None = None, *, resume: bool = False
) -> Job:
    """Read, complete and check a job file; nothing is started or written.

    Parameters
    ----------
    path : str or os.PathLike
        The YAML job file.
    overrides : dict, optional
        ``{"section.key": value}`` from command-line flags; they replace the
        file's values and are checked the same way.
    resume : bool
        The run continues an unfinished fit (so an unfinished fit at
        output.path is expected, not an error).

    Raises
    ------
    JobError
        For any problem, naming the file and the key.
    """
    source = os.fspath(path)
    try:
        with open(source) as file:
            document = yaml.safe_load(file)
    except FileNotFoundError as err:
        raise JobError(f"{source}: job file not found") from err
    except yaml.YAMLError as err:
        raise JobError(f"{source}: not valid YAML: {err}") from err
    given = _flatten(document, source)
    for key, value in (overrides or {}).items():
        given[key] = value
    values = {}
    for key, value in given.items():
        if key not in FIELDS:
            raise JobError(f"{source}: unknown key {key!r}{_suggest(key, FIELDS)}")
        try:
            values[key] = FIELDS[key].check(value, key)
        except (TypeError, ValueError) as err:
            raise JobError(f"{source}: {err}") from err
    for key, field in FIELDS.items():
        if key not in values:
            if field.required:
                raise JobError(f"{source}: missing required key {key!r} ({field.doc})")
            values[key] = field.default
    job = Job(source, values)
    _check_data(job)
    _check_output(job, resume)
    return job


def _check_data(job: Job) -> None:
    """Open the input (and weights, and init array) to check shapes and dtypes; read no data."""
    try:
        X = open_input(job, "input.path")
        n_samples, n_features = validation.check_shape(X.shape, "input.path")
        validation.working_dtype(X.dtype, "input.path")
        key = "model.n_clusters" if job["sweep.n_clusters"] is None else "sweep.n_clusters"
        try:
            for k in job["sweep.n_clusters"] or [job["model.n_clusters"]]:
                validation.check_n_clusters(k, n_samples)
        except ValueError as err:
            raise ValueError(f"{key}: {err} in input.path") from err
        if job["input.sample_weight"] is not None:
            w = open_input(job, "input.sample_weight")
            if w.shape != (n_samples,):
                raise ValueError(
                    f"input.sample_weight has shape {w.shape}; it needs one weight per row "
                    f"of input.path, shape ({n_samples},)"
                )
        if job["model.init"] not in validation.INIT_METHODS:
            init = open_input(job, "model.init")
            if init.shape != (job["model.n_clusters"], n_features):
                raise ValueError(
                    f"model.init array has shape {init.shape}, expected "
                    f"(n_clusters, n_features) = ({job['model.n_clusters']}, {n_features})"
                )
    except (ValueError, TypeError) as err:
        raise JobError(f"{job.source}: {err}") from err


def open_input(job: Job, key: str) -> zarr.Array:
    """The Zarr array a key of the job names (input.path, input.sample_weight, model.init)."""
    return inputs.open_zarr_array(job[key], name=key, storage_options=job["input.storage_options"])


def _check_output(job: Job, resume: bool) -> None:
    """Refuse to clobber what is at output.path unless asked to."""
    path = job["output.path"]
    found = results.status(path, job["output.storage_options"])
    if job["output.overwrite"] or found == "absent":
        return
    if found == "checkpoint" and not resume:
        raise JobError(
            f"{job.source}: output.path {path!r} holds an unfinished fit; run with --resume to "
            "continue it, or set output.overwrite: true to start again"
        )
    if found == "other":
        raise JobError(
            f"{job.source}: output.path {path!r} exists and is not a dkmeans result; choose "
            "another path or set output.overwrite: true to replace it"
        )
    if found == "complete" and not resume:
        raise JobError(
            f"{job.source}: output.path {path!r} already holds a complete result; set "
            "output.overwrite: true to replace it (or --resume to accept it as done)"
        )


def init_value(job: Job) -> str | np.ndarray:
    """``model.init`` as KMeans takes it (a path becomes the array it names)."""
    init = job["model.init"]
    if init in validation.INIT_METHODS:
        return init
    return np.asarray(open_input(job, "model.init")[:])


def dask_defaults(**given: Any) -> dict[str, Any]:
    """The ``dask`` section with its defaults, updated with ``given`` (checked)."""
    cfg = {key.split(".", 1)[1]: f.default for key, f in FIELDS.items() if key.startswith("dask.")}
    for key, value in given.items():
        try:
            cfg[key] = FIELDS[f"dask.{key}"].check(value, f"--{key.replace('_', '-')}")
        except ValueError as err:
            raise JobError(str(err)) from err
    return cfg


def _cluster_class(kind: str, module: str, name: str) -> Any:
    """A cluster class from a package that is not a dependency, or a JobError saying so."""
    package = module.split(".")[0].replace("_", "-")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise JobError(f"dask.scheduler {kind} needs {package} (pip install {package})") from err


@contextlib.contextmanager
def scheduler(cfg: dict[str, Any]) -> Iterator[Any]:
    """Run the body under the Dask scheduler ``cfg`` (a ``dask`` section) asks for.

    Yields the distributed Client, or None for the local schedulers.
    """
    kind = cfg["scheduler"]
    if kind in LOCAL_SCHEDULERS:
        with dask.config.set(scheduler=kind, num_workers=cfg["num_workers"]):
            yield None
        return
    from dask.distributed import Client, LocalCluster

    if "://" in kind:
        cluster_cm = contextlib.nullcontext(kind)
    elif kind == "local-cluster":
        cluster_cm = LocalCluster(
            n_workers=cfg["n_workers"],
            threads_per_worker=cfg["threads_per_worker"],
            memory_limit=cfg["memory_limit"],
            dashboard_address=cfg["dashboard_address"],
        )
    elif kind == "slurm":
        cluster_cm = _cluster_class(kind, "dask_jobqueue", "SLURMCluster")(**cfg["slurm"])
        cluster_cm.scale(jobs=cfg["slurm_jobs"])
    else:  # kubernetes: the Dask operator's KubeCluster (the operator runs in the cluster)
        cluster_class = _cluster_class(kind, "dask_kubernetes.operator", "KubeCluster")
        cluster_cm = cluster_class(**cfg["kubernetes"])
        cluster_cm.scale(cfg["kubernetes_workers"])
    with cluster_cm as cluster, Client(cluster) as client:
        logger.info("Dask client: %s", client.scheduler.address)  # the dashboard: see progress
        yield client
