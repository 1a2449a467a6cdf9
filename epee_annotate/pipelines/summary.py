"""Run summary of a batch job: counts, labels, exit layers, speed-up and throughput.

Computed from the written dataset itself (a few narrow columns read back), so it describes
exactly what a reader of the output will see. Written as ``summary.json`` and ``summary.png``
beside the dataset (``publish.JobSink.write_file``), never among its Parquet files.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .schema import INPUT_TASK, STATUS_ERROR, STATUSES

if TYPE_CHECKING:
    from .publish import JobSink

SUMMARY_JSON = "summary.json"
SUMMARY_PNG = "summary.png"
_COLUMNS = ["doc_id", "task", "kind", "status", "label", "exit_layer", "num_layers", "start", "end", "head_start",
            "head_end", "tail_start", "tail_end", "frame", "rule"]
# What one record's rows never repeat (one row per span, pair or frame and task): a row repeated under
# one id is another record with that id.
_ROW_KEY = ["doc_id", "task", "kind", "start", "end", "head_start", "head_end", "tail_start", "tail_end", "frame",
            "label", "status"]


def read_output(dataset_dir: str | Path, partitioned: bool = False, columns: list[str] | None = None) -> pa.Table:
    """The written dataset (or some columns of it) as one table."""
    import pyarrow.dataset as pads

    from ..storage import resolve

    filesystem, path = resolve(dataset_dir)
    dataset = pads.dataset(path, format="parquet", filesystem=filesystem, partitioning="hive" if partitioned else None)
    table = dataset.to_table(columns=columns)
    if partitioned and "task" in table.column_names and pa.types.is_dictionary(table.schema.field("task").type):
        table = table.set_column(table.schema.get_field_index("task"), "task", table.column("task").cast(pa.string()))
    return table


def summarize(dataset_dir: str | Path, partitioned: bool, timings: dict[str, float], job: str) -> dict[str, Any]:
    """Summary dict of the dataset in ``dataset_dir``; ``timings`` holds wall_s, pipeline_s, ray_start_s."""
    frame = read_output(dataset_dir, partitioned, _COLUMNS).to_pandas()
    # One document = one record: distinct ids, plus rows without an id (each a separate bad input),
    # plus the records that repeat an id.
    repeats = _records_per_id(frame)
    documents = int(frame["doc_id"].nunique()) + int(frame["doc_id"].isna().sum()) + int((repeats - 1).sum())
    status = {s: int((frame["status"] == s).sum()) for s in STATUSES}
    # A bad record (or unreadable file) is one error row about the whole input: task "input" for notes,
    # kind "image" for images (a frame's error is that frame's).
    whole = frame["task"] == INPUT_TASK if job != "images" else frame["kind"] == "image"
    bad_records = int(((frame["status"] == STATUS_ERROR) & whole).sum())
    tasks: dict[str, Any] = {}
    answered = frame[frame["exit_layer"].notna() & frame["task"].notna()]
    for task, group in answered.groupby("task", sort=True):
        layers = group["exit_layer"].astype(int)
        num_layers = int(group["num_layers"].max())
        mean_layer = float(layers.mean())
        tasks[str(task)] = {
            "rows": int(len(group)),
            "labels": {str(k): int(v) for k, v in group["label"].value_counts().sort_index().items()},
            "num_layers": num_layers,
            "exit_layers": {int(k): int(v) for k, v in layers.value_counts().sort_index().items()},
            "mean_exit_layer": round(mean_layer, 4),
            "layer_speedup": round(num_layers / mean_layer, 4),
        }
    # Rows a rule answered without the model (exit_layer null): counted apart, outside the layer speed-up.
    ruled = frame[frame["rule"].notna()]
    rule_rows = {str(task): {str(k): int(v) for k, v in group["rule"].value_counts().sort_index().items()}
                 for task, group in ruled.groupby("task", sort=True)}
    overall = None
    if len(answered):
        overall = round(float(answered["num_layers"].astype(int).sum()) / float(answered["exit_layer"].astype(int).sum()), 4)
    pipeline_s = max(timings.get("pipeline_s", 0.0), 1e-9)
    unit = "images" if job == "images" else "docs"
    annotated = int(frame["kind"].isin(["image", "frame"]).sum()) if job == "images" else documents
    return {
        "job": job,
        "rows": int(len(frame)),
        "documents": documents,
        "bad_records": bad_records,
        "duplicate_ids": {"ids": int((repeats > 1).sum()), "extra_records": int((repeats - 1).sum())},
        "rows_per_status": status,
        "tasks": tasks,
        "rule_rows": rule_rows,
        "layer_speedup": overall,
        "throughput": {
            **{k: round(v, 3) for k, v in timings.items()},
            f"{unit}_per_s": round(annotated / pipeline_s, 3),
            "docs_per_s": round(documents / pipeline_s, 3),
            "rows_per_s": round(len(frame) / pipeline_s, 3),
        },
    }


def _records_per_id(frame) -> "pd.Series":  # noqa: F821
    """How many records each id had, as far as the rows show: the most times one row repeats under it.

    A lower bound: two records with one id whose rows all differ (other text) look like one.
    """
    rows = frame[frame["doc_id"].notna()]
    if rows.empty:
        return rows.groupby("doc_id").size()
    return rows.groupby(_ROW_KEY, dropna=False, observed=True).size().groupby(level="doc_id").max()


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable summary lines (counts only: no text, no ids)."""
    t = summary["throughput"]
    status = ", ".join(f"{k} {v}" for k, v in summary["rows_per_status"].items())
    lines = [
        f"{summary['job']} job: {summary['documents']} inputs -> {summary['rows']} rows ({status})",
        f"time: {t.get('pipeline_s', 0):.1f} s read+annotate+write (wall {t.get('wall_s', 0):.1f} s); "
        f"{t['docs_per_s']:.1f} inputs/s, {t['rows_per_s']:.1f} rows/s"
        + (f", {t['images_per_s']:.1f} images/s" if "images_per_s" in t else ""),
    ]
    duplicates = summary.get("duplicate_ids") or {}
    if duplicates.get("ids"):
        lines.append(f"duplicate ids: {duplicates['ids']} id(s) held by more than one record "
                     f"({duplicates['extra_records']} extra record(s); at least, as the rows show)")
    skipped = summary.get("skipped_files") or {}
    if skipped.get("count"):
        reasons = "; ".join(f"{n} {reason}" for reason, n in skipped["reasons"].items())
        lines.append(f"skipped {skipped['count']} listed file(s), not read: {reasons} (named in summary.json)")
    for task, info in summary["tasks"].items():
        labels = ", ".join(f"{k} {v}" for k, v in info["labels"].items())
        histogram = " ".join(f"L{k}:{v}" for k, v in info["exit_layers"].items())
        lines.append(
            f"  {task}: {info['rows']} rows; mean exit layer {info['mean_exit_layer']:.2f}/{info['num_layers']} "
            f"(speed-up x{info['layer_speedup']:.2f}); exits {histogram}; labels {labels}"
        )
    for task, rules in (summary.get("rule_rows") or {}).items():
        counts = ", ".join(f"{k} {v}" for k, v in rules.items())
        lines.append(f"  {task}: {sum(rules.values())} more rows answered by rules without the model ({counts})")
    lines += audit_lines((summary.get("audit") or {}).get("components") or {})
    if summary.get("dataset"):
        lines.append(f"dataset: {summary['dataset']}")
    for name, location in summary.get("datasets", {}).items():
        lines.append(f"{name}: {location}")
    return "\n".join(lines)


