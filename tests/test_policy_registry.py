"""The exit-policy registry: every entry point offers every registered policy, one conflict rule with one
message everywhere, choosing a policy changes what runs, and a new policy is one module and one line."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import spacy

from conftest import make_texts
from epee_annotate.cli import build_parser, main
from epee_annotate.components import doc_annotations
from epee_annotate.pipelines.errors import SettingError
from epee_annotate.pipelines.jobs import JobOptions
from epee_annotate.policies import (
    BEEM, REGISTRY, PolicySettingError, families, policy_from_dict, policy_overrides, resolve_policy,
    setting_keys, settings,
)

MODEL_COMMANDS = ("annotate-notes", "annotate-images", "classify-images", "evaluate")
FACTORIES = ("epee_textcat", "epee_span_classifier", "epee_relation_classifier", "epee_supplement_status",
             "epee_ddi", "epee_pv_event")
CONFLICT = "conflicting exit-policy settings: entropy (EPEE (entropy and/or patience)) and beem (BEEM)"
REPO = Path(__file__).resolve().parents[1]


def sample_value(setting):
    """A valid value of a setting: the middle of its range, or one above its minimum."""
    if setting.minimum is not None and setting.maximum is not None:
        value = (setting.minimum + setting.maximum) / 2
    else:
        value = (setting.minimum or 0) + 1
    return setting.type(value)


def one_setting_per_policy():
    """{policy name: flat settings choosing it}, for every registered policy."""
    return {spec.name: {spec.settings[0].key: sample_value(spec.settings[0])} for spec in REGISTRY}


def subcommands():
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


# ----- every entry point derives from the registry -------------------------------------------------
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_offers_every_registered_policy_setting(command):
    flags = {flag for action in subcommands()[command]._actions for flag in action.option_strings}
    missing = [s.flag for s in settings() if s.flag not in flags]
    assert not missing, f"{command} does not offer {missing}"


def test_calibrate_searches_every_registered_family():
    (family,) = [a for a in subcommands()["calibrate"]._actions if "--family" in a.option_strings]
    assert list(family.choices) == [f.name for f in families()]


@pytest.mark.parametrize("factory", FACTORIES)
def test_every_factory_takes_every_policy_setting(factory):
    defaults = spacy.blank("en").get_factory_meta(factory).default_config
    assert {*setting_keys(), "policy"} <= set(defaults)
    assert all(defaults[key] is None for key in setting_keys())


@pytest.mark.parametrize("name, flat", sorted(one_setting_per_policy().items()))
def test_job_options_carry_every_policy_to_the_actors(name, flat):
    options = JobOptions(out="unused", policy=flat)
    assert options.policy_knobs == flat
    overrides = policy_overrides(options.policy_knobs)  # what each actor's components receive
    assert set(overrides) == {"policy", *setting_keys()}
    assert resolve_policy(overrides) == resolve_policy(flat)
    assert any(resolve_policy(flat).name == cls.name for spec in REGISTRY if spec.name == name
               for cls in spec.classes)


def test_every_registered_setting_is_range_checked():
    for setting in settings():
        if setting.minimum is not None:
            with pytest.raises(PolicySettingError, match=f"{setting.key} must be in"):
                resolve_policy({setting.key: setting.minimum - 1})


# ----- one conflict rule, one message --------------------------------------------------------------
def test_conflicting_settings_give_one_message_from_python_config_and_jobs():
    with pytest.raises(PolicySettingError) as python:
        resolve_policy({"entropy": 0.3, "beem": 0.5})
    assert str(python.value).startswith(CONFLICT)
    with pytest.raises(ValueError) as config:
        spacy.blank("en").add_pipe("epee_pv_event", config={"checkpoint": "x", "entropy": 0.3, "beem": 0.5})
    assert CONFLICT in str(config.value)
    with pytest.raises(SettingError) as job:
        JobOptions(out="unused", policy={"entropy": 0.3, "beem": 0.5})
    assert str(job.value) == str(python.value) and set(job.value.settings) == {"entropy", "beem"}
    with pytest.raises(SettingError, match="unknown exit-policy settings"):
        JobOptions(out="unused", policy={"tau": 0.3})


@pytest.mark.parametrize("command", [
    ["classify-images", "CKPT", "x.png"],
    ["annotate-images", "x.png", "--checkpoint", "CKPT", "--out", "OUT"],
    ["annotate-notes", "notes.jsonl", "--checkpoint", "CKPT", "--out", "OUT"],
    ["evaluate", "CKPT", "--data", "notes.jsonl", "--report", "OUT"],
])
def test_every_command_refuses_conflicting_policy_flags_with_the_same_message(command, tmp_path, capsys,
                                                                             model_factory):
    checkpoint = tmp_path / "ckpt"
    model_factory("bert").save_pretrained(checkpoint)
    (tmp_path / "x.png").write_bytes(b"")
    (tmp_path / "notes.jsonl").write_text('{"id": 1, "text": "rash", "label": "neg"}\n')
    args = [str(checkpoint) if a == "CKPT" else str(tmp_path / "out") if a == "OUT" else
            str(tmp_path / a) if "." in a else a for a in command]
    assert main(args + ["--entropy", "0.3", "--beem", "0.5"]) == 2
    assert CONFLICT in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----- choosing a policy changes what runs ---------------------------------------------------------
def policy_cases():
    """Settings of every registered policy, chosen so that most make some inputs exit early."""
    cases = {"epee": {"entropy": 0.9, "patience": 2}, "budget": {"budget": 1}, "beem": {"beem": 0.4},
             "maxprob": {"max_prob": 0.5}}
    assert set(cases) == {spec.name for spec in REGISTRY}, "add a case for the new policy"
    return sorted(cases.items())


def pipe_exit_layers(checkpoint, texts, flat):
    nlp = spacy.blank("en")
    nlp.add_pipe("epee_textcat", config={"checkpoint": str(checkpoint), "scope": "doc", **flat})
    return [doc_annotations(doc)[0]["exit_layer"] for doc in nlp.pipe(texts)]


@pytest.mark.parametrize("name, flat", policy_cases())
def test_components_and_evaluate_run_the_chosen_policy(name, flat, text_checkpoint, tmp_path):
    from epee_annotate.model import MultiExitModel

    texts = make_texts(24, seed=3)
    model = MultiExitModel.from_pretrained(text_checkpoint)
    policy = resolve_policy(flat)
    expected = [p.exit_layer for p in model.predict(texts, policy=policy)]
    assert pipe_exit_layers(text_checkpoint, texts, flat) == expected
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": "neg"}) + "\n" for t in texts))
    flags = [arg for key, value in flat.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
    assert main(["evaluate", str(text_checkpoint), "--data", str(data), "--report", str(tmp_path / "r"),
                 "--no-timing", "--no-plots", *flags]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert policy_from_dict(report["selected"]["policy"]) == policy
    assert report["selected"]["exit_histogram"] == np.bincount(expected, minlength=model.num_layers + 1)[1:].tolist()


@pytest.mark.parametrize("name, flat", policy_cases())
def test_classify_images_runs_the_chosen_policy(name, flat, image_checkpoint, tmp_path):
    from PIL import Image

    from epee_annotate.imaging.classify import classify_images
    from epee_annotate.model import MultiExitModel

    rng = np.random.default_rng(0)
    files = []
    for i in range(6):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(files[-1])
    model = MultiExitModel.from_pretrained(image_checkpoint)
    expected = [r.prediction.exit_layer for r in classify_images(model, files, resolve_policy(flat))]
    flags = [arg for key, value in flat.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
    out = tmp_path / "out.jsonl"
    assert main(["classify-images", str(image_checkpoint), *map(str, files), "--output", str(out), *flags]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["exit_layer"] for r in sorted(rows, key=lambda r: r["source"])] == expected


def read_rows(out: Path) -> list[dict]:
    tables = [pq.read_table(p) for p in sorted(out.rglob("*.parquet")) if not any(
        part.startswith(("_", ".")) for part in p.relative_to(out).parts)]
    return pa.concat_tables(tables).to_pylist()


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.ray
def test_annotate_notes_beem_and_entropy_run_what_they_say(local_ray, text_checkpoint, tmp_path):
    texts = make_texts(20, seed=5)
    source = tmp_path / "notes.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    layers = {}
    for name, flat in (("beem", {"beem": 0.4}), ("entropy", {"entropy": 0.99})):
        out = tmp_path / name
        flags = [arg for key, value in flat.items() for arg in (f"--{key}", str(value))]
        assert main(["annotate-notes", str(source), "--checkpoint", str(text_checkpoint), "--scope", "doc",
                     "--out", str(out), "--no-progress", "--num-actors", "1", "--batch-size", "8", *flags]) == 0
        rows = sorted(read_rows(out), key=lambda r: int(r["doc_id"]))
        layers[name] = [r["exit_layer"] for r in rows]
        assert layers[name] == pipe_exit_layers(text_checkpoint, texts, flat)
        assert {r["policy"] for r in rows} == {resolve_policy(flat).describe()}
    assert layers["beem"] != layers["entropy"]


@pytest.mark.ray
def test_annotate_images_beem_runs_beem(local_ray, image_checkpoint, tmp_path):
    from PIL import Image

    from epee_annotate.imaging.classify import classify_images
    from epee_annotate.model import MultiExitModel

    rng = np.random.default_rng(1)
    files = []
    for i in range(6):
        files.append(tmp_path / "in" / f"img{i}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(files[-1])
    out = tmp_path / "out"
    assert main(["annotate-images", str(tmp_path / "in"), "--checkpoint", str(image_checkpoint), "--out", str(out),
                 "--no-progress", "--num-actors", "1", "--beem", "0.4"]) == 0
    got = {Path(r["path"]).name: r["exit_layer"] for r in read_rows(out)}
    model = MultiExitModel.from_pretrained(image_checkpoint)
    expected = {Path(r.source).name: r.prediction.exit_layer for r in classify_images(model, files, BEEM(0.4))}
    assert got == expected and {r["policy"] for r in read_rows(out)} == {BEEM(0.4).describe()}


# ----- a new policy is one module and one registry line --------------------------------------------
def docs_policy_example() -> str:
    """The "Writing a new exit policy" example of docs/evaluation.md, as written there."""
    text = (REPO / "docs" / "evaluation.md").read_text()
    section = text[text.index("## Writing a new exit policy"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]


def test_a_new_policy_is_one_module_and_one_registry_line(tmp_path):
    (tmp_path / "my_policy.py").write_text(docs_policy_example())
    script = textwrap.dedent("""
        import my_policy
        from epee_annotate.policies import registry
        registry.REGISTRY.append(my_policy.SPEC)  # the one line
        import spacy
        from epee_annotate.cli import build_parser
        from epee_annotate.pipelines.jobs import JobOptions
        from epee_annotate.policies import families, policy_from_dict, resolve_policy
        assert resolve_policy({"fixed_layer": 2}) == my_policy.FixedLayer(2)
        assert policy_from_dict(my_policy.FixedLayer(3).to_dict()) == my_policy.FixedLayer(3)
        nlp = spacy.blank("en")
        assert "fixed_layer" in nlp.get_factory_meta("epee_pv_event").default_config
        parser = build_parser()
        sub = [a for a in parser._actions if a.dest == "command"][0].choices
        for command in ("annotate-notes", "annotate-images", "classify-images", "evaluate"):
            assert "--fixed-layer" in {f for a in sub[command]._actions for f in a.option_strings}, command
        assert JobOptions(out="x", policy={"fixed_layer": 1}).policy_knobs == {"fixed_layer": 1}
        assert "fixed_layer" in [f.name for f in families()]
        import torch
        from epee_annotate.policies import simulate
        assert simulate(my_policy.FixedLayer(2), torch.rand(5, 4, 3).softmax(-1)).tolist() == [2] * 5
        try:
            resolve_policy({"fixed_layer": 1, "budget": 2})
        except ValueError as error:
            assert "conflicting exit-policy settings" in str(error)
        else:
            raise AssertionError("no conflict")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_docs_settings_table_is_the_registry():
    from epee_annotate.policies import settings_table

    assert settings_table() in (REPO / "docs" / "components.md").read_text()


