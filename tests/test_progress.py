"""Progress reports of a verbose fit: printed lines, log records, a live table in Jupyter."""

import logging
import sys
import types

import numpy as np
import pytest
from distributed import Client, LocalCluster

from dkmeans import KMeans, progress
from tests.conftest import general_position_init


class FakeHandle:
    def __init__(self):
        self.shown = []

    def update(self, html):
        self.shown.append(html.data)


@pytest.fixture
def fake_notebook(monkeypatch):
    """Pretend to run in a Jupyter kernel; collect what the display would show."""
    handle = FakeHandle()

    def display(html, display_id):
        assert display_id is True
        handle.shown.append(html.data)
        return handle

    module = types.ModuleType("IPython.display")
    module.HTML = lambda data: types.SimpleNamespace(data=data)
    module.display = display
    monkeypatch.setitem(sys.modules, "IPython.display", module)
    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    return handle


def test_verbose_fit_in_jupyter_updates_one_display(blobs, fake_notebook, capsys):
    model = KMeans(5, init=general_position_init(blobs, 5, 1), verbose=True).fit(blobs)
    assert capsys.readouterr().out == ""  # the table, not printed lines
    shown = fake_notebook.shown
    assert len(shown) == 1 + model.n_iter_ + 1  # empty table, each iteration, the end
    assert "running" in shown[1] and f"<td>{model.n_iter_}</td>" in shown[-2]
    assert f"stopped: {model.stop_reason_} after {model.n_iter_} iterations" in shown[-1]
    assert "dashboard" not in shown[-1]  # no distributed Client here


@pytest.mark.distributed
def test_display_links_the_dask_dashboard(blobs, fake_notebook):
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        KMeans(5, init=general_position_init(blobs, 5, 1), max_iter=2, verbose=True).fit(blobs)
        assert f'<a href="{client.dashboard_link}"' in fake_notebook.shown[-1]


def test_verbose_fit_goes_through_the_dkmeans_logger_when_it_has_a_handler(blobs, capsys):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("dkmeans")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        model = KMeans(5, init=general_position_init(blobs, 5, 1), verbose=True).fit(blobs)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert capsys.readouterr().out == ""
    messages = [r.getMessage() for r in records]
    choices = [m for m in messages if "memory up to" in m or m.startswith("algorithm 'auto'")]
    assert sorted(choice.split(":")[0] for choice in choices) == [
        "algorithm 'auto'",
        "label store",
    ]
    assert all(": memory (" in c or ": 'bounded' (" in c for c in choices)  # what, and why
    lines = [m for m in messages if m not in choices]
    assert [line.split()[1] for line in lines[:-1]] == [
        str(i) for i in range(1, model.n_iter_ + 1)
    ]
    assert lines[-1].startswith("stopped:")
    assert np.isclose(float(lines[0].split()[3]), model.history_[0]["objective"], rtol=1e-9)
