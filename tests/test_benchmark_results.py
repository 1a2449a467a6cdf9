"""benchmarks.run keeps the tasks a run skipped, marked as earlier, instead of dropping them."""

import json

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
