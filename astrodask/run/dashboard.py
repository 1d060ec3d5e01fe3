"""The astrodask page of the Dask dashboard: ``/astrodask``, in the dashboard's top menu.

A Bokeh application served by the scheduler's HTTP server beside distributed's own pages, built
the way distributed builds them (:mod:`distributed.dashboard.scheduler`): a document function of
``(scheduler, extra, doc)`` wrapped in distributed's ``BokehApplication`` and added to the
scheduler's ``http_application``, with distributed's page template and theme. Its name joins the
template's ``pages`` (the menu bar every dashboard page shows) and its "More..." list.

The page shows, from :meth:`astrodask.run.monitor.BacklogMonitor.snapshot` and refreshed every
:data:`REFRESH_MS`: the backlog's progress (solved, failed, running, pending), the solve rate and
the time left, the failures with their reasons, the mean seconds per stage, and the distributions
of the residual rms and chi2/dof of the solved exposures.
"""

from __future__ import annotations

import html
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bokeh.document import Document
    from distributed import Scheduler

log = logging.getLogger(__name__)

#: The page's route on the dashboard.
PAGE_ROUTE = "/astrodask"
#: Its name in the menus.
PAGE_NAME = "astrodask"
#: Milliseconds between refreshes.
REFRESH_MS = 1000
#: Bins of the residual-rms and chi2/dof histograms.
HISTOGRAM_BINS = 20
#: Colours of the statuses on the progress bar.
STATUS_COLOURS = {"solved": "#2ca02c", "failed": "#d62728", "running": "#ff7f0e", "pending": "#c7c7c7"}
#: Width of the page's plots, pixels.
PLOT_WIDTH = 560
#: Height of the page's plots, pixels.
PLOT_HEIGHT = 260


def headline(snapshot: dict[str, Any]) -> str:
    """The page's headline (HTML): exposures by status, rate and time left."""
    c = snapshot["counts"]
    eta = snapshot["eta_s"]
    left = "unknown" if eta is None else f"{int(eta) // 3600:d}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}"
    return (f"<h2>astrodask backlog</h2><p style='font-size:15px'><b>{snapshot['done']} of {c['total']} "
            f"exposures done</b>: <span style='color:{STATUS_COLOURS['solved']}'>{c['solved']} solved</span>, "
            f"<span style='color:{STATUS_COLOURS['failed']}'>{c['failed']} failed</span>, {c['running']} running, "
            f"{c['pending']} pending &middot; {snapshot['rate_per_min']:.2f} exposures/min &middot; "
            f"time left {left} &middot; {snapshot['archive_queries']} archive queries, "
            f"{snapshot['tiles']['read']} cache tiles read, {snapshot['tiles']['filled']} filled, "
            f"{snapshot['tiles']['failed']} failed</p>")


def failures_html(snapshot: dict[str, Any]) -> str:
    """The failures with their stage and reason, as an HTML table."""
    rows = "".join(f"<tr><td>{html.escape(f['name'])}</td><td>{html.escape(f['stage'])}</td>"
                   f"<td>{html.escape(f['reason'])}</td></tr>" for f in snapshot["failures"])
    return ("<h3>Failures</h3><table style='font-size:12px'><tr><th align=left>exposure</th>"
            f"<th align=left>stage</th><th align=left>reason</th></tr>{rows}</table>" if rows
            else "<h3>Failures</h3><p>none</p>")


