"""CLI options shared by train/evaluate/calibrate: --threads, --*-column, scratch-vit, npz --split, logs."""

import json
import logging

import numpy as np
import pytest
import torch

from epee_annotate import MultiExitModel
from epee_annotate.cli import main
from epee_annotate.cli.common import apply_threads
from epee_annotate.offline import parse_scratch_vit
from epee_annotate.testing import tiny_backbone_dir


def test_threads_default_is_the_usable_cores_whatever_the_load(monkeypatch):
    import os

    usable = len(os.sched_getaffinity(0))
    assert apply_threads(1) == 1 and torch.get_num_threads() == 1
    assert apply_threads(10_000) == usable and torch.get_num_threads() == usable
    # A busy machine at start must not change the default (it made training runs unreproducible).
    monkeypatch.setattr(os, "getloadavg", lambda: (float(os.cpu_count()), 0.0, 0.0))
    assert apply_threads(None) == usable
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert apply_threads(None) == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        apply_threads(0)


def test_scratch_vit_spec():
    assert parse_scratch_vit("scratch-vit:28") == {"image_size": 28}
    assert parse_scratch_vit("scratch-vit:28:6:128") == {"image_size": 28, "num_layers": 6, "hidden_size": 128}
    assert parse_scratch_vit("google/vit-base") is None
    with pytest.raises(ValueError, match="multiple of the patch size"):
        parse_scratch_vit("scratch-vit:30")
    with pytest.raises(ValueError, match="integers"):
        parse_scratch_vit("scratch-vit:big")


def _mini_npz(path, splits=("train", "val")):
    rng = np.random.default_rng(0)
    arrays = {}
    for split in splits:
        arrays[f"{split}_images"] = rng.integers(0, 255, (8, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.array([[0], [1]] * 4)
    np.savez(path, **arrays)
    return path


def test_train_scratch_vit_then_evaluate_needs_split(tmp_path, capsys, caplog, monkeypatch):
    import epee_annotate.progress as progress

    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)  # a log line per batch instead of every 30 s
    npz = _mini_npz(tmp_path / "mini.npz")
    out = tmp_path / "vit"
    with caplog.at_level(logging.INFO):
        assert main(["train", "--task", "image", "--base", "scratch-vit:8:2:16", "--format", "npz", "--train",
                     str(npz), "--dev", str(npz), "--label-names", "normal,pneumonia", "--out", str(out),
                     "--epochs", "1", "--batch-size", "4", "--threads", "1", "--class-weights", "balanced"]) == 0
    model = MultiExitModel.from_pretrained(out)
    assert model.num_layers == 2 and model.config.base_model == "scratch-vit:8:2:16"
    assert model.backbone.config.hidden_size == 16
    assert not (out / "training_state").exists()  # lean: the published checkpoint only
    logged = caplog.text
    assert "epoch 1/1: 1/2 batch" in logged  # not a terminal: periodic lines, no bar
    assert "all exits: 1/" in logged
    assert "epoch 1/1: train loss" in logged and "s in all)" in logged
    assert "\r" not in capsys.readouterr().err

    report = tmp_path / "report"
    assert main(["evaluate", str(out), "--data", str(npz), "--report", str(report), "--no-timing",
                 "--no-plots"]) == 2
    assert "holds the splits ['train', 'val']: pass --split" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--data", str(npz), "--split", "val", "--report", str(report),
                 "--no-timing", "--no-plots", "--threads", "1"]) == 0
    assert json.loads((report / "report.json").read_text())["data"]["split"] == "val"
    only_val = _mini_npz(tmp_path / "val.npz", splits=("val",))
    assert main(["calibrate", str(out), "--data", str(only_val), "--max-drop", "0.5", "--metric", "accuracy",
                 "--dry-run"]) == 0


def test_train_evaluate_calibrate_with_own_column_names(tmp_path, capsys):
    base = tiny_backbone_dir("bert", tmp_path / "bert", num_layers=2)
    rows = [{"note_text": f"the patient takes fish oil {i}", "dx": "neg" if i % 2 else "pos", "doc": str(i // 4)}
            for i in range(16)]
    data = tmp_path / "notes.csv"
    data.write_text("note_text,dx,doc\n" + "".join(f"{r['note_text']},{r['dx']},{r['doc']}\n" for r in rows))
    columns = ["--text-column", "note_text", "--label-column", "dx", "--group-column", "doc"]
    out = tmp_path / "model"
    train = ["train", "--task", "text", "--base", str(base), "--format", "csv", "--train", str(data),
             "--dev-fraction", "0.5", "--out", str(out), "--epochs", "1", "--batch-size", "4", "--no-progress"]
    assert main(train) == 2
    assert "missing column(s) ['text', 'label']" in capsys.readouterr().err
    assert main(train + columns) == 0
    sizes = MultiExitModel.from_pretrained(out).config.training["sizes"]
    assert sizes["train"] % 4 == 0 and sizes["dev"] % 4 == 0  # whole documents (--group-column) kept together
    assert main(["evaluate", str(out), "--data", str(data), "--report", str(tmp_path / "r"), "--no-timing",
                 "--no-plots", *columns]) == 0
    calibrate = ["calibrate", str(out), "--data", str(data), "--max-drop", "0.5", "--metric", "accuracy", "--dry-run",
                 *columns]
    capsys.readouterr()
    assert main(calibrate) == 2  # training's dev part of this file chose the epoch: not independent
    assert "were in the dev set that chose this checkpoint's best epoch" in capsys.readouterr().err
    assert main(calibrate + ["--allow-dev-overlap"]) == 0
    assert "overlap allowed" in capsys.readouterr().out
    relation = tmp_path / "rel.jsonl"
    relation.write_text(json.dumps({"sentence": "aspirin and warfarin", "a0": 0, "a1": 7, "b0": 12, "b1": 20,
                                    "label": "none"}) + "\n")
    from epee_annotate.data import load_examples

    examples = load_examples(relation, "jsonl", "relation", columns={
        "text": "sentence", "head_start": "a0", "head_end": "a1", "tail_start": "b0", "tail_end": "b1"})
    assert examples[0].input == {"text": "aspirin and warfarin", "head": (0, 7), "tail": (12, 20)}
