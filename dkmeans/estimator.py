"""KMeans: the scikit-learn compatible front of the engine.

``fit`` reads straight through: check the parameters and the data, open the
workspace (a new or continued checkpoint, or plain label stores), seed,
run Lloyd, keep the best run. The algorithm is in :mod:`dkmeans.lloyd` and
:mod:`dkmeans.kernel`; the result-group format in :mod:`dkmeans.results`.
"""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Any

import dask.array as da
import numpy as np
import zarr

from dkmeans import (
    errors,
    inputs,
    kernel,
    lloyd,
    passes,
    progress,
    results,
    seeding,
    state,
    validation,
)
from dkmeans.checkpoint import open_workspace
from dkmeans.passes import Block


def _is_lazy(X: Any) -> bool:
    """Inputs whose large answers come back as dask arrays (dask-backed DataArrays and dask
    DataFrames too)."""
    if inputs.is_xarray(X):
        return isinstance(getattr(X, "data", None), da.Array)
    return isinstance(X, da.Array | zarr.Array | str | os.PathLike) or inputs.is_dask_frame(X)


def _answer(values: da.Array, X: Any, other_dim: str | None = None):
    """An answer as big as X: lazy for lazy X, else computed; a DataArray for xarray X."""
    values = values if _is_lazy(X) else values.compute()
    rows = inputs.xarray_rows(X)
    return values if rows is None else rows.wrap(values, other_dim)


def initial_centers(
    data,
    weights,
    n_clusters: int | list[int],
    n_runs: int,
    params: dict,
    storage_options: dict | None = None,
) -> list:
    """Each run's initial centers, as the (checked) parameters ask.

    ``n_clusters`` a list (a sweep over k): ``n_runs`` runs of each k in turn,
    each k's from the generators its own fit would spawn. ``storage_options``:
    for a ``label_store`` or ``scratch`` URL.
    """
    ks = [n_clusters] if isinstance(n_clusters, int) else n_clusters
    init = params["init"]
    if params["metric"] == "cosine" and not isinstance(init, str):
        init = _unit_init(init)
    return seeding.initial_centers(
        data,
        n_clusters if isinstance(n_clusters, int) else [k for k in ks for _ in range(n_runs)],
        init,
        rngs=[
            rng
            for _ in ks
            for rng in seeding.spawn_generators(seeding.generator(params["random_state"]), n_runs)
        ],
        weights=weights,
        sample_size=params["init_sample_size"],
        rounds=params["init_rounds"],
        oversampling=params["init_oversampling"],
        split_every=params["split_every"],
        retries=params["retries"],
        # k-means|| keeps its per-row state where labels go
        state=state.Placement(params["label_store"], params["scratch"], storage_options),
    )


def _unit_init(init) -> np.ndarray:
    """An ``init`` array's rows as unit vectors (``metric="cosine"``); shape checked later."""
    centers = np.asarray(init)
    if centers.ndim != 2 or centers.dtype.kind not in "biuf":
        return centers  # seeding names what is wrong with it
    unit, zero = kernel.unit_rows(centers.astype(np.float64))
    if zero.any():
        raise ValueError(
            f"init array: row {int(np.argmax(zero))} is all zeros, which has no direction "
            "(metric='cosine')"
        )
    return unit


def run_lloyd(
    data, weights, centers, workspace, params: dict, reporter=None, runs_per_fit=None
) -> list[lloyd.LloydResult]:
    """Lloyd's runs from ``centers`` (or the workspace's saved states), as the parameters ask.

    ``runs_per_fit``: see :func:`dkmeans.lloyd.lloyd_runs` (a sweep over k).
    """
    return lloyd.lloyd_runs(
        data,
        centers,
        stores=workspace.stores,
        states=workspace.states,
        weights=weights,
        max_iter=params["max_iter"],
        tol=params["tol"],
        split_every=params["split_every"],
        retries=params["retries"],
        algorithm=workspace.algorithm,
        on_pass=workspace.save,
        on_iteration=reporter,
        runs_per_fit=runs_per_fit,
        metric=params["metric"],
    )


