import copy
import json
import os

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from conftest import make_texts
from epee_annotate import EPEE, MultiExitModel
from epee_annotate import checkpoint
from epee_annotate.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, UnhashedWeightsError, file_sha256
from epee_annotate.pipelines.schema import weights_record


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


def _drop_a_head_weight(directory):
    weights = load_file(str(directory / WEIGHTS_NAME))
    weights.pop(next(k for k in weights if k.startswith("heads.0")))
    save_file(weights, str(directory / WEIGHTS_NAME))


def _record_hash(directory, digest: str) -> None:
    config = json.loads((directory / CONFIG_NAME).read_text())
    (directory / CONFIG_NAME).write_text(json.dumps({**config, "weights_sha256": digest}))


def test_tampered_local_weights_are_refused(model_factory, tmp_path):
    """A local checkpoint is checked against its recorded hash, as a downloaded one is."""
    model_factory("bert").save_pretrained(tmp_path)
    _drop_a_head_weight(tmp_path)
    with pytest.raises(CheckpointError, match="do not match the SHA-256 in epee_config.json"):
        MultiExitModel.from_pretrained(tmp_path)
    _record_hash(tmp_path, file_sha256(tmp_path / WEIGHTS_NAME))  # a consistent but wrong checkpoint
    with pytest.raises(CheckpointError, match="missing keys"):
        MultiExitModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("recorded", ["", None])
def test_unhashed_weights_load_only_with_the_opt_in(model_factory, tmp_path, recorded):
    model_factory("bert").save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    saved_hash = config.pop("weights_sha256")
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config if recorded is None else {**config, "weights_sha256": ""}))
    with pytest.raises(UnhashedWeightsError, match="records no weights_sha256") as caught:
        MultiExitModel.from_pretrained(tmp_path)
    assert caught.value.settings == ("trust_unhashed_weights",)
    model = MultiExitModel.from_pretrained(tmp_path, trust_unhashed_weights=True)
    # The hash of what was loaded, computed at load: identity and metadata use it, not the empty record.
    assert model.unhashed_weights and model.weights_sha256 == saved_hash
    assert model.checkpoint_id == f"{tmp_path.name}@{saved_hash[:12]}"
    assert weights_record(model) == {"weights_sha256": saved_hash, "unhashed_weights_trusted": True}


def test_a_load_hashes_the_weights_once_and_records_the_computed_hash(model_factory, tmp_path, monkeypatch):
    model_factory("bert").save_pretrained(tmp_path)
    calls = []
    monkeypatch.setattr(checkpoint, "file_sha256", lambda path: calls.append(path) or "f" * 64)
    _record_hash(tmp_path, "f" * 64)
    model = MultiExitModel.from_pretrained(tmp_path)
    assert len(calls) == 1 and model.weights_sha256 == "f" * 64 and not model.unhashed_weights
    assert weights_record(model) == {"weights_sha256": "f" * 64}


def test_a_killed_process_fetched_copy_is_removed_by_the_next_fetch(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from epee_annotate import filesystem

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f"{filesystem.FETCH_PREFIX}{dead}-abc"
    (stale / "ckpt").mkdir(parents=True)
    (stale / "ckpt" / WEIGHTS_NAME).write_bytes(b"x" * 1000)
    live = tmp_path / f"{filesystem.FETCH_PREFIX}{os.getpid()}-def"  # this process's own: kept
    live.mkdir()
    fresh = filesystem._fetch_dir()
    assert not stale.exists() and live.is_dir() and os.path.basename(fresh).startswith(
        f"{filesystem.FETCH_PREFIX}{os.getpid()}-")


def test_missing_directory_and_non_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        MultiExitModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not an epee-annotate checkpoint"):
        MultiExitModel.from_pretrained(tmp_path)


def _unhashed_checkpoint(model_factory, directory):
    model_factory("bert").save_pretrained(directory)
    saved_hash = json.loads((directory / CONFIG_NAME).read_text())["weights_sha256"]
    _record_hash(directory, "")
    return saved_hash


def test_notes_job_refuses_unhashed_weights_naming_the_opt_in(model_factory, tmp_path, capsys):
    from epee_annotate.cli import main

    _unhashed_checkpoint(model_factory, tmp_path / "ckpt")
    (tmp_path / "notes.jsonl").write_text(json.dumps({"id": 1, "text": "rash"}) + "\n")
    code = main(["annotate-notes", str(tmp_path / "notes.jsonl"), "--checkpoint", str(tmp_path / "ckpt"),
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "records no weights_sha256" in error and error.endswith("(see --allow-unhashed-weights)")
    assert not (tmp_path / "out").exists()


def test_the_opt_in_reaches_pipeline_components_and_is_recorded(model_factory, tmp_path):
    from epee_annotate.pipelines.notes import PipelineSource, component_info

    saved_hash = _unhashed_checkpoint(model_factory, tmp_path / "ckpt")
    source = PipelineSource(checkpoint=str(tmp_path / "ckpt"))
    with pytest.raises(UnhashedWeightsError):
        component_info(source.load({}))
    (info,) = component_info(source.load({"trust_unhashed_weights": True}))
    assert info["weights_sha256"] == saved_hash and info["unhashed_weights_trusted"] is True
