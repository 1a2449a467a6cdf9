"""Fast full-depth paths: int8 dynamic quantization inside the early-exit engine, the ONNX Runtime baseline."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_texts
from epee_annotate import EPEE, BudgetedExit, MultiExitModel


def test_int8_quantizes_backbone_linears_and_keeps_early_exit(model_factory, tmp_path):
    fp32 = model_factory("bert")
    model = copy.deepcopy(fp32).quantize_dynamic()
    quantized_linear = torch.ao.nn.quantized.dynamic.Linear
    assert any(isinstance(m, quantized_linear) for m in model.backbone.modules())
    assert not any(type(m) is nn.Linear for m in model.backbone.modules())
    assert not any(isinstance(m, quantized_linear) for m in model.heads.modules())  # heads stay fp32
    texts = make_texts(40, seed=3)
    full = [p.probs for p in fp32.predict(texts, policy=BudgetedExit(0))]
    quantized = [p.probs for p in model.predict(texts, policy=BudgetedExit(0))]
    np.testing.assert_allclose(quantized, full, atol=0.1)  # int8 error is small (tiny model: hidden 32), not zero
    assert not np.allclose(quantized, full, atol=1e-7)
    policy = EPEE(entropy=0.6, patience=2)
    exits = [p.exit_layer for p in model.predict(texts, policy=policy, batch_size=8)]
    single = [model.predict([t], policy=policy)[0].exit_layer for t in texts]
    # Dynamic quantization scales activations per batch, so a row's numbers depend a little on its
    # batch-mates (unlike fp32): exits agree for most rows, not all.
    assert np.mean(np.equal(exits, single)) >= 0.8 and len(set(exits)) > 1
    assert model.quantize_dynamic() is model  # idempotent
    with pytest.raises(ValueError, match="int8-quantized model cannot be saved"):
        model.save_pretrained(tmp_path / "q")


def test_cli_evaluate_int8(model_factory, tmp_path):
    import json

    from epee_annotate.cli import main

    model = model_factory("bert")
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    texts = make_texts(20, seed=4)
    data = tmp_path / "dev.jsonl"
    labels = [p.label for p in model.predict(texts, policy=BudgetedExit(0))]
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    assert main(["evaluate", str(directory), "--data", str(data), "--report", str(tmp_path / "r"), "--no-timing",
                 "--int8", "--no-plots"]) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["full_depth"]["accuracy"] >= 0.8


@pytest.mark.parametrize("pooling", ["positions", "mean"])
def test_onnx_baseline_matches_last_exit(model_factory, tmp_path, pooling):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from benchmarks import onnx_runtime
    from epee_annotate.testing import tiny_backbone_dir

    model = model_factory("bert")
    if pooling == "mean":  # the exported graph then has no pool_index input (MiniLM checkpoints pool so)
        base = tiny_backbone_dir("bert", tmp_path / "base")
        model = MultiExitModel.from_base(base, task="text", labels=["neg", "pos"], dropout=0.0, pooling="mean").eval()
    paths = onnx_runtime.export(model, tmp_path)
    texts = make_texts(30, seed=6)
    reference = np.array([p.probs for p in model.predict(texts, policy=BudgetedExit(0), batch_size=8)])
    fp32 = onnx_runtime.last_exit_probs(onnx_runtime.runner(model, onnx_runtime.session(paths["fp32"])), texts, 8, model)
    int8 = onnx_runtime.last_exit_probs(onnx_runtime.runner(model, onnx_runtime.session(paths["int8"])), texts, 8, model)
    np.testing.assert_allclose(fp32, reference, atol=1e-5)
    np.testing.assert_allclose(int8, reference, atol=0.05)
