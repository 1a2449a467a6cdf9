"""Joint multi-exit training: loss weighting, learning, best checkpoint, resume and the train CLI."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, BertTokenizer

from epee_annotate import training
from epee_annotate.cli import main
from epee_annotate.data import Example
from epee_annotate.model import MultiExitModel
from epee_annotate.testing import _wordpiece_vocab, tiny_backbone_dir, tiny_config
from epee_annotate.training import (
    TrainConfig,
    class_weight_vector,
    evaluate_exits,
    exit_weight_vector,
    multi_exit_loss,
    train,
)

POS = "aspirin increases the anticoagulant effect of warfarin".split()
NEG = "melatonin was started for insomnia two weeks ago".split()


def toy_examples(count: int, seed: int) -> list[Example]:
    """An easy separable task: the words come from one of two disjoint sentences."""
    rng = random.Random(seed)
    return [Example(" ".join(rng.sample(POS if i % 2 else NEG, 4)), "pos" if i % 2 else "neg", f"t{i}")
            for i in range(count)]


@pytest.fixture(scope="module")
def word_bert(tmp_path_factory) -> Path:
    """A tiny BERT whose tokenizer knows the toy words (so the toy task is learnable)."""
    path = tmp_path_factory.mktemp("word_bert")
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(_wordpiece_vocab())}, model_max_length=64)
    tokenizer.save_pretrained(path)
    config = tiny_config("bert", vocab_size=len(tokenizer) + 8)
    config.initializer_range = 0.02  # the usual init trains reliably in a few steps; the tiny default (0.3) does not
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    return path


def fresh_model(base: Path) -> MultiExitModel:
    torch.manual_seed(0)
    return MultiExitModel.from_base(base, labels=["neg", "pos"], dropout=0.1)


FAST = dict(batch_size=4, lr=3e-3, warmup_ratio=0.0, progress=False, seed=7)


# ----- loss ---------------------------------------------------------------------------------
def _three_exit_logits():
    # Target 0 everywhere. CE of [a, 0] with target 0 is log(1 + e^-a).
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]], [[math.log(9.0), 0.0]]])
    ce = [math.log(2.0), math.log(4 / 3), math.log(10 / 9)]
    return logits, torch.tensor([0]), ce


def test_loss_weighting_by_hand():
    logits, target, (c1, c2, c3) = _three_exit_logits()
    linear = multi_exit_loss(logits, target, exit_weight_vector("linear", 3))
    assert float(linear) == pytest.approx((1 * c1 + 2 * c2 + 3 * c3) / 6)
    uniform = multi_exit_loss(logits, target, exit_weight_vector("uniform", 3))
    assert float(uniform) == pytest.approx((c1 + c2 + c3) / 3)
    custom = multi_exit_loss(logits, target, exit_weight_vector([0, 1, 3], 3))
    assert float(custom) == pytest.approx((c2 + 3 * c3) / 4)
    assert exit_weight_vector("linear", 4).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="has 2 values but the model has 3 exits"):
        exit_weight_vector([1, 2], 3)


def test_class_weights_and_distillation():
    assert class_weight_vector("balanced", [0, 0, 0, 1], 3).tolist() == pytest.approx([4 / 6, 2.0, 0.0])
    # Two rows, targets 0 and 1, class weights 1 and 3: weighted mean of the row losses.
    logits = torch.tensor([[[math.log(3.0), 0.0], [math.log(3.0), 0.0]]])
    loss = multi_exit_loss(logits, torch.tensor([0, 1]), torch.ones(1), torch.tensor([1.0, 3.0]))
    assert float(loss) == pytest.approx((math.log(4 / 3) + 3 * math.log(4)) / 4)
    # Exits that already agree with the last exit pay nothing for distillation, so alpha = 1 leaves only CE_M.
    same = torch.tensor([[[2.0, 0.0]]] * 3)
    weights = exit_weight_vector("linear", 3)
    assert float(multi_exit_loss(same, torch.tensor([0]), weights, distill_alpha=1.0, temperature=2.0)) == (
        pytest.approx(3 * math.log(1 + math.exp(-2)) / 6))
    # When they disagree, the KL term adds a positive amount.
    logits, target, _ = _three_exit_logits()
    plain = multi_exit_loss(logits, target, torch.ones(3), distill_alpha=0.0)
    assert float(multi_exit_loss(logits, target, torch.ones(3), distill_alpha=0.5)) != pytest.approx(float(plain))


# ----- training -----------------------------------------------------------------------------
def test_training_learns_and_keeps_best_checkpoint(word_bert, tmp_path):
    train_set, dev_set = toy_examples(40, 0), toy_examples(20, 1)
    model = fresh_model(word_bert)
    result = train(model, train_set, dev_set, tmp_path / "run", TrainConfig(epochs=2, **FAST))
    assert result.history[1]["train_loss"] < result.history[0]["train_loss"]
    assert evaluate_exits(model, train_set)[-1]["accuracy"] > 0.8
    scores = [h["dev"][-1]["macro_f1"] for h in result.history]
    assert result.best_epoch == 1 + int(np.argmax(scores)) and result.best_score == max(scores)
    # The checkpoint is the best epoch, with the run recorded, and loads back to the same outputs.
    saved = json.loads((tmp_path / "run" / "epee_config.json").read_text())["training"]
    assert saved["epochs"] == 2 and saved["best_epoch"] == result.best_epoch
    assert saved["sizes"] == {"train": 40, "dev": 20} and len(saved["dev_metrics"]) == model.num_layers
    assert saved["config"]["seed"] == 7 and saved["exit_weights"] == [1, 2, 3, 4]
    reloaded = MultiExitModel.from_pretrained(tmp_path / "run")
    inputs = [e.input for e in dev_set]
    assert torch.allclose(reloaded.exit_probs(inputs), model.exit_probs(inputs), atol=1e-6)
    assert not (tmp_path / "run" / "training_state").exists()  # a finished run keeps only the checkpoint
    with pytest.raises(ValueError, match="already holds a training run"):
        train(fresh_model(word_bert), train_set, dev_set, tmp_path / "run", TrainConfig(epochs=1, **FAST))


def test_resume_continues_and_matches_an_uninterrupted_run(word_bert, tmp_path, monkeypatch):
    train_set, dev_set = toy_examples(24, 2), toy_examples(8, 3)
    config = TrainConfig(epochs=2, distill=True, **FAST)
    straight_model = fresh_model(word_bert)
    straight = train(straight_model, train_set, dev_set, tmp_path / "straight", config)

    # Interrupt a run during the second epoch's evaluation: the state of epoch 1 is on disk.
    real_evaluate, calls = training.evaluate_exits, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate_exits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(word_bert), train_set, dev_set, tmp_path / "resumed", config)
    monkeypatch.setattr(training, "evaluate_exits", real_evaluate)
    assert json.loads((tmp_path / "resumed" / "training_state" / "state.json").read_text())["epoch"] == 1

    resumed_model = fresh_model(word_bert)
    resumed = train(resumed_model, train_set, dev_set, tmp_path / "resumed", config, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for got, want in zip(resumed.history, straight.history):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5) and got["lr"] == want["lr"]
        assert [d["macro_f1"] for d in got["dev"]] == pytest.approx([d["macro_f1"] for d in want["dev"]])
    for a, b in zip(resumed_model.state_dict().values(), straight_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    saved = json.loads((tmp_path / "resumed" / "epee_config.json").read_text())["training"]
    assert saved["epochs"] == 2 and saved["best_epoch"] == straight.best_epoch


def test_resume_to_more_epochs_and_resume_errors(word_bert, tmp_path):
    train_set, dev_set = toy_examples(16, 4), toy_examples(8, 5)
    out = tmp_path / "run"
    first = train(fresh_model(word_bert), train_set, dev_set, out, TrainConfig(epochs=1, **FAST), keep_state=True)
    state = out / "training_state"
    assert sorted(p.name for p in state.iterdir()) == [
        "model.safetensors", "optimizer.json", "optimizer.safetensors", "state.json"]
    more = train(fresh_model(word_bert), train_set, dev_set, out, TrainConfig(epochs=2, **FAST), resume=True,
                 keep_state=True)
    assert more.epochs == 2 and len(more.history) == 2 and more.history[0] == first.history[0]
    assert json.loads((out / "epee_config.json").read_text())["training"]["epochs"] == 2
    with pytest.raises(ValueError, match=r"different settings: \['lr'\]"):
        train(fresh_model(word_bert), train_set, dev_set, out, TrainConfig(epochs=3, **{**FAST, "lr": 1e-4}),
              resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        train(fresh_model(word_bert), train_set, dev_set, tmp_path / "new", TrainConfig(**FAST), resume=True)


def test_early_stopping_keeps_the_best_epoch_and_records_the_run(word_bert, tmp_path):
    train_set, dev_set = toy_examples(8, 6), toy_examples(8, 7)
    # A learning rate too small to change the dev metric: epoch 1 stays best, so the run stops after epoch 2.
    config = TrainConfig(epochs=5, early_stopping=1, **{**FAST, "lr": 1e-12})
    result = train(fresh_model(word_bert), train_set, dev_set, tmp_path / "run", config)
    assert result.stopped_early and result.epochs == 2 and result.best_epoch == 1
    saved = json.loads((tmp_path / "run" / "epee_config.json").read_text())["training"]
    assert saved["epochs"] == 2 and saved["planned_epochs"] == 5 and saved["stopped_early"] is True
    environment = saved["environment"]
    assert environment["torch_threads"] == torch.get_num_threads() and environment["device"] == "cpu"
    assert environment["versions"]["torch"] == torch.__version__ and environment["versions"]["transformers"]
    with pytest.raises(ValueError, match="early_stopping must be >= 1"):
        TrainConfig(early_stopping=0).check()


def test_unknown_labels_and_bad_settings(word_bert, tmp_path):
    model = fresh_model(word_bert)
    with pytest.raises(ValueError, match=r"training data has label\(s\) the model does not know: \{'maybe': 1\}"):
        train(model, toy_examples(4, 0) + [Example("aspirin", "maybe")], toy_examples(4, 1), tmp_path / "a")
    with pytest.raises(ValueError, match="needs the negative label 'none'"):
        train(model, toy_examples(4, 0), toy_examples(4, 1), tmp_path / "b", TrainConfig(metric="micro_f1_positive"))
    with pytest.raises(ValueError, match="metric must be one of"):
        train(model, toy_examples(4, 0), toy_examples(4, 1), tmp_path / "c", TrainConfig(metric="f2"))


# ----- CLI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return tiny_backbone_dir("bert", tmp_path_factory.mktemp("tiny_bert"), num_layers=2)


def _write_jsonl(path: Path, examples) -> Path:
    path.write_text("".join(json.dumps({"text": e.input, "label": e.label}) + "\n" for e in examples))
    return path


def test_cli_train_text_end_to_end(tiny_bert_dir, tmp_path, capsys):
    train_file = _write_jsonl(tmp_path / "train.jsonl", toy_examples(12, 0))
    dev_file = _write_jsonl(tmp_path / "dev.jsonl", toy_examples(6, 1))
    out = tmp_path / "model"
    args = ["train", "--task", "text", "--base", str(tiny_bert_dir), "--format", "jsonl", "--train", str(train_file),
            "--dev", str(dev_file), "--out", str(out), "--epochs", "1", "--batch-size", "4", "--lr", "1e-3",
            "--exit-weights", "1,3", "--class-weights", "balanced", "--keep-state", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "best epoch 1 of 1" in printed and "macro_f1" in printed
    model = MultiExitModel.from_pretrained(out)
    assert model.labels == ["neg", "pos"]
    assert model.config.training["config"]["exit_weights"] == [1.0, 3.0]
    assert model.config.training["config"]["class_weights"] == "balanced"
    assert main(args[:-1] + ["--epochs", "2", "--resume", "--no-progress"]) == 0
    assert MultiExitModel.from_pretrained(out).config.training["epochs"] == 2


def test_cli_train_ddi_with_dev_fraction_and_npz(tiny_bert_dir, tmp_path, capsys, caplog):
    from test_data_loaders import DDI_DOC, DDI_DOC2

    for i in range(4):
        (tmp_path / "ddi").mkdir(exist_ok=True)
        (tmp_path / "ddi" / f"d{i}.xml").write_text((DDI_DOC, DDI_DOC2)[i % 2].replace("DDI-Test.d", f"DDI-T{i}.d"))
    out = tmp_path / "ddi_model"
    assert main(["train", "--task", "relation", "--base", str(tiny_bert_dir), "--format", "ddi",
                 "--train", str(tmp_path / "ddi"), "--dev-fraction", "0.5", "--out", str(out), "--epochs", "1",
                 "--batch-size", "4", "--metric", "micro_f1_positive", "--no-progress", "--negative-ratio", "1"]) == 0
    assert "far from the DDI recipe (docs/training.md): no --filter-negatives" in caplog.text
    assert "far from the DDI recipe (docs/training.md): --negative-ratio 1: the recipe keeps every negative" \
        in caplog.text
    model = MultiExitModel.from_pretrained(out)
    assert model.labels == ["none", "mechanism", "effect", "advise", "int"] and model.task == "relation"
    sizes = model.config.training["sizes"]
    assert sizes["train"] + sizes["dev"] == 8 and sizes["dev"] in (2, 3, 4, 5, 6)
    assert "micro_f1_positive" in capsys.readouterr().out

    vit = tiny_backbone_dir("vit", tmp_path / "vit", num_layers=2)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mini.npz", train_images=rng.integers(0, 255, (6, 28, 28), dtype=np.uint8),
             train_labels=np.array([[0], [1]] * 3), val_images=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8),
             val_labels=np.array([[0], [1]] * 2))
    assert main(["train", "--task", "image", "--base", str(vit), "--format", "npz", "--train", str(tmp_path / "mini.npz"),
                 "--dev", str(tmp_path / "mini.npz"), "--label-names", "normal,pneumonia", "--out",
                 str(tmp_path / "img_model"), "--epochs", "1", "--batch-size", "4", "--no-progress"]) == 0
    assert MultiExitModel.from_pretrained(tmp_path / "img_model").labels == ["normal", "pneumonia"]


def test_cli_train_clear_errors(tiny_bert_dir, tmp_path, capsys):
    base = ["train", "--task", "text", "--base", str(tiny_bert_dir), "--format", "jsonl", "--out", str(tmp_path / "m")]
    assert main(base + ["--train", str(tmp_path / "missing.jsonl"), "--dev-fraction", "0.5"]) == 2
    assert "missing.jsonl' does not exist" in capsys.readouterr().err
    train_file = _write_jsonl(tmp_path / "t.jsonl", toy_examples(4, 0))
    assert main(base + ["--train", str(train_file)]) == 2
    assert "give --dev FILE or --dev-fraction F" in capsys.readouterr().err
    dev_file = tmp_path / "d.jsonl"
    dev_file.write_text(json.dumps({"text": "aspirin", "label": "maybe"}) + "\n")
    assert main(base + ["--train", str(train_file), "--dev", str(dev_file)]) == 2
    assert "dev data has label(s) the model does not know: {'maybe': 1}" in capsys.readouterr().err
    assert main(base + ["--train", str(train_file), "--dev", str(train_file), "--format", "ddi"]) == 2
    assert "gives relation data, not 'text'" in capsys.readouterr().err
