"""Choosing k: a sweep over k that shares every pass, with cluster-quality scores.

:func:`sweep` fits one model per k with every k running together, as the
restarts of one fit do (:func:`dkmeans.lloyd.lloyd_runs`): each pass, the
initialisation's included, reads each block of X once for all the runs of
every k still running, and a k that has stopped costs nothing more. Each k
ends bitwise as ``KMeans(n_clusters=k, same parameters).fit(X)`` alone.

Then one more pass over X scores every k together (:func:`score_block`),
from the final labels, the fitted centers and the means of the final
labels' clusters (known from the last pass of each fit). With weights
``w_i`` (1 without ``sample_weight``: the weights count as multiplicities)
and only the clusters holding weight counted (K of them, total weight N):

- Calinski-Harabasz: ``[B / (K - 1)] / [W / (N - K)]``, B the weighted
  squared distances of the cluster means to the overall mean, W the
  weighted squared distances of the rows to their cluster's mean;
  scikit-learn's ``calinski_harabasz_score`` (1.0 when W = 0).
- Davies-Bouldin: the mean over clusters i of ``max_{j != i} (s_i + s_j) /
  ||m_i - m_j||``, s_i the (weighted) mean distance of cluster i's rows to
  its mean m_i; scikit-learn's ``davies_bouldin_score``.
- Simplified silhouette (Hruschka et al., 2004; Vendramin et al., 2010): the
  (weighted) mean over rows of ``(b - a) / max(a, b)`` (0 where both are 0),
  a the row's distance to its own center, b to the nearest other center
  (``cluster_centers_``: a <= b, so it lies in [0, 1]; higher is better).
  It replaces the silhouette's mean distances to all rows of a cluster
  (quadratic in n) by distances to the centers (one pass).

The scores are NaN where they are undefined (fewer than two clusters).
Distances to the means and the centers are computed directly in float64,
features summed in order; the scores are exact to rounding.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from dkmeans import inputs, kernel, lloyd, passes, progress, results, validation
from dkmeans.checkpoint import check_fingerprint, fit_fingerprint, open_workspace
from dkmeans.estimator import KMeans, initial_centers, load, run_lloyd
from dkmeans.passes import Block

SCORE_COLUMNS = ("calinski_harabasz", "davies_bouldin", "simplified_silhouette")
TABLE_COLUMNS = ("n_clusters", "inertia", "n_iter", "stop_reason", *SCORE_COLUMNS)
SWEEP_ATTR = "sweep"  # the attribute of a sweep's result group holding its table


@dataclass
class Sweep:
    """What :func:`sweep` found: one row of :attr:`table` and one model per k.

    Attributes
    ----------
    table : dict of str to ndarray
        Columns ``n_clusters``, ``inertia``, ``n_iter``, ``stop_reason``,
        ``calinski_harabasz``, ``davies_bouldin`` and
        ``simplified_silhouette``, one entry per k, in increasing k.
    models : dict of int to KMeans
        Each k's fitted model (the best of its ``n_init`` runs).
    """

    table: dict[str, np.ndarray]
    models: dict[int, KMeans] = field(default_factory=dict)

    def to_pandas(self):
        """The table as a pandas DataFrame (pandas is not a dependency of dkmeans)."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("Sweep.to_pandas needs pandas: pip install pandas") from err
        return pd.DataFrame(self.table)

    def __repr__(self) -> str:
        return format_table(self.table)


def format_table(table: dict[str, Any]) -> str:
    """The table as aligned text, one line per k."""
    header = ("k", "inertia", "n_iter", "stop", "CH", "DB", "simp. silhouette")
    rows = [
        (
            f"{k}",
            f"{inertia:.6g}",
            f"{n_iter}",
            f"{stop}",
            f"{ch:.6g}",
            f"{db:.4f}",
            f"{sil:.4f}",
        )
        for k, inertia, n_iter, stop, ch, db, sil in zip(
            *(table[name] for name in TABLE_COLUMNS), strict=True
        )
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    )


