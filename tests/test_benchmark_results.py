"""benchmarks.run: skipped tasks keep earlier rows, runs edit no tracked file; the GPU check's CPU fallback."""

import json

import pytest

from benchmarks.run import earlier_memory, earlier_tasks, markdown


def row(method, throughput):
    return {"method": method, "metric": "accuracy", "accuracy": 0.9, "macro_f1": 0.8, "mean_exit_layer": 6.0,
            "layer_speedup": 1.0, "bs1_mean_ms": None, "bs1_p95_ms": None, "wall_speedup_bs1": None,
            "ratio_bs1": None, "throughput": throughput, "throughput_min": throughput, "throughput_max": throughput,
            "wall_speedup_batched": 1.0, "ratio_batched": 1.0}


def test_skipped_tasks_keep_their_rows_marked_with_their_run(tmp_path):
    previous = {"machine": "old box", "command": "python -m benchmarks.run --only B", "memory": "actor: 500 MiB",
                "tasks": [{"task": name, "report_examples": 10, "timed_examples": 10,
                           "rows": [row("full depth (last exit)", 100.0)]} for name in ("A", "B")]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(previous))
    kept = earlier_tasks(path, measured={"A"})
    assert [t["task"] for t in kept] == ["B"]
    assert kept[0]["earlier_run"] == {"command": "python -m benchmarks.run --only B", "machine": "old box"}
    assert earlier_memory(path) == "actor: 500 MiB (earlier run)"
    assert earlier_tasks(tmp_path / "missing.json", set()) == []
    fresh = {"task": "A", "report_examples": 10, "timed_examples": 10, "rows": [row("full depth (last exit)", 120.0)]}
    text = markdown({"machine": "new box", "command": "python -m benchmarks.run", "tasks": [fresh, *kept], "memory": ""})
    a, b = text.split("**B**")
    assert "not re-run" not in a and "120.0" in a
    assert "not re-run: from an earlier run" in b and "python -m benchmarks.run --only B" in b and "old box" in b


def _tracked_state(root):
    """Content hashes of every tracked file (the working tree as git sees it)."""
    import hashlib
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.split(b"\0")
    return {f: hashlib.sha256((root / f.decode()).read_bytes()).hexdigest()
            for f in files if f and (root / f.decode()).is_file()}


def test_a_run_on_a_tiny_model_edits_no_tracked_file(model_factory, tmp_path):
    import shutil
    from pathlib import Path

    from benchmarks import run
    from conftest import make_texts
    from epee_annotate import BudgetedExit

    root = Path(run.__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs a git checkout")
    assert run.make_parser().get_default("out") == run.DEFAULT_OUT  # runs/ is ignored by git
    assert "/runs/" in (root / ".gitignore").read_text().split()
    model = model_factory("bert")
    model.save_pretrained(tmp_path / "ckpt")
    texts = make_texts(24, seed=11)
    labels = [p.label for p in model.predict(texts, policy=BudgetedExit(0))]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    before = _tracked_state(root)
    run.main(["--only", "DDI sentences", "--ddi3", str(tmp_path / "ckpt"), "--ddi3-data", str(data),
              "--docs", "12", "--single", "2", "--repeats", "1", "--batch-size", "4", "--out", str(tmp_path / "out")])
    assert _tracked_state(root) == before
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    measured = [t for t in results["tasks"] if "earlier_run" not in t]
    assert [t["task"] for t in measured] == ["DDI sentences, 3 classes (none / interaction / mechanism)"]
    assert (tmp_path / "out" / "results.md").read_text().startswith("Machine:")


def test_update_readme_replaces_only_the_results_section(tmp_path):
    from benchmarks.run import MARKERS, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{MARKERS[0]}\nold table\n{MARKERS[1]}\noutro\n")
    update_readme("new table", readme)
    assert readme.read_text() == f"intro\n{MARKERS[0]}\nnew table\n{MARKERS[1]}\noutro\n"
    readme.write_text("no section")
    with pytest.raises(ValueError, match="no results section"):
        update_readme("x", readme)


@pytest.mark.ray
def test_gpu_check_runs_its_cpu_fallback(tmp_path):
    """benchmarks/gpu_check.sh --smoke: the CPU fallback CI runs (on a GPU machine the full check runs)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "table.json"
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "--smoke", "--json", str(out)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {check: (result, detail) for check, result, detail in json.loads(out.read_text())["rows"]}
    assert rows["CUDA decisions == CPU (fp32)"] == ("skipped", "no GPU")
    assert rows["throughput torch eager, early exit"][1].endswith("its full depth")
    ray_row = next(v for k, v in rows.items() if k.startswith("Ray job, CPU actor"))
    assert ray_row[1].startswith("40/40 ok")
