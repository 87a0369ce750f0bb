"""Progress reports: one line per iteration, a bar during long passes, a live display in Jupyter.

The library is silent unless asked. ``KMeans(verbose=True)`` reports every
iteration: as records of the "dkmeans" logger when that logger has a handler
(the CLI installs one), else as an updating table in Jupyter (with the Dask
dashboard link when a distributed Client is active), else as printed lines.
The CLI also turns on :func:`pass_bars`, a progress bar over the blocks of
each pass.
"""

from __future__ import annotations

import contextlib
import contextvars
import html
import logging
import sys
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("dkmeans")

_bars_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("dkmeans_bars", default=False)


def format_record(record: dict) -> str:
    """One iteration's history record as one line (prefixed by its run, with n_init > 1)."""
    run = f"run {record['run']:>2}  " if "run" in record else ""
    rows = ""
    if "pass" in record:  # a bounded fit's
        rows = f"  {record['pass']:>6} pass, read {record['rows_read']:>10d}"
    return (
        f"{run}iter {record['iteration']:4d}  objective {record['objective']:.10g}  "
        f"changed {record['labels_changed']:>10d}  shift {record['center_shift']:.3e}  "
        f"{record['seconds']:.2f}s{rows}"
    )


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def _dashboard_link() -> str | None:
    try:
        from distributed import default_client

        return default_client().dashboard_link
    except (ImportError, ValueError):
        return None


class IterationReporter:
    """Reports each iteration of a verbose fit; call it with (run, history record).

    The run is named only when there are several (``n_init`` > 1): by its
    index, or by ``names[run]``.
    """

    def __init__(self, n_runs: int = 1, names: list[str] | None = None) -> None:
        self.n_runs = n_runs
        self.names = names
        self.records: list[dict] = []
        self._display: Any = None
        self._log = bool(logger.handlers)
        if not self._log and _in_notebook():
            from IPython.display import HTML, display

            self._html = HTML
            self._display = display(HTML(self._table()), display_id=True)
        else:
            link = _dashboard_link()
            if link:
                self._emit(f"Dask dashboard: {link}")

    def _emit(self, line: str) -> None:
        if self._log:
            logger.info(line)
        else:
            print(line, flush=True)

    def __call__(self, run: int, record: dict) -> None:
        if self.n_runs > 1:
            record = {**record, "run": run if self.names is None else self.names[run]}
        self.records.append(record)
        if self._display is not None:
            self._display.update(self._html(self._table()))
        else:
            self._emit(format_record(record))

    def finish(self, best: int, result: Any) -> None:
        """Report the end of the fit: why the kept run stopped, and which run it is."""
        chosen = f" (run {best} of {self.n_runs})" if self.n_runs > 1 else ""
        message = (
            f"stopped: {result.stop_reason} after {result.n_iter} iterations, "
            f"inertia {result.inertia:.6g}{chosen}"
        )
        if self._display is not None:
            self._display.update(self._html(self._table(message)))
        else:
            self._emit(message)

    def _table(self, footer: str = "running…") -> str:
        link = _dashboard_link()
        head = (
            f'<a href="{html.escape(link)}" target="_blank">Dask dashboard</a><br>' if link else ""
        )
        runs = any("run" in r for r in self.records)
        rows = "".join(
            "<tr>"
            + (f"<td>{r.get('run', '')}</td>" if runs else "")
            + f"<td>{r['iteration']}</td><td>{r['objective']:.10g}</td>"
            f"<td>{r['labels_changed']}</td><td>{r['center_shift']:.3e}</td>"
            f"<td>{r['seconds']:.2f}</td></tr>"
            for r in self.records[-10:]  # the latest few: the display stays small
        )
        return (
            f"{head}<table><tr>{'<th>run</th>' if runs else ''}<th>iteration</th>"
            "<th>objective</th><th>labels changed</th>"
            f"<th>center shift</th><th>seconds</th></tr>{rows}</table>"
            f"<p>{html.escape(footer)}</p>"
        )


@contextlib.contextmanager
def pass_bars(enabled: bool = True) -> Iterator[None]:
    """Show a progress bar over the blocks of every pass run inside this block.

    Local schedulers get Dask's ``ProgressBar`` (for computations over one
    second); under dask.distributed, :func:`watch` shows one per pass.
    """
    if not enabled:
        yield
        return
    from dask.diagnostics import ProgressBar

    token = _bars_enabled.set(True)
    try:
        with ProgressBar(minimum=1.0, out=sys.stderr):
            yield
    finally:
        _bars_enabled.reset(token)


def watch(collection: Any) -> None:
    """Show the progress of a persisted distributed collection, if bars are on."""
    if not _bars_enabled.get():
        return
    try:
        from distributed import futures_of, progress
    except ImportError:
        return
    if futures_of(collection):
        progress(collection, multi=False, notebook=False)