def sweep(
    X,
    n_clusters: Iterable[int],
    *,
    sample_weight=None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    storage_options: dict | None = None,
    **params: Any,
) -> Sweep:
    """Fit k-means for every k in ``n_clusters`` at once, sharing every pass; score each k.

    Parameters
    ----------
    X : array-like, dask array, zarr.Array, or path/URL of a Zarr array
        Data of shape (n_samples, n_features).
    n_clusters : iterable of int
        The values of k (distinct, each at least 1 and at most n_samples);
        the table is in increasing k.
    sample_weight : array-like or dask array of shape (n_samples,), optional
        Non-negative weight of each row (in the fits and the scores).
    checkpoint : str or os.PathLike, optional
        A Zarr group that holds the sweep's state while it runs (all k in
        one saved state) and its result at the end: ``attrs["sweep"]`` (the
        k values and the table) and a result group per k, ``k-<k>/``, as
        :meth:`KMeans.save` writes (``dkmeans.load(PATH + "/k-8")``).
    resume : bool, default=False
        With ``checkpoint``: continue the unfinished sweep saved there, or
        read its result if it finished (as ``KMeans.fit``).
    storage_options : dict, optional
        For X, ``checkpoint`` or a ``label_store`` path that is an fsspec URL
        (as for :meth:`KMeans.fit`).
    **params
        Any parameter of :class:`~dkmeans.KMeans` but ``n_clusters`` (an
        ``init`` array cannot serve several k). With an integer
        ``random_state`` each k gets the initial centers its own fit would.

    Returns
    -------
    Sweep
        The table of scores and each k's fitted model; see the module
        docstring for the scores' definitions.

    Notes
    -----
    With ``metric="cosine"`` the scores are computed on the unit rows
    (Euclidean distances between unit vectors, ``sqrt(2 (1 - cos))``).

    Memory: each k holds its label store (1-2 bytes a row); with the bounded
    algorithm each k still running also holds up to the active-row budget
    of a fit (:data:`dkmeans.bounded.ACTIVE_MEMORY_BYTES`). ``algorithm="auto"``
    counts that budget once per k (:func:`dkmeans.bounded.choose_algorithm`).
    """
    ks = _checked_ks(n_clusters)
    template = KMeans(n_clusters=ks[0], **params)
    checked = validation.check_params(template.get_params())
    if not isinstance(checked["init"], str):
        raise ValueError("sweep: init must be 'k-means||', 'k-means++' or 'random', not an array")
    n_init = validation.n_runs(checked["n_init"], checked["init"])
    names = inputs.feature_names(X)
    data = inputs.as_dask_array(X, metric=checked["metric"], storage_options=storage_options)
    weights = inputs.as_weights(sample_weight, data)
    for k in ks:
        validation.check_n_clusters(k, data.shape[0])
    attrs = template._describe(inputs.describe_input(X, data), names)
    attrs["params"].pop("n_clusters")
    attrs[SWEEP_ATTR] = {"n_clusters": ks}
    found = "absent"
    if checkpoint is not None and resume:
        found = results.status(checkpoint, storage_options)
    if found == "complete":
        return _read_sweep(
            checkpoint, data, weights is not None, ks, checked, n_init, storage_options
        )
    workspace = open_workspace(
        checkpoint,
        resume=found == "checkpoint",
        X=data,
        weighted=weights is not None,
        n_clusters=ks,
        n_runs=n_init,
        params=checked,
        attrs=attrs,
        storage_options=storage_options,
    )
    centers = None
    if workspace.states is None:  # a new sweep (else: continued from the checkpoint)
        centers = initial_centers(data, weights, ks, n_init, checked, storage_options)
    reporter = None
    if checked["verbose"]:  # each run named by its k (and restart)
        names = [f"k={k}" + (f".{r}" if n_init > 1 else "") for k in ks for r in range(n_init)]
        reporter = progress.IterationReporter(len(names), names=names)
    runs = run_lloyd(data, weights, centers, workspace, checked, reporter, runs_per_fit=n_init)
    best = {}
    for i, k in enumerate(ks):
        group = range(i * n_init, (i + 1) * n_init)
        best[k] = lloyd.best_run(runs, group)
    means = {k: _label_means(runs[best[k]]) for k in ks}
    scores = score(
        data,
        weights,
        labels={k: workspace.stores[best[k]].values() for k in ks},
        centers={k: runs[best[k]].centers for k in ks},
        means=means,
        split_every=checked["split_every"],
        retries=checked["retries"],
    )
    table = _table(ks, {k: runs[best[k]] for k in ks}, scores)
    models = {k: KMeans(n_clusters=k, **params)._set_feature_names(names) for k in ks}
    chosen = {_member(k): (best[k], models[k]._result(runs[best[k]], data.shape[1])) for k in ks}
    finished = workspace.finish_members(chosen, {SWEEP_ATTR: {"n_clusters": ks, "table": table}})
    for k in ks:
        models[k]._set_result(finished[_member(k)])  # names too: the results record them
    return Sweep(table=table, models=models)


