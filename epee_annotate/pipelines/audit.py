"""The notes job's audit (``calibration.audit``): the ``audit/`` dataset and the verdict per component.

Audited annotation rows carry ``early_label`` and ``full_label``; ``<out>/audit/`` holds one row per
audited item (early answer, full-depth answer, exit layer) and the manifest's ``audit`` field one
report per component: counts, observed rate, exact 95% upper bound, the promised bound, verdict.
"""

from __future__ import annotations

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
    sink.extra["audit"] = reports
    return reports


def exceeded(summary: Mapping[str, Any]) -> list[str]:
    """The components whose audit verdict is ``exceeded``."""
    return [task for task, report in (summary.get("audit") or {}).items() if report["verdict"] == EXCEEDED]
