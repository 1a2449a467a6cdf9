"""PNG plots of an evaluation report (matplotlib, Agg; drawn from the report dict alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .evaluation import pareto_front
from .policies import families

LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1_positive": "micro-F1 (positive classes)"}


def _figure(width: float, height: float) -> Figure:
    # A bare Figure with an Agg canvas: no pyplot global state, safe in threads and servers.
    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def plot_exits(report: dict[str, Any], path: str | Path) -> Path:
    """Budgeted mode: each metric and the mean normalized entropy at every exit."""
    rows = report["budgeted"]
    layers = [r["layer"] for r in rows]
    figure = _figure(6.4, 4.0)
    axis = figure.add_subplot()
    for name in report["metric_names"]:
        axis.plot(layers, [r[name] for r in rows], marker="o", label=LABELS.get(name, name))
    axis.set_xlabel("exit layer")
    axis.set_ylabel("score")
    axis.set_xticks(layers)
    axis.grid(alpha=0.3)
    entropy_axis = axis.twinx()
    entropy_axis.plot(layers, [r["mean_entropy"] for r in rows], color="tab:gray", linestyle="--", marker="x",
                      label="mean normalized entropy")
    entropy_axis.set_ylabel("mean normalized entropy")
    entropy_axis.set_ylim(0, max(1e-3, max(r["mean_entropy"] for r in rows)) * 1.1)
    handles = axis.get_legend_handles_labels()[0] + entropy_axis.get_legend_handles_labels()[0]
    names = axis.get_legend_handles_labels()[1] + entropy_axis.get_legend_handles_labels()[1]
    axis.legend(handles, names, loc="lower right", fontsize=8)
    axis.set_title(f"Budgeted mode: every input exits at layer m (n={report['n']})")
    figure.tight_layout()
    return _save(figure, path)


def grid_matrix(report: dict[str, Any], key: str) -> np.ndarray:
    """EPEE grid values as a (len(taus), len(patiences)) matrix."""
    dynamic = report["dynamic"]
    taus, patiences = dynamic["taus"], dynamic["patiences"]
    matrix = np.full((len(taus), len(patiences)), np.nan)
    for row in dynamic["epee"]:
        matrix[taus.index(row["entropy"]), patiences.index(row["patience"])] = row[key]
    return matrix


def plot_heatmaps(report: dict[str, Any], path: str | Path, metric: str | None = None) -> Path:
    """Heat maps of the metric and the speed-up over the (tau, P) grid."""
    metric = metric or report["metric"]
    dynamic = report["dynamic"]
    taus, patiences = dynamic["taus"], dynamic["patiences"]
    figure = _figure(11.0, max(3.5, 0.32 * len(taus) + 1.5))
    for position, (key, title, cmap) in enumerate(
        [(metric, LABELS.get(metric, metric), "viridis"), ("speedup", "speed-up (M / mean exit layer)", "magma")], 1
    ):
        axis = figure.add_subplot(1, 2, position)
        matrix = grid_matrix(report, key)
        image = axis.imshow(matrix, aspect="auto", origin="lower", cmap=cmap)
        figure.colorbar(image, ax=axis, fraction=0.046)
        axis.set_xticks(range(len(patiences)), [str(p) for p in patiences])
        axis.set_yticks(range(len(taus)), [f"{t:g}" for t in taus])
        axis.set_xlabel("patience P")
        axis.set_ylabel("entropy threshold tau")
        axis.set_title(title)
        if matrix.size <= 400:
            middle = np.nanmean(matrix)
            for (i, j), value in np.ndenumerate(matrix):
                axis.text(j, i, f"{value:.3f}" if key != "speedup" else f"{value:.2f}", ha="center", va="center",
                          fontsize=6, color="white" if value < middle else "black")
    figure.suptitle(f"EPEE grid (n={report['n']}; tau=0 row: patience only; P={report['num_layers']}: entropy only)",
                    fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def plot_frontier(report: dict[str, Any], path: str | Path, metric: str | None = None) -> Path:
    """Metric vs speed-up of every grid point, with each family's Pareto front."""
    metric = metric or report["metric"]
    figure = _figure(6.4, 4.4)
    axis = figure.add_subplot()
    for family in families():  # legend and style come from each policy's registration
        label, color, marker = family.title, family.color, family.marker
        rows = report["dynamic"].get(family.name)
        if not rows:  # reports written before a family existed
            continue
        axis.scatter([r["speedup"] for r in rows], [r[metric] for r in rows], s=12, alpha=0.3, color=color,
                     marker=marker)
        front = pareto_front(rows, metric)
        axis.plot([r["speedup"] for r in front], [r[metric] for r in front], color=color, marker=marker,
                  markersize=4, label=label, drawstyle="steps-pre")  # the staircase of attainable points
    full = report["full_depth"]
    axis.scatter([full["speedup"]], [full[metric]], marker="*", s=140, color="black", zorder=5,
                 label="full depth (last exit)")
    if "selected" in report:
        chosen = report["selected"]
        axis.scatter([chosen["speedup"]], [chosen[metric]], marker="D", s=60, facecolor="none", edgecolor="red",
                     linewidth=1.5, zorder=6, label=f"selected: {chosen['name']}")
    axis.set_xlabel("speed-up (M / mean exit layer)")
    axis.set_ylabel(LABELS.get(metric, metric))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    axis.set_title(f"Quality / speed-up trade-off (n={report['n']})")
    figure.tight_layout()
    return _save(figure, path)


def write_plots(report: dict[str, Any], directory: str | Path, metric: str | None = None) -> list[Path]:
    """All plots the report supports, as PNG files in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [plot_exits(report, directory / "exits.png")]
    if "dynamic" in report:
        paths.append(plot_heatmaps(report, directory / "grid_heatmaps.png", metric))
        paths.append(plot_frontier(report, directory / "frontier.png", metric))
    return paths


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    figure.savefig(path)
    return path
