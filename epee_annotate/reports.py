"""Write an evaluation report: ``report.json`` (every number), ``report.md`` (tables) and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from .evaluation import pareto_front
from .policies import families

HEADERS = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "micro_f1_positive": "micro-F1 (pos.)",
}


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _policy_rows(report: dict[str, Any], entries: Sequence[tuple[str, dict[str, Any]]]) -> str:
    metrics = report["metric_names"]
    timing = (report.get("timing") or {}).get("policies", {})
    headers = ["setting", *[HEADERS[m] for m in metrics], "mean exit layer", "speedup", "saved_fraction",
               "disagreement", "wall s", "wall speed-up", "CPU s", "CPU speed-up"]
    rows = []
    for label, row in entries:
        measured = timing.get(label) or {}
        rows.append([label if label == row["name"] else f"{label}: {row['name']}",
                     *[_num(row[m]) for m in metrics], _num(row["mean_exit_layer"], 2), _num(row["speedup"], 3),
                     _num(row["saved_fraction"], 3), _num(row["disagreement"]),
                     _num(measured.get("seconds"), 2), _num(measured.get("wall_speedup"), 2),
                     _num(measured.get("cpu_seconds"), 2), _num(measured.get("cpu_speedup"), 2)])
    return _table(headers, rows)


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    sections = (_header, _selected_section, _budgeted_section, _dynamic_section, _calibration_section, _plots_section)
    return "\n".join(line for section in sections for line in section(report))


def _header(report: dict[str, Any]) -> list[str]:
    checkpoint, data = report.get("checkpoint", {}), report.get("data") or {}
    out = ["# Evaluation report", ""]
    if checkpoint:
        out.append(f"- checkpoint: `{checkpoint.get('id')}` ({checkpoint.get('task')}, "
                   f"{checkpoint.get('num_layers')} exits, labels {checkpoint.get('labels')})")
    if data:
        where = Path(data["path"]).name if data.get("path") else "in-memory inputs"
        part = "" if data.get("part", "all") == "all" else \
            f", {data['part']} part of a split (fraction {data.get('fraction')}, seed {data.get('seed')})"
        out.append(f"- data: `{where}` (format {data.get('format')}, split {data.get('split')}{part})")
    out.append(f"- n = {report['n']}; gold label counts: {report.get('gold_counts')}")
    if report.get("rule_rows"):
        out.append(f"- {report['rule_rows']} of the {report['n']} rows were answered by the negative rules before the "
                   "model (as epee_ddi does): they count in every quality figure, not in layers or timing")
    negative = report.get("negative_label")
    source = f" ({report['metric_source']})" if report.get("metric_source") else ""
    out.append(f"- main metric: {report['metric']}{source}"
               + (f"; positive-class micro-F1 excludes `{negative}`" if negative else ""))
    out.append("- speedup = M / mean exit layer; saved_fraction = 1 - sum(exit layers) / (N x M) (EPEE paper Eq. 5); "
               "disagreement = share of answers that differ from the last exit's answer")
    out += [f"- **{warning}**" for warning in report.get("warnings", [])]
    return out + [""]


def _selected_section(report: dict[str, Any]) -> list[str]:
    out = ["## Full depth and the selected setting", ""]
    entries = [("full_depth", report["full_depth"])]
    if "selected" in report:
        entries.append(("selected", report["selected"]))
    out += [_policy_rows(report, entries), ""]
    if report.get("selected_source"):
        out += [f"Selected setting from: {report['selected_source']}.", ""]
    timing = report.get("timing")
    if timing:
        out += [f"Wall-clock times: real early-exit `model.predict` on {timing['device']}, batch size "
                f"{timing['batch_size']}, fastest of {timing.get('repeats', 1)} interleaved runs each, after a "
                "warm-up batch; wall speed-up = full-depth seconds / seconds; CPU = process CPU time (all threads).", ""]
    return out


def _budgeted_section(report: dict[str, Any]) -> list[str]:
    metrics = report["metric_names"]
    return ["## Budgeted mode (every input exits at layer m)", "",
            _table(["exit layer", *[HEADERS[m] for m in metrics], "mean entropy", "speedup", "disagreement"],
                   [[r["layer"], *[_num(r[m]) for m in metrics], _num(r["mean_entropy"]), _num(r["speedup"], 2),
                     _num(r["disagreement"])] for r in report["budgeted"]]), ""]


def _dynamic_section(report: dict[str, Any]) -> list[str]:
    dynamic = report.get("dynamic")
    if not dynamic:
        return []
    metric, metrics = report["metric"], report["metric_names"]
    out = ["## Dynamic mode", "",
           f"Grid: entropy thresholds tau in {dynamic['taus']}, patience P in {dynamic['patiences']}. "
           "EPEE exits when normalized entropy < tau OR the same class won P consecutive exits; "
           f"tau = 0 is patience only, P = {report['num_layers']} is entropy only. "
           "BEEM adds each exit's confidence weighted by m/M while the class holds and exits when the "
           "sum reaches its threshold.", ""]
    for family in families():
        if not dynamic.get(family.name):
            continue
        front = pareto_front(dynamic[family.name], metric)
        wall = "wall_speedup" in front[0]
        out += [f"### Pareto front ({HEADERS[metric]} vs speed-up): {family.title}", "",
                _table(["setting", *[HEADERS[m] for m in metrics], "speedup", "saved_fraction", "disagreement"]
                       + (["wall speed-up"] if wall else []),
                       [[r["name"], *[_num(r[m]) for m in metrics], _num(r["speedup"], 3),
                         _num(r["saved_fraction"], 3), _num(r["disagreement"])]
                        + ([_num(r["wall_speedup"], 2)] if "wall_speedup" in r else []) for r in front]), ""]
    for key, title, digits in ((metric, HEADERS[metric], 4), ("speedup", "speed-up", 2),
                               ("disagreement", "disagreement", 4)):
        cells = {(r["entropy"], r["patience"]): r[key] for r in dynamic["epee"]}
        out += [f"### EPEE grid: {title} (rows tau, columns P)", "",
                _table(["tau \\ P", *map(str, dynamic["patiences"])],
                       [[f"{t:g}", *[_num(cells[(t, p)], digits) for p in dynamic["patiences"]]]
                        for t in dynamic["taus"]]), ""]
    return out


def _calibration_section(report: dict[str, Any]) -> list[str]:
    calibration = (report.get("checkpoint") or {}).get("calibration")
    if not calibration:
        return []
    goal = calibration.get("goal", {})
    out = ["## Calibration record of the checkpoint", "",
           f"- goal: {goal.get('kind')} = {goal.get('value')} (metric {goal.get('metric')}, "
           f"confidence {goal.get('confidence')}); chosen {calibration.get('policy_name')}",
           f"- calibration n = {calibration.get('n')}, grid of {calibration.get('grid_size')}; "
           f"promised disagreement bound {_num(calibration.get('disagreement_bound'))} "
           f"({calibration.get('correction')}, confidence {calibration.get('confidence')})"]
    if calibration.get("guarantee"):
        out.append(f"- guarantee: {calibration['guarantee']}")
    out += [f"- note: {note}" for note in calibration.get("notes") or []]
    return out + [""]


def _plots_section(report: dict[str, Any]) -> list[str]:
    plots = report.get("plots") or []
    if not plots:
        return []
    return ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]


def _clean(value: Any) -> Any:
    """JSON-safe values (inf/nan become strings rather than invalid JSON)."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_report(report: dict[str, Any], directory: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write report.json, report.md and (optionally) the PNG plots into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if plots:
        from .plots import write_plots

        for path in write_plots(report, directory):
            paths[path.stem] = path
        report["plots"] = [path.name for path in paths.values()]
    paths["json"] = directory / "report.json"
    paths["json"].write_text(json.dumps(_clean(report), indent=2) + "\n")
    paths["markdown"] = directory / "report.md"
    paths["markdown"].write_text(render_markdown(report) + "\n")
    return paths
