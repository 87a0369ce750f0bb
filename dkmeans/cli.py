"""The ``dkmeans`` command: batch k-means jobs from YAML files.

::

    dkmeans fit JOB.yaml [--resume] [--set KEY=VALUE]... [--input P] [--output P]
                         [--n-clusters K] [--max-iter N] [--scheduler S] [-v | -q] [--progress]
    dkmeans sweep JOB.yaml [--k 2:32] [--plot FILE.png] [the options of fit]
    dkmeans make-blobs PATH --n-samples N --n-features D --n-centers K [...]
    dkmeans predict MODEL INPUT OUTPUT [--scheduler S] [--overwrite]
    dkmeans info GROUP [--json]

Exit status: 0 on success, 2 for bad input (job file, flags, data: a one-line
message naming what is wrong), 1 for any other failure (with a traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import dask.array as da

from dkmeans import inputs, jobs, progress, results, sweeps
from dkmeans.datasets import COMPRESSORS, make_blobs_zarr
from dkmeans.errors import ChunkReadError, JobError
from dkmeans.estimator import KMeans, load

logger = logging.getLogger("dkmeans")

# Errors that mean "the input is wrong": a one-line message and exit status 2.
# (A chunk that cannot be read is a one-line message and exit status 1.)
# PermissionError: credentials or rights that do not let the job read or write.
USER_ERRORS = (JobError, ValueError, TypeError, FileNotFoundError, PermissionError)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _storage_options(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


STORAGE_OPTIONS = {
    "dest": "storage_options",
    "metavar": "JSON",
    "type": _storage_options,
    "default": None,
    "help": 'fsspec options for the command\'s URLs, e.g. \'{"endpoint_url": "http://..."}\' '
    "(default: the filesystem's own configuration, such as the AWS_* variables)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dkmeans", description="Exact k-means for arrays larger than memory, on Dask."
    )
    verbosity = argparse.ArgumentParser(add_help=False)
    group = verbosity.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    group.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    job_options = argparse.ArgumentParser(add_help=False, parents=[verbosity])
    job_options.add_argument("job", help="job file (see config/README.md)")
    job_options.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run saved at output.path (or start one if none)",
    )
    job_options.add_argument(
        "-s",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the job file, e.g. --set model.n_clusters=16 (repeatable)",
    )
    for flag, key in SHORTCUTS.items():
        job_options.add_argument(
            f"--{flag}", dest=key, default=None, metavar="VALUE", help=f"= {key}"
        )
    job_options.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar during each pass (default: when stderr is a terminal)",
    )
    commands.add_parser(
        "fit", parents=[job_options], help="run the k-means job described by a YAML file"
    )
    sweep = commands.add_parser(
        "sweep",
        parents=[job_options],
        help="fit every k of a range in shared passes and score each (choosing k)",
    )
    sweep.add_argument(
        "--k", dest="sweep.n_clusters", default=None, metavar="K", help="= sweep.n_clusters"
    )
    sweep.add_argument(
        "--plot", metavar="FILE.png", help="draw inertia and the scores against k (matplotlib)"
    )

    blobs = commands.add_parser(
        "make-blobs", parents=[verbosity], help="write Gaussian blobs to a Zarr array, by block"
    )
    blobs.add_argument("path", help="Zarr array to create (replaced if present)")
    blobs.add_argument("--n-samples", type=_positive_int, required=True)
    blobs.add_argument("--n-features", type=_positive_int, required=True)
    blobs.add_argument("--n-centers", type=_positive_int, required=True)
    blobs.add_argument("--chunk-rows", type=_positive_int, default=250_000)
    blobs.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    blobs.add_argument("--cluster-std", type=float, default=1.0)
    blobs.add_argument("--seed", type=int, default=0)
    blobs.add_argument("--compressor", choices=list(COMPRESSORS), default="default")

    predict = commands.add_parser(
        "predict", parents=[verbosity], help="label a Zarr array with a saved model"
    )
    predict.add_argument("model", help="result group of a fit")
    predict.add_argument("input", help="Zarr array (n, d) to label")
    predict.add_argument("output", help="Zarr array (n,) of int32 labels to write")
    predict.add_argument("--scheduler", default="threads", help="as dask.scheduler in a job")
    predict.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    predict.add_argument("--storage-options", **STORAGE_OPTIONS)

    info = commands.add_parser(
        "info", parents=[verbosity], help="describe a result group (or an unfinished fit)"
    )
    info.add_argument("group", help="result group")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.add_argument("--storage-options", **STORAGE_OPTIONS)
    return parser


# fit flags that stand for a key of the job file.
SHORTCUTS = {
    "input": "input.path",
    "output": "output.path",
    "n-clusters": "model.n_clusters",
    "max-iter": "model.max_iter",
    "scheduler": "dask.scheduler",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(jobs.parse_override(text) for text in args.set)
    for key in SHORTCUTS.values():
        text = getattr(args, key)
        if text is not None:
            overrides[key] = jobs.parse_override(f"{key}={text}")[1]
    k_text = getattr(args, "sweep.n_clusters", None)
    if k_text is not None:  # not YAML: YAML 1.1 reads 2:32 as the number 152
        overrides["sweep.n_clusters"] = (
            jobs.parse_override(f"k={k_text}")[1] if k_text.startswith("[") else k_text
        )
    return overrides


def _run_job(
    args: argparse.Namespace, job: jobs.Job, run: Callable[..., Any], kind: str = "fit"
) -> None:
    """``run(X, sample_weight=, checkpoint=, resume=, storage_options=)`` under the scheduler.

    ``kind`` ("fit" or "sweep") names what runs in the log.

    Bad data found while reading (NaN, a negative weight) leaves nothing
    behind: there is nothing to resume from. A fault (an I/O error) keeps
    the checkpoint for --resume.
    """
    output, output_options = job["output.path"], job["output.storage_options"]
    found = results.status(output, output_options)
    if args.resume and found == "complete":
        logger.info("%s already holds the complete result of this job; nothing to do", output)
    elif args.resume and found == "checkpoint":
        logger.info("continuing the unfinished %s saved at %s", kind, output)
    weights = job["input.sample_weight"]
    show_bars = sys.stderr.isatty() if args.progress is None else args.progress
    try:
        with jobs.scheduler(job.section("dask")), progress.pass_bars(show_bars):
            if weights is not None:
                weights = da.from_zarr(jobs.open_input(job, "input.sample_weight"))
            run(
                # opened here with the input's options; the output's go to the run
                job["input.path"]
                if job["input.storage_options"] is None
                else jobs.open_input(job, "input.path"),
                sample_weight=weights,
                checkpoint=output,
                resume=args.resume and found in ("checkpoint", "complete"),
                storage_options=output_options,
            )
    except USER_ERRORS:
        if found == "absent":
            with contextlib.suppress(OSError):  # e.g. no right to write there, nor to delete
                results.remove(output, output_options)
        raise
    except ChunkReadError:
        logger.info("the %s so far is saved at %s: continue it with --resume", kind, output)
        raise


def cmd_fit(args: argparse.Namespace) -> int:
    job = jobs.load_job(args.job, _overrides(args), resume=args.resume)
    model = KMeans(**{**job.section("model"), "init": jobs.init_value(job)}, verbose=True)
    start = time.perf_counter()
    _run_job(args, job, model.fit)
    output = job["output.path"]
    logger.info(
        "result: %s (%d iterations, %s, inertia %.10g) in %.1fs",
        output,
        model.n_iter_,
        model.stop_reason_,
        model.inertia_,
        time.perf_counter() - start,
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    job = jobs.load_job(args.job, _overrides(args), resume=args.resume)
    ks = job["sweep.n_clusters"]
    if ks is None:
        raise JobError(
            f"{job.source}: a sweep needs the values of k: --k 2:32 or sweep.n_clusters"
        )
    if args.plot is not None:
        try:
            sweeps.plot_table({}, None, check_only=True)  # a clear error before any work
        except ImportError as err:
            raise JobError(f"--plot: {err}") from err
    params = {**job.section("model"), "init": jobs.init_value(job), "verbose": True}
    params.pop("n_clusters")
    found: list[sweeps.Sweep] = []
    start = time.perf_counter()
    _run_job(args, job, lambda X, **kw: found.append(sweeps.sweep(X, ks, **kw, **params)), "sweep")
    print(sweeps.format_table(found[0].table))
    if args.plot is not None:
        sweeps.plot_table(found[0].table, args.plot)
        logger.info("plot: %s", args.plot)
    logger.info(
        "result: %s (%d values of k, each k in k-<k>/) in %.1fs",
        job["output.path"],
        len(ks),
        time.perf_counter() - start,
    )
    return 0


def cmd_make_blobs(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    array = make_blobs_zarr(
        args.path,
        n_samples=args.n_samples,
        n_features=args.n_features,
        n_centers=args.n_centers,
        chunk_rows=args.chunk_rows,
        dtype=args.dtype,
        cluster_std=args.cluster_std,
        seed=args.seed,
        compressor=args.compressor,
    )
    logger.info(
        "wrote %s: %d x %d %s, chunks of %d rows, in %.1fs",
        args.path,
        *array.shape,
        array.dtype,
        array.chunks[0],
        time.perf_counter() - start,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    cfg = jobs.dask_defaults(scheduler=args.scheduler)
    options = args.storage_options
    model = load(args.model, storage_options=options)
    inputs.open_zarr_array(args.input, "INPUT", options)  # a clear error before any write
    if results.status(args.output, options) != "absent" and not args.overwrite:
        raise JobError(f"OUTPUT {args.output!r} exists; give --overwrite to replace it")
    with jobs.scheduler(cfg):
        labels = model.predict(args.input, storage_options=options)
        attrs = {"model": args.model, "input": args.input}
        results.write_labels_group(args.output, labels, attrs, options)
    logger.info("wrote %s/labels: %d labels", args.output, labels.shape[0])
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = results.describe(args.group, args.storage_options)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.group}: {info['status']}")
    sweep = info.get(sweeps.SWEEP_ATTR)
    if sweep is not None:
        print(f"sweep over k: {', '.join(map(str, sweep['n_clusters']))}")
    for key in ("input", "params"):
        if key in info:
            print(f"{key}:")
            for name, value in info[key].items():
                print(f"  {name}: {value}")
    if sweep is not None and "table" in sweep:
        print(sweeps.format_table(sweeps.table_from_attrs(sweep["table"])))
        print("each k's fit: k-<k>/ (dkmeans info GROUP/k-<k> for its history)")
    elif info["status"] == "complete":
        print(
            f"iterations: {info['n_iter']}  stop reason: {info['stop_reason']}  "
            f"converged: {info['converged']}  inertia: {info['inertia']:.10g}"
        )
    else:
        print(f"iterations saved: {info['n_iter']}  stop reason: {info.get('stop_reason')}")
    if info["history"]:
        print("history:")
    for record in info["history"]:
        print("  " + progress.format_record(record))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items()))
    return 0


COMMANDS = {
    "fit": cmd_fit,
    "sweep": cmd_sweep,
    "make-blobs": cmd_make_blobs,
    "predict": cmd_predict,
    "info": cmd_info,
}


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one log line (``warnings.showwarning``'s signature)."""
    logger.warning("%s: %s", category.__name__, message)


@contextlib.contextmanager
def _logging_to_stdout(args: argparse.Namespace) -> Iterator[None]:
    """Route the "dkmeans" logger to stdout for one command (restored afterwards).

    Python warnings raised meanwhile (fewer distinct clusters than k, say) become
    log lines too, rather than a source line of this module on stderr.
    """
    handler = logging.StreamHandler(sys.stdout)
    if args.verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(
        logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    )
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            yield
    finally:
        logger.handlers[:], level, logger.propagate = saved
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the ``dkmeans`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    with _logging_to_stdout(args):
        try:
            return COMMANDS[args.command](args)
        except BrokenPipeError:  # e.g. `dkmeans info GROUP | head`: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except (*USER_ERRORS, ChunkReadError) as err:
            if args.verbose:
                logger.exception("failed")
            message = " ".join(str(err).split())  # one line
            print(f"dkmeans {args.command}: error: {message}", file=sys.stderr)
            # 2: the input is wrong; 1: the storage failed (a checkpoint is kept).
            return 1 if isinstance(err, ChunkReadError) else 2


if __name__ == "__main__":
    sys.exit(main())
