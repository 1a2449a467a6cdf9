"""The library has no side effects: light imports, and a job or a report from Python leaves the process as it was."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_importing_the_package_and_components_pulls_in_no_ray_pydicom_or_matplotlib():
    code = ("import sys\n"
            "import epee_annotate, epee_annotate.components, epee_annotate.pipelines\n"
            "print(sorted(m for m in ('ray', 'pydicom', 'matplotlib') if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class ProcessState:
    """What a library call must leave as it found it: environment, root logging, matplotlib's backend."""

    def __init__(self) -> None:
        import matplotlib

        root = logging.getLogger()
        self.environ = dict(os.environ)
        self.logging = (root.level, list(root.handlers))
        self.backend = dict.__getitem__(matplotlib.rcParams, "backend")  # raw: reading it must not resolve it
        self.pyplot = "matplotlib.pyplot" in sys.modules

    def assert_unchanged(self) -> None:
        after = ProcessState()
        assert after.environ == self.environ
        assert after.logging == self.logging
        assert after.backend == self.backend and after.pyplot == self.pyplot


def test_a_report_from_python_prints_nothing_and_keeps_the_process_state(tmp_path, capsys):
    import torch

    from epee_annotate import EPEE
    from epee_annotate.evaluation import ExitTable, evaluate_table
    from epee_annotate.reports import write_report

    probs = torch.softmax(torch.randn(6, 3, 2, generator=torch.Generator().manual_seed(0)), dim=-1)
    table = ExitTable(probs, torch.tensor([0, 1, 0, 1, 1, 0]), ["neg", "pos"])
    before = ProcessState()
    paths = write_report(evaluate_table(table, policy=EPEE(0.5, 2), grid=True, taus=[0.0, 0.5], patiences=[2]),
                         tmp_path)
    assert paths["exits"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before.assert_unchanged()
    assert capsys.readouterr().out == ""


@pytest.mark.ray
def test_a_job_from_python_prints_nothing_and_keeps_the_process_state(tmp_path, capsys):
    ray = pytest.importorskip("ray")
    from epee_annotate.pipelines.jobs import JobOptions, NotesJob, run_notes_job
    from epee_annotate.pipelines.notes import PipelineSource
    from epee_annotate.testing import tiny_model

    if ray.is_initialized():
        pytest.skip("needs a process where the job starts Ray itself")
    tiny_model("bert", tmp_path / "ckpt", labels=("neg", "pos")).save_pretrained(tmp_path / "ckpt")
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"id": f"n{i}", "text": "rash after the dose"}) + "\n"
                                                  for i in range(3)))
    before = ProcessState()
    summary = run_notes_job(NotesJob(inputs=[str(tmp_path / "notes.jsonl")],
                                     source=PipelineSource(checkpoint=str(tmp_path / "ckpt")),
                                     options=JobOptions(out=str(tmp_path / "out"), batch_size=2, progress=False)))
    assert summary["documents"] == 3 and summary["dataset"] == str(tmp_path / "out" / "annotations")
    assert (tmp_path / "out" / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not ray.is_initialized()  # the job stopped the Ray it started
    before.assert_unchanged()
    assert capsys.readouterr().out == ""


# ----- optional dependencies ---------------------------------------------------------------------
MISSING = """
import sys
for name in ("ray", "pydicom", "medspacy"):
    sys.modules[name] = None  # import fails as if the extra were not installed
"""


def run_without_extras(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", MISSING + code], capture_output=True, text=True, timeout=300,
                          env=env)


def test_text_components_run_without_the_extras_and_each_missing_extra_is_one_line(tmp_path):
    from epee_annotate.testing import tiny_model

    tiny_model("bert", tmp_path / "ckpt", labels=("neg", "pos")).save_pretrained(tmp_path / "ckpt")
    import numpy as np
    from PIL import Image

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "x.png")
    dicom = b"\0" * 128 + b"DICM" + b"\0" * 64
    code = f"""
import spacy
from epee_annotate.cli import main
from epee_annotate.components import build_drug_lexicon
from epee_annotate.extras import MissingExtraError
from epee_annotate.image_decoding import read_image

nlp = spacy.blank("en")
nlp.add_pipe("sentencizer")
nlp.add_pipe("epee_textcat", config={{"checkpoint": {str(tmp_path / "ckpt")!r}}})
docs = list(nlp.pipe(["rash after the dose. no nausea.", "fine"]))
print("text ok", sum(len(d._.epee_annotations) for d in docs))
print("png ok", read_image({str(tmp_path / "x.png")!r})[0].pixels.shape)
for call in (lambda: read_image({dicom!r}), lambda: build_drug_lexicon(["aspirin"])):
    try:
        call()
    except MissingExtraError as error:
        print(error)
sys.exit(main(["annotate-notes", "notes.jsonl", "--checkpoint", "x", "--out", {str(tmp_path / "out")!r}]))
"""
    result = run_without_extras(code)
    lines = result.stdout.splitlines()
    assert lines[:2] == ["text ok 3", "png ok (8, 8)"], result.stderr[-2000:]
    assert lines[2] == "decoding DICOM needs pydicom, which is not installed: pip install 'epee-annotate[imaging]' (or [all])"
    assert lines[3].startswith("a drug lexicon needs medspacy") and "'epee-annotate[clinical]'" in lines[3]
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "epee-annotate annotate-notes: error: annotate-notes needs ray, which is not installed: "
        "pip install 'epee-annotate[ray]' (or [all])"]