def _checked_ks(n_clusters: Iterable[int]) -> list[int]:
    if isinstance(n_clusters, int | np.integer | str):
        raise TypeError(
            f"n_clusters must be a sequence of integers (the values of k), got {n_clusters!r}"
        )
    ks = list(n_clusters)
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"n_clusters must hold integers >= 1, got {k!r}")
    if not ks:
        raise ValueError("n_clusters is empty: give at least one value of k")
    if len(set(ks)) != len(ks):
        raise ValueError(f"n_clusters holds a value of k twice: {ks}")
    return sorted(int(k) for k in ks)


def _member(k: int) -> str:
    """The member of a sweep's result group holding k's fit."""
    return f"k-{k}"


def _label_means(run: lloyd.LloydResult) -> np.ndarray:
    """The means of the final labels' clusters (the center where a cluster holds no weight)."""
    if run.label_sums is None:  # saved by every pass that ends a run (LloydState.keep_final)
        raise RuntimeError("a finished run has no totals of its final labels")
    means = run.centers.astype(np.float64)
    filled = run.label_weights > 0
    means[filled] = run.label_sums[filled] / run.label_weights[filled, None]
    return means


@dataclass
class ScoreStats:
    """One block's (or many blocks') share of one k's scores."""

    weights: np.ndarray  # (k,) weight of each cluster
    distance_sums: np.ndarray  # (k,) sum of w * distance to the cluster's mean
    sqdist_sum: float  # sum of w * squared distance to the cluster's mean
    silhouette_sum: float  # sum of w * simplified silhouette

    @staticmethod
    def combine(parts: list[ScoreStats]) -> ScoreStats:
        total = parts[0]
        for part in parts[1:]:
            total = ScoreStats(
                total.weights + part.weights,
                total.distance_sums + part.distance_sums,
                total.sqdist_sum + part.sqdist_sum,
                total.silhouette_sum + part.silhouette_sum,
            )
        return total


SCORE_TILE_ROWS = 8192  # rows whose distances to all centers are held at once


def score_block(block: Block, x, weights, *labels, states, centers, means) -> list[ScoreStats]:
    """One block's share of every k's scores (its rows' distances to means and centers)."""
    labels = [run_labels.astype(np.intp, copy=False) for run_labels in labels]
    centers64 = [run_centers.astype(np.float64) for run_centers in centers]
    others = _nearest_others(x, labels, centers64)
    w = np.empty(0) if weights is None else weights.astype(np.float64, copy=False)
    out = []
    for run_labels, run_centers, run_means, other in zip(
        labels, centers64, means, others, strict=True
    ):
        k = len(run_centers)
        cluster_weights, distance_sums = np.zeros(k), np.zeros(k)
        sqdist_sum, silhouette_sum = kernel.score_sums(
            x,
            run_labels,
            np.empty(0, dtype=np.intp) if other is None else other,
            np.ascontiguousarray(run_means),
            run_centers,
            w,
            cluster_weights,
            distance_sums,
        )
        out.append(
            ScoreStats(
                weights=cluster_weights,
                distance_sums=distance_sums,
                sqdist_sum=sqdist_sum,
                silhouette_sum=np.nan if other is None else silhouette_sum,
            )
        )
    return out


