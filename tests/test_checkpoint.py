import copy
import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from conftest import make_texts
from epee_annotate import EPEE, MultiExitModel
from epee_annotate.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError


@pytest.mark.parametrize(
    "model_type,task",
    [("bert", "text"), ("gpt2", "text"), ("roberta", "relation"), ("albert", "text"), ("distilbert", "relation"),
     ("vit", "image")],
)
def test_save_load_round_trip_gives_identical_predictions(model_factory, tmp_path, model_type, task):
    model = copy.deepcopy(model_factory(model_type, task=task))  # the shared model keeps its default policy
    if task == "image":
        rng = np.random.default_rng(0)
        inputs = [rng.random((20, 20)).astype(np.float32) for _ in range(10)]
    elif task == "relation":
        text = "aspirin increases the anticoagulant effect of warfarin"
        inputs = [{"text": text, "head": (0, 7), "tail": (46, 54)}, {"text": text, "head": (46, 54), "tail": (0, 7)}]
    else:
        inputs = make_texts(20, seed=7)
    policy = EPEE(entropy=0.5, patience=2)
    model.set_default_policy(policy, {"goal": "test"})
    model.save_pretrained(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {CONFIG_NAME, WEIGHTS_NAME, "config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    loaded = MultiExitModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.default_policy == policy and loaded.config.calibration == {"goal": "test"}
    assert loaded.labels == model.labels and loaded.checkpoint_id.endswith(loaded.config.weights_sha256[:12])
    before, after = model.predict(inputs), loaded.predict(inputs)
    assert [(p.label, p.exit_layer) for p in before] == [(p.label, p.exit_layer) for p in after]
    np.testing.assert_allclose([p.probs for p in before], [p.probs for p in after], atol=1e-6)


def test_config_records_identity(model_factory, tmp_path):
    model = model_factory("bert")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["labels"] == ["neg", "pos", "other"] and config["num_layers"] == 4
    assert config["model_type"] == "bert" and len(config["weights_sha256"]) == 64 and config["package_version"]


def test_tampered_weights_are_refused(model_factory, tmp_path):
    model_factory("bert").save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / WEIGHTS_NAME))
    weights.pop(next(k for k in weights if k.startswith("heads.0")))
    save_file(weights, str(tmp_path / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="missing keys"):
        MultiExitModel.from_pretrained(tmp_path)


def test_missing_directory_and_non_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        MultiExitModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not an epee-annotate checkpoint"):
        MultiExitModel.from_pretrained(tmp_path)
