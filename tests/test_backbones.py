"""Each backbone, driven layer by layer, must match the model's own forward."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_texts
from epee_annotate import MultiExitModel
from epee_annotate.backbones import UnsupportedArchitectureError, WeightMismatchError, supported_model_types
from epee_annotate.testing import tiny_backbone_dir


@pytest.mark.parametrize("model_type", ["bert", "roberta", "albert", "distilbert", "gpt2"])
def test_last_layer_matches_model_forward(model_factory, model_type):
    model = model_factory(model_type)
    rows = [model.encoder.encode(t) for t in make_texts(6, seed=5)]
    batch = model.collate(rows)
    with torch.no_grad():
        ours = model.backbone(batch)[-1]
        own = model.backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = own.last_hidden_state  # GPT-2 applies ln_f itself
        index = batch["pool_index"].unsqueeze(-1).expand(-1, -1, hidden.size(-1))
        expected = hidden.gather(1, index).flatten(1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_vit_matches_model_forward(model_factory):
    model = model_factory("vit", task="image")
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = model.backbone({"pixel_values": pixels})[-1]
        expected = model.backbone.model(pixel_values=pixels).last_hidden_state[:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_vit_gray_input_is_repeated_not_reinitialised(model_factory):
    model = model_factory("vit", task="image")
    gray = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a = model.backbone({"pixel_values": gray})[-1]
        b = model.backbone({"pixel_values": gray.expand(-1, 3, -1, -1)})[-1]
    torch.testing.assert_close(a, b)
    assert model.backbone.model.embeddings.patch_embeddings.projection.in_channels == 3


def test_gpt2_pools_last_real_token_with_left_and_right_padding(model_factory):
    model = model_factory("gpt2")
    texts = ["rash", "aspirin increases the anticoagulant effect of warfarin daily"]
    rows = [model.encoder.encode(t) for t in texts]
    with torch.no_grad():
        unpadded = [model.backbone(model.collate([r]))[-1][0] for r in rows]
        right = model.backbone(model.collate(rows, padding_side="right"))[-1]
        left = model.backbone(model.collate(rows, padding_side="left"))[-1]
    for i in range(2):
        torch.testing.assert_close(right[i], unpadded[i], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(left[i], unpadded[i], atol=1e-5, rtol=1e-4)
    # Reading position -1 of the right-padded short row would read a pad position instead:
    batch = model.collate(rows, padding_side="right")
    assert batch["pool_index"][0, 0] < batch["input_ids"].size(1) - 1
    assert batch["attention_mask"][0, batch["pool_index"][0, 0]] == 1


def test_albert_has_one_exit_per_shared_layer_application(model_factory):
    model = model_factory("albert", num_layers=4)
    assert model.num_layers == 4 and len(model.heads) == 4
    assert len(model.backbone.model.encoder.albert_layer_groups) == 1  # weights shared by all 4 exits


def test_mismatched_weights_fail_loudly(tmp_path):
    base = tiny_backbone_dir("gpt2", tmp_path / "gpt2")
    weights = load_file(str(base / "model.safetensors"))
    # The official EPEE code loads GPT-2 weights under a prefix the model never looks up.
    save_file({f"transformer.wrong.{k}": v for k, v in weights.items()}, str(base / "model.safetensors"))
    with pytest.raises(WeightMismatchError, match=r"missing keys \[.*h\.0\."):
        MultiExitModel.from_base(base, task="text", labels=["a", "b"])


def test_unknown_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    with pytest.raises(UnsupportedArchitectureError) as error:
        MultiExitModel.from_base(tmp_path, task="text", labels=["a", "b"])
    for name in ("bert", "gpt2", "vit", "albert", "distilbert", "roberta"):
        assert name in str(error.value)
    assert "gpt2" in supported_model_types()


def test_task_and_labels_are_checked(tmp_path):
    base = tiny_backbone_dir("bert", tmp_path / "bert")
    with pytest.raises(ValueError, match="task"):
        MultiExitModel.from_base(base, task="audio", labels=["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        MultiExitModel.from_base(base, task="text", labels=["a", "a"])
    with pytest.raises(ValueError, match="cannot do"):
        MultiExitModel.from_base(base, task="image", labels=["a", "b"])


def test_mean_pooling_is_auto_detected_and_ignores_padding(tmp_path):
    base = tiny_backbone_dir("bert", tmp_path / "bert")
    (base / "1_Pooling").mkdir()
    (base / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    model = MultiExitModel.from_base(base, task="text", labels=["a", "b"])
    assert model.config.pooling == "mean"
    assert MultiExitModel.from_base(base, task="text", labels=["a", "b"], pooling="cls").config.pooling == "cls"
    texts = ["rash", "aspirin increases the anticoagulant effect of warfarin daily"]
    rows = [model.encoder.encode(t) for t in texts]
    with torch.no_grad():
        padded = model.backbone(model.collate(rows))[-1]
        alone = model.backbone(model.collate(rows[:1]))[-1]
        hidden = model.backbone.model(**{k: v for k, v in model.collate(rows[:1]).items() if k != "pool_index"})
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone[0], hidden.last_hidden_state[0].mean(0), atol=1e-5, rtol=1e-4)
    model.save_pretrained(tmp_path / "ckpt")
    assert MultiExitModel.from_pretrained(tmp_path / "ckpt").backbone.mean_pooling
    with pytest.raises(ValueError, match="mean pooling"):
        MultiExitModel.from_base(base, task="relation", labels=["a", "b"], pooling="mean")


def test_pooling_is_fixed_at_construction_and_cls_is_stored_as_cls(tmp_path):
    from epee_annotate.backbones import POOLINGS, backbone_from_config

    base = tiny_backbone_dir("bert", tmp_path / "bert")
    model = MultiExitModel.from_base(base, task="text", labels=["a", "b"], pooling="cls")
    assert model.config.pooling == "cls" and model.backbone.pooling == "cls" and not model.backbone.mean_pooling
    model.save_pretrained(tmp_path / "ckpt")
    assert MultiExitModel.from_pretrained(tmp_path / "ckpt").backbone.pooling == "cls"
    assert MultiExitModel.from_base(base, task="relation", labels=["a", "b"]).backbone.pooling == "positions"
    with pytest.raises(AttributeError):  # a read-only view of the construction setting, not a switch
        model.backbone.mean_pooling = True
    with pytest.raises(ValueError, match="pooling must be one of"):
        backbone_from_config(model.backbone.config, "max")
    assert set(POOLINGS) == {"cls", "mean", "positions"}
