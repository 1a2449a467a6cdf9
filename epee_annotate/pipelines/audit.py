"""The notes job's audit (``calibration.audit``): the ``audit/`` dataset and the verdict per component.

Audited annotation rows carry ``early_label`` and ``full_label``; ``<out>/audit/`` holds one row per
audited item (early answer, full-depth answer, exit layer) and the manifest's ``audit`` field
``{"created", "components": {task: report}}``, a report per component: counts, observed rate,
exact 95% upper bound, the promised bound, verdict. ``audit_report`` gathers them over job outputs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ..calibration.audit import EXCEEDED, AuditCounter
from .derived import write_derived

DATASET = "audit"
AUDIT_SCHEMA = pa.schema([
    pa.field("doc_id", pa.string()), pa.field("task", pa.string()), pa.field("kind", pa.string()),
    pa.field("start", pa.int32()), pa.field("end", pa.int32()), pa.field("head_start", pa.int32()),
    pa.field("tail_start", pa.int32()), pa.field("early_label", pa.string()), pa.field("full_label", pa.string()),
    pa.field("exit_layer", pa.int16()), pa.field("num_layers", pa.int16()), pa.field("agree", pa.bool_()),
])


def write_audit(sink, components: Sequence[Mapping[str, Any]], partitioned: bool, annotations: str) -> dict[str, Any]:
    """Write ``audit/`` from the staged ``annotations``; returns the per-component reports (also in the manifest)."""
    counters = {c["task"]: AuditCounter(c.get("promised_bound"), c.get("promised_by", "")) for c in components
                if c.get("audit_fraction")}

    def derive(table: pa.Table) -> pa.Table:
        table = table.filter(pc.is_valid(table.column("full_label")))
        agree = pc.equal(table.column("early_label"), table.column("full_label"))
        rows = table.append_column("agree", agree).select(AUDIT_SCHEMA.names).cast(AUDIT_SCHEMA)
        for row in rows.select(["task", "early_label", "full_label", "exit_layer"]).to_pylist():
            counters[row["task"]].add(row["early_label"], row["full_label"], row["exit_layer"])
        return rows

    write_derived(sink, DATASET, annotations, partitioned, [n for n in AUDIT_SCHEMA.names if n != "agree"], derive,
                  AUDIT_SCHEMA)
    fractions = {c["task"]: c["audit_fraction"] for c in components}
    reports = {task: {**counter.report(), "fraction": fractions[task],
                      "by_exit_layer": {str(k): v for k, v in sorted(counter.by_exit_layer.items())}}
               for task, counter in counters.items()}
    sink.extra["audit"] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "components": reports}
    return reports


def exceeded(summary: Mapping[str, Any]) -> list[str]:
    """The components whose audit verdict is ``exceeded``."""
    return [task for task, report in _components(summary).items() if report["verdict"] == EXCEEDED]


def _components(record: Mapping[str, Any]) -> dict[str, Any]:
    return dict((record.get("audit") or {}).get("components") or {})


REPORT_COLUMNS = ["output", "created", "task", "fraction", "audited", "disagreements", "observed_rate",
                  "upper_bound", "promised_bound", "verdict", "n_needed"]


def audit_table(outputs: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (job output, audited component), oldest run first; outputs without an audit are refused."""
    from .publish import read_manifest

    rows = []
    for out in outputs:
        manifest = read_manifest(out)
        if not _components(manifest):
            raise ValueError(f"{out!r} has no audit (run with --audit-fraction, or a calibrated checkpoint)")
        created = manifest["audit"].get("created", "")
        for task, report in sorted(_components(manifest).items()):
            rows.append({"output": str(out), "created": created, "task": task,
                         **{k: report.get(k) for k in REPORT_COLUMNS[3:]}})
    return sorted(rows, key=lambda r: (r["created"], r["output"], r["task"]))


def format_audit_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table as aligned text."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "-" if value is None else str(value)

    table = [REPORT_COLUMNS] + [[cell(row[c]) for c in REPORT_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(REPORT_COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)


def plot_audit(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Observed disagreement rate, its 95% upper bound and the promised bound per run, as PNG (Agg canvas)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots()
    runs = sorted({(r["created"], r["output"]) for r in rows})
    position = {run: i for i, run in enumerate(runs)}
    for index, task in enumerate(sorted({r["task"] for r in rows})):
        color = f"C{index}"
        mine = [r for r in rows if r["task"] == task]
        x = [position[(r["created"], r["output"])] for r in mine]
        axes.plot(x, [r["observed_rate"] for r in mine], "o-", color=color, label=f"{task}: observed rate")
        axes.plot(x, [r["upper_bound"] for r in mine], "v--", color=color, alpha=0.7, label=f"{task}: 95% upper bound")
        axes.step(x, [r["promised_bound"] for r in mine], ":", where="mid", color=color, label=f"{task}: promised")
        for xi, r in zip(x, mine):
            if r["verdict"] == EXCEEDED:
                axes.annotate("exceeded", (xi, r["upper_bound"] or 0), fontsize=7, color="tab:red")
    axes.set_xticks(range(len(runs)), [created[:10] or Path(out).name for created, out in runs], rotation=30,
                    fontsize=8)
    axes.set_ylabel("disagreement with full depth")
    axes.set_title("Early answers vs full depth over runs")
    axes.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