def histogram(values: list[float | None]) -> dict[str, list[float]]:
    """Quads of a histogram of the finite values (empty lists when there are none)."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(finite):
        return {"left": [], "right": [], "top": []}
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1.0), hi + 0.5 * (abs(hi) or 1.0)
    counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS, range=(lo, hi))
    return {"left": edges[:-1].tolist(), "right": edges[1:].tolist(), "top": counts.astype(float).tolist()}


class BacklogPage:
    """The page's models and their update from the scheduler's monitor.

    Parameters
    ----------
    scheduler
        The scheduler whose :class:`~astrodask.run.monitor.BacklogMonitor` is shown.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        from bokeh.layouts import column, row
        from bokeh.models import ColumnDataSource, Div, FactorRange
        from bokeh.plotting import figure

        from astrodask.types import Stage

        self.scheduler = scheduler
        self.headline = Div(text="", sizing_mode="stretch_width")
        self.failures = Div(text="", sizing_mode="stretch_width")
        statuses = list(STATUS_COLOURS)
        self.progress_source = ColumnDataSource({"y": ["backlog"], **{s: [0] for s in statuses}})
        self.progress = figure(y_range=["backlog"], height=110, width=2 * PLOT_WIDTH, title="Backlog progress",
                               toolbar_location=None, tools="", x_axis_label="exposures")
        self.progress.hbar_stack(statuses, y="y", height=0.8, color=list(STATUS_COLOURS.values()),
                                 source=self.progress_source, legend_label=statuses)
        self.progress.legend.orientation = "horizontal"
        self.progress.legend.location = "top_right"
        stages = [stage.value for stage in Stage]
        self.stage_source = ColumnDataSource({"stage": stages, "mean_s": [0.0] * len(stages)})
        self.stages = figure(x_range=FactorRange(*stages), height=PLOT_HEIGHT, width=PLOT_WIDTH,
                             title="Mean seconds per stage", toolbar_location=None, tools="hover",
                             tooltips=[("stage", "@stage"), ("mean", "@mean_s{0.000} s")], y_axis_label="s")
        self.stages.vbar(x="stage", top="mean_s", width=0.8, source=self.stage_source, color="#1f77b4")
        self.stages.xaxis.major_label_orientation = 0.8
        self.rms_source = ColumnDataSource(histogram([]))
        self.rms = figure(height=PLOT_HEIGHT, width=PLOT_WIDTH, title="Residual rms per axis (solved exposures)",
                          x_axis_label="mas", y_axis_label="exposures", toolbar_location=None, tools="")
        self.rms.quad(left="left", right="right", top="top", bottom=0, source=self.rms_source, color="#2ca02c")
        self.chi2_source = ColumnDataSource(histogram([]))
        self.chi2 = figure(height=PLOT_HEIGHT, width=PLOT_WIDTH, title="chi2/dof (solved exposures)",
                           x_axis_label="chi2/dof", y_axis_label="exposures", toolbar_location=None, tools="")
        self.chi2.quad(left="left", right="right", top="top", bottom=0, source=self.chi2_source, color="#9467bd")
        self.root = column(self.headline, self.progress, row(self.stages, self.rms), row(self.chi2, self.failures),
                           sizing_mode="stretch_width")

    def update(self) -> None:
        """Refresh every model from the monitor's snapshot."""
        from astrodask.run.monitor import install_monitor

        snapshot = install_monitor(self.scheduler).snapshot()
        self.headline.text = headline(snapshot)
        self.failures.text = failures_html(snapshot)
        counts = snapshot["counts"]
        self.progress_source.data = {"y": ["backlog"], **{s: [counts[s]] for s in STATUS_COLOURS}}
        stages = snapshot["stages"]
        self.stage_source.data = {"stage": list(stages), "mean_s": [v["mean_s"] for v in stages.values()]}
        self.rms_source.data = histogram([q["rms_mas"] for q in snapshot["quality"]])
        self.chi2_source.data = histogram([q["chi2_dof"] for q in snapshot["quality"]])


def backlog_doc(scheduler: Scheduler, extra: dict[str, Any], doc: Document) -> None:
    """The page's Bokeh document (distributed's signature for dashboard pages)."""
    from distributed.dashboard.components import add_periodic_callback
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    page = BacklogPage(scheduler)
    page.update()
    add_periodic_callback(doc, page, REFRESH_MS)
    doc.title = "Dask: astrodask backlog"
    doc.add_root(page.root)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


def add_page(scheduler: Scheduler) -> bool:
    """Serve :func:`backlog_doc` at :data:`PAGE_ROUTE` on the scheduler's dashboard and list it in the menus.

    Runs in the scheduler's event loop. Returns False (and logs why) when the scheduler has no
    dashboard (none asked for, or bokeh missing).
    """
    if "dashboard" not in getattr(scheduler, "services", {}) or getattr(scheduler, "http_application", None) is None:
        log.info("scheduler %s has no dashboard: no astrodask page", scheduler.address)
        return False
    try:
        from distributed.dashboard.core import BokehApplication
        from distributed.dashboard.scheduler import template_variables
    except ImportError as err:
        log.info("no astrodask dashboard page: %s", err)
        return False
    from tornado.ioloop import IOLoop

    variables = template_variables(scheduler)  # memoised per scheduler: every page's menus share these lists
    application = BokehApplication({PAGE_ROUTE: backlog_doc}, scheduler, template_variables=variables)
    scheduler.http_application.add_application(application)
    application.initialize(IOLoop.current())
    if PAGE_NAME not in variables["pages"]:
        variables["pages"].append(PAGE_NAME)
    if not any(p["url"] == PAGE_NAME for p in variables["plots"]):
        variables["plots"].insert(0, {"url": PAGE_NAME, "name": "Astrodask backlog"})
    return True