class KMeans:
    """Exact k-means clustering (Lloyd's algorithm) for data larger than memory.

    Each iteration is one pass over the row blocks of X: a kernel assigns
    every row to its nearest center and sums the rows of each cluster, and
    the per-block sums are tree-reduced into the new means. X is streamed
    from its source every pass, never loaded whole.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters, k.
    init : {"k-means||", "k-means++", "random"} or array of shape \
            (n_clusters, n_features), default="k-means||"
        "k-means||": scalable k-means++ (Bahmani et al., 2012),
        ``init_rounds`` rounds of oversampling (``init_oversampling`` x k
        candidates each) then weighted greedy k-means++ on the candidates;
        ``init_rounds + 1`` passes over X, whatever its size.
        "k-means++": greedy k-means++ in memory, on all rows when X takes at
        most 256 MiB, else on a uniform sample of ``init_sample_size`` rows.
        "random": k distinct rows drawn uniformly (weighted by
        ``sample_weight``). An array: the initial centers.
    n_init : "auto" or int, default="auto"
        Number of runs (restarts) from different initial centers; the fit
        keeps the run with the lowest final objective (the first of those
        within 1e-9 of it, :func:`dkmeans.lloyd.best_run`). "auto" means 10 for
        ``init="random"`` and 1 otherwise (scikit-learn's rule). The runs
        share every pass over X: R runs read X once per iteration, not R
        times (their compute still grows with R), and a run that has
        converged stops costing work. With an array ``init`` there is one
        run.
    max_iter : int, default=300
        Largest number of Lloyd iterations.
    tol : float, default=1e-4
        Stop when the total squared shift of the centers in one iteration is
        at most ``tol`` times the mean variance of the features
        (scikit-learn's meaning). The fit also stops when no label changes;
        ``tol=0`` stops only there (scikit-learn also stops on a shift of
        exactly 0, which can happen while labels still change).
    algorithm : {"auto", "lloyd", "bounded"}, default="auto"
        "lloyd": every iteration reads and assigns every row. "bounded": the
        same labels every iteration (so the same iterations and stop), but
        once the clusters settle an iteration reads only the rows whose
        label can still change, kept in memory beside the blocks they came
        from (:mod:`dkmeans.bounded`); centers and inertia equal "lloyd"'s
        to rounding (sums are grouped differently). "auto": "bounded", which
        itself falls back to plain passes where an active set would not pay,
        or "lloyd" for ``max_iter < 20`` (too short for the bounded passes to
        repay bounding every row) and where the active rows could outgrow the
        room for them (every worker's share within 60% of its memory limit
        less 256 MiB under dask.distributed, else a third of this machine's
        memory; see :func:`dkmeans.bounded.choose_algorithm`). A fit continued from a
        checkpoint keeps the algorithm it was saved with.
    metric : {"euclidean", "cosine"}, default="euclidean"
        "euclidean": k-means. "cosine": spherical k-means (Dhillon & Modha,
        2001), for data compared by direction (embeddings): every row is
        scaled to unit length as its block is read (X is never modified or
        copied), labels go to the largest cosine similarity, centers are the
        (weighted) sums of their rows scaled to unit length, and the
        objective is ``sum w (1 - cos)``. Rows of zeros are an error. Labels
        are exact for the unit rows as computed (see the README).
    random_state : int, numpy Generator or RandomState, default=None
        Seeds the initialisation.
    split_every : int, default=8
        Fan-in of the tree that reduces the per-block statistics. Results
        are bitwise identical across schedulers for a fixed chunking and
        ``split_every``.
    label_store : {"auto", "memory", "zarr"} or path, default="auto"
        Where labels live between passes: "memory" (persisted dask blocks:
        in this process, or on the workers under dask.distributed), "zarr"
        (a Zarr array in a temporary directory), a path or URL (a Zarr array
        there, replaced), or "auto" (memory while the labels take at most
        10% of the memory they would live in: the workers' memory limits
        under dask.distributed, this machine's memory otherwise; else
        "zarr"; the log says which).
    scratch : str or os.PathLike, default=None
        Where temporary Zarr state goes (``label_store="zarr"``, or "auto"
        choosing it, and k-means|| state): a path or URL every worker can
        reach (e.g. ``s3://bucket/tmp``, with ``storage_options`` of
        :meth:`fit`); removed when the process ends. None: a temporary
        directory of the machine that runs the fit, which workers on other
        machines cannot see.
    init_sample_size : int, default=None
        Rows k-means++ samples when X is too large to use whole (default
        131072).
    init_rounds : int, default=3
        Rounds of k-means|| oversampling; the initialisation reads X
        ``init_rounds + 1`` times (see :func:`dkmeans.seeding.kmeans_parallel`).
    init_oversampling : float, default=2.0
        Candidates k-means|| draws per round, in expectation, as a multiple
        of ``n_clusters``.
    retries : int, default=2
        How many times a failed task is run again before the fit fails.
        Under dask.distributed these are Dask's task retries (any error, on
        any worker; a lost worker's tasks are re-run by Dask anyway); under
        the local schedulers a pass that fails with an I/O error
        (``OSError``) is run again whole. Re-runs cannot change the result.
    verbose : bool, default=False
        Report every iteration: a line per iteration (through the "dkmeans"
        logger if it has a handler), or an updating table in Jupyter.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        Final centers, in X's dtype (float32 or float64).
    labels_ : dask.array.Array of shape (n_samples,), int32
        Label of each row, consistent with ``cluster_centers_``; backed by
        the label store, chunked like the rows of X (an xarray DataArray
        along X's row dimension when X was one).
    inertia_ : float
        Sum of (weighted) squared distances of the rows to their centers
        (``metric="cosine"``: of the cosine distances ``1 - cos``).
    n_iter_ : int
        Number of Lloyd iterations run.
    converged_ : bool
        Whether the fit stopped before ``max_iter``.
    stop_reason_ : {"fixed point", "tol", "max_iter"}
        Why it stopped.
    history_ : list of dict
        One record per iteration: ``iteration``, ``objective`` (of that
        iteration's labels w.r.t. its starting centers), ``labels_changed``,
        ``center_shift`` (total squared shift), ``reseeded`` (empty clusters
        re-seeded) and ``seconds``; with the bounded algorithm also ``pass``
        ("full" or "active"), ``rows_read`` and ``rows_assigned``.
    n_features_in_ : int
        Number of columns of X.
    feature_names_in_ : ndarray of shape (n_features_in_,), object
        The column names of X, where X was a pandas or dask DataFrame whose
        column names are all strings (scikit-learn's rule); not set otherwise.
        ``predict``, ``transform`` and ``score`` then check X's names as
        scikit-learn does.

    Notes
    -----
    ``predict``, ``transform`` and ``fit_predict`` return NumPy arrays for
    in-memory input and lazy dask arrays for dask, Zarr or path input; for an
    xarray DataArray, DataArrays along its row dimension and coordinate.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: str | np.ndarray = "k-means||",
        n_init: str | int = "auto",
        max_iter: int = 300,
        tol: float = 1e-4,
        algorithm: str = "auto",
        metric: str = "euclidean",
        random_state: int | np.random.Generator | np.random.RandomState | None = None,
        split_every: int = 8,
        label_store: str | os.PathLike = "auto",
        scratch: str | os.PathLike | None = None,
        init_sample_size: int | None = None,
        init_rounds: int = 3,
        init_oversampling: float = 2.0,
        retries: int = 2,
        verbose: bool = False,
    ):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.algorithm = algorithm
        self.metric = metric
        self.random_state = random_state
        self.split_every = split_every
        self.label_store = label_store
        self.scratch = scratch
        self.init_sample_size = init_sample_size
        self.init_rounds = init_rounds
        self.init_oversampling = init_oversampling
        self.retries = retries
        self.verbose = verbose

    # -- scikit-learn estimator protocol ------------------------------------

    @classmethod
    def _get_param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p for p in signature.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of this estimator, by name."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> KMeans:
        """Set parameters by name; they are validated by ``fit``."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {valid!r}."
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(type(self).__init__).parameters
        changed = []
        for name, value in self.get_params().items():
            default = defaults[name].default
            if isinstance(value, np.ndarray) or (value is not default and value != default):
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self):
        # Imported only when scikit-learn asks: it is not a dependency.
        from sklearn.utils import Tags, TargetTags, TransformerTags

        tags = Tags(
            estimator_type="clusterer",
            target_tags=TargetTags(required=False),
            transformer_tags=TransformerTags(preserves_dtype=["float64", "float32"]),
        )
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "cluster_centers_")

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise errors.NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    # -- fitting ---------------------------------------------------------------

    def fit(
        self,
        X,
        y=None,
        sample_weight=None,
        *,
        checkpoint: str | os.PathLike | None = None,
        resume: bool = False,
        storage_options: dict | None = None,
    ) -> KMeans:
        """Compute k-means clustering.

        Parameters
        ----------
        X : array-like, dask array, zarr.Array, or path/URL of a Zarr array
            Data of shape (n_samples, n_features).
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Non-negative weight of each row.
        checkpoint : str or os.PathLike, optional
            A Zarr group (path or URL) that receives the fit's state after
            every iteration and, at the end, its result (as :meth:`save`
            writes it). Labels then live in that group whatever
            ``label_store`` says. See :mod:`dkmeans.checkpoint`.
        resume : bool, default=False
            With ``checkpoint``: continue the unfinished fit saved there
            (ending with bitwise the same result as an uninterrupted fit),
            or load its result if it finished; start a new fit if there is
            nothing there. Without ``resume`` the group is replaced.
        storage_options : dict, optional
            Options of the fsspec filesystem of X, ``checkpoint`` and a ``label_store``
            path, where they are URLs
            (e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}`` for S3);
            without them, the filesystem's usual configuration (for S3 the
            ``AWS_*`` environment variables) applies. Not saved anywhere.

        Returns
        -------
        self
        """
        params = validation.check_params(self.get_params())
        n_runs = validation.n_runs(params["n_init"], params["init"])
        names = inputs.feature_names(X)
        data = inputs.as_dask_array(X, metric=params["metric"], storage_options=storage_options)
        weights = inputs.as_weights(sample_weight, data)
        k = validation.check_n_clusters(params["n_clusters"], data.shape[0])
        workspace = open_workspace(
            checkpoint,
            resume=resume,
            X=data,
            weighted=weights is not None,
            n_clusters=k,
            n_runs=n_runs,
            params=params,
            attrs=self._describe(inputs.describe_input(X, data), names),
            storage_options=storage_options,
        )
        rows = inputs.xarray_rows(X)
        if workspace.result is not None:  # resumed a fit that had finished
            return self._set_result(workspace.result, rows)._set_feature_names(names)
        centers = None
        if workspace.states is None:  # a new fit (else: continued from the checkpoint)
            centers = initial_centers(data, weights, k, n_runs, params, storage_options)
        reporter = progress.IterationReporter(n_runs) if params["verbose"] else None
        runs = run_lloyd(data, weights, centers, workspace, params, reporter)
        best = lloyd.best_run(runs, range(n_runs))
        _warn_if_fewer_clusters(runs[best], k)
        self._set_feature_names(names)  # before _result, which records them in its attrs
        fitted = self._result(runs[best], data.shape[1], rows)
        self._set_result(workspace.finish(best, fitted), rows)
        if reporter is not None:
            reporter.finish(best, runs[best])
        return self

    def fit_predict(self, X, y=None, sample_weight=None, *, storage_options=None):
        """Fit, then return ``labels_`` (NumPy for in-memory X, else dask; xarray: a DataArray)."""
        labels = self.fit(X, sample_weight=sample_weight, storage_options=storage_options).labels_
        return labels if _is_lazy(X) else labels.compute()

    def fit_transform(self, X, y=None, sample_weight=None, *, storage_options=None):
        """Fit, then return the distances of X to the centers."""
        fitted = self.fit(X, sample_weight=sample_weight, storage_options=storage_options)
        return fitted.transform(X, storage_options=storage_options)

    # -- using a fit -----------------------------------------------------------

    def _prepare(self, X, storage_options: dict | None) -> da.Array:
        """X checked against the fit, as the fit saw it (unit rows for ``metric="cosine"``)."""
        self._check_fitted()
        self._check_feature_names(X)
        metric = validation.check_params({"metric": self.metric})["metric"]
        arr = inputs.as_dask_array(X, metric=metric, storage_options=storage_options)
        validation.check_features(arr.shape[1], self.n_features_in_, type(self).__name__)
        return arr

    def _check_feature_names(self, X) -> None:
        """X's column names against the fit's, with scikit-learn's warnings and error."""
        fitted = self._feature_names()
        given = inputs.feature_names(X)
        name = type(self).__name__
        if fitted is None and given is not None:
            warnings.warn(
                f"X has feature names, but {name} was fitted without feature names",
                UserWarning,
                stacklevel=4,  # the caller of predict, transform or score
            )
        elif fitted is not None and given is None:
            warnings.warn(
                f"X does not have valid feature names, but {name} was fitted with feature names",
                UserWarning,
                stacklevel=4,
            )
        elif fitted is not None and not np.array_equal(fitted, given):
            unseen = [n for n in given if n not in set(fitted)]
            missing = [n for n in fitted if n not in set(given)]
            message = "The feature names should match those that were passed during fit.\n"
            if unseen:
                message += "Feature names unseen at fit time:\n" + _listed(unseen)
            if missing:
                message += "Feature names seen at fit time, yet now missing:\n" + _listed(missing)
            if not unseen and not missing:
                message += "Feature names must be in the same order as they were in fit.\n"
            raise ValueError(message)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the columns of :meth:`transform`'s output: ``kmeans0``, ``kmeans1``, ...

        ``input_features`` (optional) must be the fit's feature names, as in
        scikit-learn; they do not change the output names.
        """
        self._check_fitted()
        if input_features is not None:
            input_features = np.asarray(input_features, dtype=object)
            fitted = self._feature_names()
            if fitted is not None and not np.array_equal(input_features, fitted):
                raise ValueError("input_features is not equal to feature_names_in_")
            if len(input_features) != self.n_features_in_:
                raise ValueError(
                    f"input_features should have length equal to number of features "
                    f"({self.n_features_in_}), got {len(input_features)}"
                )
        prefix = type(self).__name__.lower()
        k = len(self.cluster_centers_)
        return np.asarray([f"{prefix}{i}" for i in range(k)], dtype=object)

    def _centers_for(self, X: da.Array) -> np.ndarray:
        return self.cluster_centers_.astype(X.dtype, copy=False)

    def predict(self, X, *, storage_options: dict | None = None):
        """Label of the nearest center for each row of X.

        ``storage_options``: for X an fsspec URL (as for :meth:`fit`).

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples,), int32
            NumPy for in-memory X; lazy dask for dask, Zarr or path input.
        """
        arr = self._prepare(X, storage_options)
        labels = arr.map_blocks(
            _predict_block,
            centers=self._centers_for(arr),
            drop_axis=1,
            dtype=np.int32,
            meta=np.empty((0,), np.int32),
        )
        return _answer(labels, X)

    def transform(self, X, *, storage_options: dict | None = None):
        """Distances from each row of X to each center.

        Euclidean distances; with ``metric="cosine"``, cosine distances
        ``1 - cos``. Rounded (GEMM), not exact, as scikit-learn's.
        ``storage_options``: for X an fsspec URL (as for :meth:`fit`).

        Returns
        -------
        ndarray or dask.array.Array of shape (n_samples, n_clusters)
        """
        arr = self._prepare(X, storage_options)
        centers = self._centers_for(arr)
        dist = arr.map_blocks(
            _transform_block,
            centers=centers,
            metric=self.metric,
            chunks=(arr.chunks[0], (len(centers),)),
            dtype=arr.dtype,
            meta=np.empty((0, 0), arr.dtype),
        )
        return _answer(dist, X, "cluster")

    def score(self, X, y=None, sample_weight=None, *, storage_options=None) -> float:
        """Opposite of the k-means objective of X with the fitted centers (one pass over X).

        With ``metric="cosine"``: minus the sum of (weighted) ``1 - cos``.
        ``storage_options``: for X an fsspec URL (as for :meth:`fit`).
        """
        arr = self._prepare(X, storage_options)
        objective = passes.map_reduce(
            _objective_block,
            [arr, inputs.as_weights(sample_weight, arr)],
            combine=sum,
            split_every=self.split_every,
            retries=self.retries,
            centers=self._centers_for(arr),
        )
        return -lloyd.metric_objective(float(objective), self.metric)

    # -- persistence -----------------------------------------------------------

    def save(self, path: str | os.PathLike, *, storage_options: dict | None = None) -> None:
        """Write the fit to a Zarr group: centers, labels, history, parameters.

        The group gets ``attrs["dkmeans_complete"] = True`` last, so a write
        that fails part-way never looks complete. Load it with
        :func:`dkmeans.load`. The format: :mod:`dkmeans.results`.
        ``storage_options``: for ``path`` an fsspec URL (as for :meth:`fit`).
        """
        self._check_fitted()
        labels = self.labels_
        fitted = results.Result(
            centers=self.cluster_centers_,
            labels=labels.data if inputs.is_xarray(labels) else labels,
            history=self.history_,
            inertia=self.inertia_,
            n_iter=self.n_iter_,
            converged=self.converged_,
            stop_reason=self.stop_reason_,
            n_features_in=self.n_features_in_,
            params=self._jsonable_params(),
            attrs={"versions": results.versions()} | _names_attrs(self._feature_names()),
            rows=getattr(self, "_rows", None),
        )
        results.write_result(path, fitted, storage_options)

    def _jsonable_params(self) -> dict[str, Any]:
        """The parameters as a result group records them (a Generator seed is not kept)."""
        return {
            name: (value.tolist() if isinstance(value, np.ndarray) else value)
            for name, value in self.get_params().items()
            if name != "random_state"
            or not isinstance(value, np.random.Generator | np.random.RandomState)
        }

    def _describe(
        self, input_description: dict[str, Any], names: np.ndarray | None
    ) -> dict[str, Any]:
        """Parameters, input, versions (and feature names): what a result group says of its fit."""
        return {
            "params": self._jsonable_params(),
            "versions": results.versions(),
            "input": input_description,
        } | _names_attrs(names)

    def _feature_names(self) -> np.ndarray | None:
        return getattr(self, "feature_names_in_", None)

    def _set_feature_names(self, names: np.ndarray | list | None) -> KMeans:
        """``feature_names_in_`` from a fit's X (or a result group): set, or removed if none."""
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def _result(
        self, run: lloyd.LloydResult, n_features: int, rows: inputs.Rows | None = None
    ) -> results.Result:
        """A run of this fit as a result (its labels are the workspace's to give)."""
        return results.Result(
            centers=run.centers,
            labels=None,
            history=run.history,
            inertia=run.inertia,
            n_iter=run.n_iter,
            converged=run.converged,
            stop_reason=run.stop_reason,
            n_features_in=n_features,
            params=self._jsonable_params(),
            attrs=_names_attrs(self._feature_names()),
            rows=rows,
        )

    def _set_result(self, result: results.Result, rows: inputs.Rows | None = None) -> KMeans:
        """Take the fitted attributes from a result (of a fit, or read from a group).

        ``rows``: those of an xarray input (else the group's, if it recorded them):
        ``labels_`` is then a DataArray along them.
        """
        self.cluster_centers_ = result.centers
        self._rows = rows if rows is not None else result.rows
        self.labels_ = result.labels.astype(np.int32)
        if self._rows is not None:
            self.labels_ = self._rows.wrap(self.labels_)
        self.history_ = result.history
        self.inertia_ = result.inertia
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.stop_reason_ = result.stop_reason
        self.n_features_in_ = result.n_features_in
        return self._set_feature_names(result.attrs.get(results.FEATURE_NAMES_ATTR))