def _nearest_others(x, labels, centers64) -> list[np.ndarray | None]:
    """For each k, each row's nearest center other than its own (None for k = 1).

    Chosen by the GEMM expansion against the centers of every k at once, tile by
    tile; the distance to it is then computed directly by the caller, so a near
    tie that picks either center gives the same distance to rounding.
    """
    ks = [len(c) for c in centers64]
    every = np.concatenate(centers64)
    every_sq = np.einsum("ij,ij->i", every, every)
    every = every.astype(x.dtype)  # the GEMM in X's dtype: it only ranks the centers
    starts = np.concatenate([[0], np.cumsum(ks)])
    others = [np.empty(len(x), dtype=np.intp) if k > 1 else None for k in ks]
    for start in range(0, len(x), SCORE_TILE_ROWS):
        tile = slice(start, start + SCORE_TILE_ROWS)
        rows = np.arange(len(x[tile]))
        scores = every_sq - 2 * (x[tile] @ every.T)  # + ||x||^2: the same for every center
        for run, other in enumerate(others):
            if other is not None:
                own = scores[:, starts[run] : starts[run + 1]]
                own[rows, labels[run][tile]] = np.inf
                other[tile] = np.argmin(own, axis=1)
    return others


def score(
    X: da.Array,
    weights: da.Array | None,
    *,
    labels: dict[int, da.Array],
    centers: dict[int, np.ndarray],
    means: dict[int, np.ndarray],
    split_every: int = 8,
    retries: int = 0,
) -> dict[int, dict[str, float]]:
    """Every k's scores in one pass over X (definitions: the module docstring).

    Parameters
    ----------
    X : dask.array.Array of shape (n, d)
    weights : dask.array.Array of shape (n,), optional
    labels : dict of int to dask.array.Array of shape (n,)
        Each k's labels, chunked like X's rows.
    centers, means : dict of int to ndarray of shape (k, d)
        Each k's centers, and the means of its labels' clusters (float64).
    split_every, retries
        As for :func:`dkmeans.passes.map_reduce`.

    Returns
    -------
    dict of int to dict
        For each k, ``calinski_harabasz``, ``davies_bouldin`` and
        ``simplified_silhouette``.
    """
    ks = list(labels)
    totals = passes.map_reduce(
        score_block,
        [X, weights, *(labels[k] for k in ks)],
        combine=passes.per_run(ScoreStats.combine),
        split_every=split_every,
        retries=retries,
        centers=[centers[k] for k in ks],
        means=[np.asarray(means[k], dtype=np.float64) for k in ks],
    )
    return {k: _scores(stats, means[k]) for k, stats in zip(ks, totals, strict=True)}


def _scores(stats: ScoreStats, means: np.ndarray) -> dict[str, float]:
    """The three scores of one k from its totals."""
    present = stats.weights > 0
    n_present, total_weight = int(np.count_nonzero(present)), float(np.sum(stats.weights))
    silhouette = stats.silhouette_sum / total_weight
    if n_present < 2:
        return dict(
            calinski_harabasz=np.nan, davies_bouldin=np.nan, simplified_silhouette=silhouette
        )
    cluster_weights, cluster_means = stats.weights[present], means[present]
    overall = cluster_weights @ cluster_means / total_weight
    between = float(cluster_weights @ np.sum((cluster_means - overall) ** 2, axis=1))
    within = stats.sqdist_sum
    if within == 0:
        calinski_harabasz = 1.0  # scikit-learn's value
    else:
        calinski_harabasz = between * (total_weight - n_present) / (within * (n_present - 1))
    spread = stats.distance_sums[present] / cluster_weights
    separation = np.sqrt(
        np.sum((cluster_means[:, None, :] - cluster_means[None, :, :]) ** 2, axis=2)
    )
    if np.allclose(spread, 0) or np.allclose(separation, 0):
        davies_bouldin = 0.0  # scikit-learn's value
    else:
        separation[separation == 0] = np.inf
        ratios = (spread[:, None] + spread[None, :]) / separation
        np.fill_diagonal(ratios, -np.inf)
        davies_bouldin = float(np.mean(np.max(ratios, axis=1)))
    return dict(
        calinski_harabasz=float(calinski_harabasz),
        davies_bouldin=davies_bouldin,
        simplified_silhouette=float(silhouette),
    )