def test_set_examples_in_annotate_notes_help_run_as_written(clinical_checkpoints):
    import re

    from epee_annotate.pipelines.notes import PipelineSource, parse_overrides

    (action,) = [a for a in subcommands()["annotate-notes"]._actions if "--set" in a.option_strings]
    config, *examples = re.findall(r"--config (\S+?):|(\S+=\S+)", action.help)
    assert config[0] == "configs/pv_event.cfg" and len(examples) == 2
    overrides = [example for _, example in examples]
    # The example's checkpoint path is the demo's; point it at a tiny one, keep everything else as written.
    overrides[0] = overrides[0].split("=")[0] + "=" + clinical_checkpoints["pv"]
    nlp = PipelineSource(config=str(REPO / config[0]), overrides=parse_overrides(overrides)).load({})
    pipe = nlp.get_pipe("epee_pv_event")
    assert pipe.checkpoint == clinical_checkpoints["pv"] and pipe.policy == resolve_policy({"entropy": 0.3})


@pytest.mark.parametrize("name, key", [("pv_event", "pv"), ("ddi", "ddi"), ("supplement_status", "sup")])
def test_job_settings_reach_the_shipped_configs_classifiers_only(name, key, clinical_checkpoints):
    # What annotate-notes --config does with each shipped config: the job's settings go to the EPEE
    # classifiers, never to other components of the config (epee_sections takes none of them).
    from epee_annotate.pipelines.notes import PipelineSource

    path_key = {"pv": "pv_checkpoint", "ddi": "ddi_checkpoint", "sup": "supplement_checkpoint"}[key]
    source = PipelineSource(config=str(REPO / "configs" / f"{name}.cfg"),
                            overrides={f"paths.{path_key}": clinical_checkpoints[key]})
    nlp = source.load({**policy_overrides({"budget": 1}), "batch_size": 8, "device": "cpu", "autocast": None})
    assert nlp.get_pipe(f"epee_{name}").policy == resolve_policy({"budget": 1})
