"""The per-layer ONNX Runtime engine (runtime "onnx" / "onnx-int8") against the torch engine."""

import json

import numpy as np
import pytest
import torch

from conftest import make_texts
from epee_annotate import EPEE, BudgetedExit, MultiExitModel
from epee_annotate.runtimes import RUNTIMES, RuntimeSettingError, apply_runtime, check_runtime

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from epee_annotate.engine import torch_step  # noqa: E402
from epee_annotate.runtimes import onnx_export  # noqa: E402
from epee_annotate.testing import tiny_backbone_dir, tiny_model  # noqa: E402


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(int(rng.integers(20, 40)),) * 2, dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Saved tiny checkpoints: BERT (CLS pooling), BERT (mean pooling, as MiniLM), ViT, GPT-2."""
    root = tmp_path_factory.mktemp("onnx_ckpts")
    out = {}
    for key, model_type, task in (("bert", "bert", "text"), ("vit", "vit", "image"), ("gpt2", "gpt2", "text")):
        tiny_model(model_type, root / f"{key}_base", task=task).save_pretrained(root / key)
        out[key] = root / key
    base = tiny_backbone_dir("bert", root / "mean_base", seed=1)
    torch.manual_seed(1)
    mean = MultiExitModel.from_base(base, task="text", labels=["neg", "pos", "other"], dropout=0.0, pooling="mean")
    with torch.no_grad():
        for head in mean.heads:
            head.classifier.weight.mul_(4.0)
    mean.save_pretrained(root / "bert_mean")
    out["bert_mean"] = root / "bert_mean"
    return out


def _inputs(key: str, count: int = 24, seed: int = 0):
    return _images(count, seed) if key == "vit" else make_texts(count, seed=seed)


@pytest.mark.parametrize("key", ["bert", "bert_mean", "vit", "gpt2"])
def test_fp32_exit_logits_match_torch(checkpoints, key):
    torch_model = MultiExitModel.from_pretrained(checkpoints[key])
    onnx_model = MultiExitModel.from_pretrained(checkpoints[key]).use_runtime("onnx")
    assert onnx_model.runtime == "onnx"
    engine = onnx_model.runtime_engine
    rows = torch_model.encode(_inputs(key))
    batch = torch_model.collate(rows)
    step = torch_step(torch_model.backbone, torch_model.heads)
    with torch.inference_mode():
        ours, theirs = torch_model.backbone.embed(batch), engine.embed(batch)
        for index in range(torch_model.num_layers):
            ours, expected = step(index, ours)
            theirs, logits = engine.step(index, theirs)
            assert (logits - expected).abs().max().item() <= 1e-4, f"exit {index + 1}"
    # Through the model API too: every exit's probabilities, and early-exit decisions.
    inputs = _inputs(key, seed=1)
    assert (onnx_model.exit_probs(inputs, batch_size=8) - torch_model.exit_probs(inputs, batch_size=8)).abs().max() < 1e-4
    policy = EPEE(entropy=0.5, patience=2)
    ours = torch_model.predict(inputs, policy, batch_size=8)
    theirs = onnx_model.predict(inputs, policy, batch_size=8)
    assert [(p.label, p.exit_layer) for p in theirs] == [(p.label, p.exit_layer) for p in ours]
    assert len({p.exit_layer for p in theirs}) > 1  # the policy really exits at different layers


@pytest.mark.parametrize("key", ["bert", "vit"])
def test_batched_decisions_equal_batch_size_one(checkpoints, key):
    model = MultiExitModel.from_pretrained(checkpoints[key]).use_runtime("onnx")
    inputs = _inputs(key, count=30, seed=2)
    policy = EPEE(entropy=0.5, patience=2)
    batched = model.predict(inputs, policy, batch_size=8)
    single = [model.predict([item], policy, batch_size=1)[0] for item in inputs]
    assert [(p.label, p.exit_layer) for p in batched] == [(p.label, p.exit_layer) for p in single]
    np.testing.assert_allclose([p.probs for p in batched], [p.probs for p in single], atol=1e-5)


def test_torch_glue_runs_on_one_thread_and_the_count_comes_back(checkpoints, monkeypatch):
    """torch's spinning OpenMP workers would take cores from ONNX Runtime between layers."""
    model = MultiExitModel.from_pretrained(checkpoints["bert"]).use_runtime("onnx")
    engine, seen = model.runtime_engine, []
    step = engine.step
    monkeypatch.setattr(engine, "step", lambda index, state: seen.append(torch.get_num_threads()) or step(index, state))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model.predict(make_texts(6, seed=4), EPEE(entropy=0.5, patience=2), batch_size=4)
        model.exit_probs(make_texts(3, seed=5), batch_size=4)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_int8_graphs_are_quantized_and_close(checkpoints):
    import onnx

    model = MultiExitModel.from_pretrained(checkpoints["bert"]).use_runtime("onnx-int8")
    assert model.runtime == "onnx-int8"
    ops = {node.op_type for node in onnx.load(str(model.runtime_engine.directory / "layer_00.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    reference = MultiExitModel.from_pretrained(checkpoints["bert"])
    texts = make_texts(30, seed=3)
    quantized = model.exit_probs(texts, batch_size=8)
    full = reference.exit_probs(texts, batch_size=8)
    assert (quantized - full).abs().max() < 0.2 and not torch.allclose(quantized, full, atol=1e-6)


def test_graphs_are_cached_beside_the_checkpoint_by_weights_hash(checkpoints, tmp_path, monkeypatch):
    model = MultiExitModel.from_pretrained(checkpoints["bert"]).use_runtime("onnx")
    directory = model.runtime_engine.directory
    assert directory.parent.parent == checkpoints["bert"].resolve() / "onnx"
    assert model.config.weights_sha256[:16] in directory.parent.name
    manifest = json.loads((directory.parent / "manifest.json").read_text())
    assert manifest["weights_sha256"] == model.config.weights_sha256

    def refuse(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_fp32", refuse)
    again = MultiExitModel.from_pretrained(checkpoints["bert"]).use_runtime("onnx-int8")
    assert again.runtime_engine.directory == directory.parent / "int8"
    # New weights, new hash, new export: never stale graphs.
    changed = MultiExitModel.from_pretrained(checkpoints["bert"])
    with torch.no_grad():
        changed.heads[0].classifier.bias.add_(1.0)
    changed.save_pretrained(tmp_path / "changed")
    with pytest.raises(AssertionError, match="exported again"):
        MultiExitModel.from_pretrained(tmp_path / "changed").use_runtime("onnx")


def test_unknown_and_unfit_runtimes_are_refused(checkpoints):
    with pytest.raises(RuntimeSettingError, match="known runtimes: torch, torch-int8, onnx, onnx-int8"):
        check_runtime("tensorrt")
    assert check_runtime(None) == "torch" and set(RUNTIMES) == {"torch", "torch-int8", "onnx", "onnx-int8"}
    with pytest.raises(RuntimeSettingError, match="runs on CPU"):
        check_runtime("onnx", device="cuda")
    with pytest.raises(RuntimeSettingError, match="autocast"):
        check_runtime("onnx-int8", autocast="bf16")
    model = MultiExitModel.from_pretrained(checkpoints["bert"]).use_runtime("torch-int8")
    assert model.runtime == "torch-int8"
    with pytest.raises(RuntimeSettingError, match="already torch-int8"):
        apply_runtime(model, "onnx")
    onnx_model = MultiExitModel.from_pretrained(checkpoints["bert"]).use_runtime("onnx")
    with pytest.raises(ValueError, match="load it again"):
        onnx_model.quantize_dynamic()
    with pytest.raises(ValueError, match="train a model loaded without it"):  # its graphs would not see new weights
        onnx_model(onnx_model.collate(onnx_model.encode(["pain"])))


def test_component_and_job_settings_reach_the_model(checkpoints):
    import spacy

    from epee_annotate.pipelines.errors import SettingError
    from epee_annotate.pipelines.jobs import JobOptions

    nlp = spacy.blank("en")
    nlp.add_pipe("epee_textcat", config={"checkpoint": str(checkpoints["bert"]), "scope": "doc", "runtime": "onnx"})
    doc = nlp(make_texts(1, seed=9)[0])
    assert nlp.get_pipe("epee_textcat").multi_exit_model.runtime == "onnx"
    assert doc._.epee_annotations
    with pytest.raises(ValueError, match="known runtimes"):
        spacy.blank("en").add_pipe("epee_textcat", config={"checkpoint": str(checkpoints["bert"]), "runtime": "trt"})
    with pytest.raises(SettingError, match="known runtimes"):
        JobOptions(out="x", runtime="trt")
    # The token budget reaches the component's predict calls; images refuse it.
    from epee_annotate.pipelines.jobs import ImagesJob

    budgeted = spacy.blank("en")
    budgeted.add_pipe("epee_textcat", config={"checkpoint": str(checkpoints["bert"]), "batch_tokens": 64})
    component = budgeted.get_pipe("epee_textcat")
    seen = []
    predict = component.multi_exit_model.predict
    component.multi_exit_model.predict = lambda *a, **k: seen.append(k.get("max_tokens")) or predict(*a, **k)
    budgeted(make_texts(1, seed=9)[0])
    assert seen == [64]
    with pytest.raises(SettingError, match="token budget applies to text"):
        ImagesJob(checkpoint="x", options=JobOptions(out="x", model_batch_tokens=512), npz="a.npz")


def test_cli_evaluate_runtime(checkpoints, tmp_path, capsys):
    from epee_annotate.cli import main

    model = MultiExitModel.from_pretrained(checkpoints["bert"])
    texts = make_texts(20, seed=4)
    labels = [p.label for p in model.predict(texts, policy=BudgetedExit(0))]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    args = ["evaluate", str(checkpoints["bert"]), "--data", str(data), "--no-timing", "--no-plots"]
    assert main([*args, "--report", str(tmp_path / "r"), "--runtime", "onnx"]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["checkpoint"]["runtime"] == "onnx" and report["full_depth"]["accuracy"] == 1.0
    assert main([*args, "--report", str(tmp_path / "r2"), "--runtime", "onnx", "--int8"]) != 0
    assert "--int8 means --runtime torch-int8" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()