def plot_table(
    table: dict[str, np.ndarray], path: str | os.PathLike | None, check_only: bool = False
) -> None:
    """Draw inertia and the three scores against k into an image file (needs matplotlib).

    ``check_only``: only raise the ImportError (a clear message) if matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # a file, no screen
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "plotting a sweep needs matplotlib: pip install 'dkmeans[plot]' (or matplotlib)"
        ) from err
    if check_only:
        return
    panels = [
        ("inertia", "inertia (lower is tighter)"),
        ("calinski_harabasz", "Calinski-Harabasz (higher is better)"),
        ("davies_bouldin", "Davies-Bouldin (lower is better)"),
        ("simplified_silhouette", "simplified silhouette (higher is better)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (column, title) in zip(axes, panels, strict=True):
        ax.plot(table["n_clusters"], table[column], marker="o")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("k")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _table(ks: list[int], fits: dict[int, lloyd.LloydResult], scores: dict) -> dict:
    table = {
        "n_clusters": np.array(ks, dtype=np.int64),
        "inertia": np.array([fits[k].inertia for k in ks]),
        "n_iter": np.array([fits[k].n_iter for k in ks], dtype=np.int64),
        "stop_reason": np.array([fits[k].stop_reason for k in ks]),
    }
    for name in SCORE_COLUMNS:
        table[name] = np.array([scores[k][name] for k in ks], dtype=np.float64)
    return table


def table_from_attrs(saved: dict[str, list]) -> dict[str, np.ndarray]:
    """A table as a result group's attributes hold it (lists), with its columns' dtypes."""
    dtypes = {"n_clusters": np.int64, "n_iter": np.int64, "stop_reason": str}
    return {
        name: np.array(saved[name], dtype=dtypes.get(name, np.float64)) for name in TABLE_COLUMNS
    }


def load_sweep(path: str | os.PathLike, *, storage_options: dict | None = None) -> Sweep:
    """A finished sweep from its result group (as :func:`sweep` with ``checkpoint`` wrote it).

    ``storage_options``: for ``path`` an fsspec URL (as for :meth:`KMeans.fit`).
    """
    group_attrs = results.read_attrs(path, storage_options)
    if SWEEP_ATTR not in group_attrs:
        raise ValueError(f"{os.fspath(path)!r} is not the result group of a sweep")
    if results.status(path, storage_options) != "complete":
        raise ValueError(
            f"{os.fspath(path)!r} is not a complete sweep (the run that wrote it did not finish)"
        )
    saved = group_attrs[SWEEP_ATTR]
    base = os.fspath(path).rstrip("/")
    models = {
        int(k): load(f"{base}/{_member(int(k))}", storage_options=storage_options)
        for k in saved["n_clusters"]
    }
    return Sweep(table=table_from_attrs(saved["table"]), models=models)


def _read_sweep(path, data, weighted, ks, checked, n_init, storage_options) -> Sweep:
    """A finished sweep found at ``path`` on resume: the same sweep, or an error."""
    expected = fit_fingerprint(data, weighted, ks, n_init, checked)
    saved = results.read_attrs(path, storage_options).get("fingerprint", {})
    check_fingerprint(saved, expected, path, adopt=checked["algorithm"] == "auto")
    return load_sweep(path, storage_options=storage_options)