def audit_lines(reports: dict[str, Any]) -> list[str]:
    """One line per audited component: counts, observed rate, its 95% upper bound, the promise, the verdict."""
    lines = []
    for task, r in reports.items():
        if not r["audited"]:
            seen = "no item audited"
        else:
            seen = (f"{r['audited']} items audited, {r['disagreements']} disagree with full depth (rate "
                    f"{r['observed_rate']:.4f}, 95% upper bound {r['upper_bound']:.4f})")
        promise = (f"promised <= {r['promised_bound']:.4f}" if r["promised_bound"] is not None
                   else f"no promised bound: {r['promised_by']}")
        verdict = r["verdict"].upper()
        if r.get("n_needed"):
            verdict += f" (about {r['n_needed']} audited items needed in all)"
        lines.append(f"  audit {task} ({r['fraction']:.3g} of docs): {seen}; {promise}: {verdict}")
    return lines


def plot_summary(summary: dict[str, Any]) -> bytes:
    """Exit-layer histogram per task and rows per status, as PNG bytes (Agg canvas: no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    tasks = summary["tasks"]
    width = 0.8 / max(len(tasks), 1)
    for i, (task, info) in enumerate(tasks.items()):
        layers = list(range(1, info["num_layers"] + 1))
        total = max(info["rows"], 1)
        counts = [info["exit_layers"].get(m, 0) / total for m in layers]
        left.bar([m + (i - (len(tasks) - 1) / 2) * width for m in layers], counts, width=width,
                 label=f"{task} (x{info['layer_speedup']:.2f})")
    left.set_xlabel("exit layer")
    left.set_ylabel("share of rows")
    left.set_title("Exit layers")
    if tasks:
        left.legend(fontsize=8)
    statuses = summary["rows_per_status"]
    right.bar(list(statuses), list(statuses.values()), color=["tab:green", "tab:gray", "tab:red"])
    right.set_title("Rows per status")
    title = f"{summary['job']} job: {summary['documents']} inputs, {summary['rows']} rows"
    audits = (summary.get("audit") or {}).get("components") or {}
    verdicts = "; ".join(f"{task} {r['verdict']}" for task, r in audits.items())
    fig.suptitle(title + (f"\naudit of the early answers: {verdicts}" if verdicts else ""), fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_summary(summary: dict[str, Any], sink: JobSink) -> None:
    """``summary.json`` and ``summary.png`` beside the job's datasets (local or object storage)."""
    sink.write_file(SUMMARY_JSON, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    sink.write_file(SUMMARY_PNG, plot_summary(summary))