def _names_attrs(names: np.ndarray | None) -> dict[str, Any]:
    """The result group's record of feature names (nothing where there are none)."""
    return {} if names is None else {results.FEATURE_NAMES_ATTR: names.tolist()}


def _listed(names: list) -> str:
    """Names as scikit-learn lists them in its feature-name errors, one per line."""
    return "".join(f"- {name}\n" for name in names)


def _warn_if_fewer_clusters(run: lloyd.LloydResult, n_clusters: int) -> None:
    """scikit-learn's ConvergenceWarning where the fit's clusters of positive weight are fewer."""
    if run.label_weights is None:
        return
    found = int(np.count_nonzero(run.label_weights > 0))
    if found < n_clusters:
        warnings.warn(
            f"Number of distinct clusters ({found}) found smaller than n_clusters "
            f"({n_clusters}). Possibly due to duplicate points in X.",
            errors.ConvergenceWarning,
            stacklevel=3,  # the caller of KMeans.fit
        )


def load(path: str | os.PathLike, *, storage_options: dict | None = None) -> KMeans:
    """A fitted KMeans from a result group written by :meth:`KMeans.save` or a checkpointed fit.

    ``storage_options``: for ``path`` an fsspec URL (as for :meth:`KMeans.fit`).
    """
    result = results.read_result(path, storage_options)
    params = dict(result.params)
    if isinstance(params.get("init"), list):
        params["init"] = np.asarray(params["init"])
    return KMeans(**params)._set_result(result)


def _block_location(block_info) -> tuple[int, int]:
    info = block_info[0]
    return info["chunk-location"][0], info["array-location"][0][0]


def _predict_block(x: np.ndarray, centers: np.ndarray, block_info=None) -> np.ndarray:
    if block_info is not None:
        validation.check_finite_block(x, *_block_location(block_info))
    return kernel.assign(x, centers)[0].astype(np.int32)


def _transform_block(
    x: np.ndarray, centers: np.ndarray, metric: str, block_info=None
) -> np.ndarray:
    if block_info is not None:
        validation.check_finite_block(x, *_block_location(block_info))
    return kernel.distances(x, centers, metric)


def _objective_block(block: Block, x, weights, *, states, centers) -> float:
    """One block's share of the objective: sum of w * squared distance to the nearest center."""
    validation.check_finite_block(x, block.index, block.start)
    return kernel.fixed_sum(kernel.assign(x, centers)[1], weights)
