"""The command line is fast to start and quiet by default: one progress line or bar, then the summary."""

import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from epee_annotate.testing import tiny_model

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "spacy", "ray", "pyarrow", "pydicom")


def test_help_imports_no_heavy_module():
    code = ("import sys, contextlib, io\n"
            "from epee_annotate.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit as done:\n"
            "        assert done.code == 0\n"
            "assert 'annotate-notes' in out.getvalue()\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_package_names_still_import_on_demand():
    import epee_annotate

    assert epee_annotate.MultiExitModel.__name__ == "MultiExitModel"
    assert epee_annotate.EPEE(entropy=0.1, patience=1).patience == 1
    with pytest.raises(AttributeError):
        epee_annotate.not_a_name  # noqa: B018


def test_quiet_ray_keeps_only_the_total_progress_line(monkeypatch):
    from epee_annotate.cli.quiet import PROGRESS_LOGGER, quiet_ray

    for name in ("RAY_BACKEND_LOG_LEVEL", "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"):
        monkeypatch.delenv(name, raising=False)  # restored after the test, as the CLI's process would end
    progress = logging.getLogger(PROGRESS_LOGGER)
    try:
        quiet_ray(verbose=False)
        assert logging.getLogger("ray").level == logging.ERROR and os.environ["RAY_BACKEND_LOG_LEVEL"] == "fatal"
        record = lambda message: logging.LogRecord(PROGRESS_LOGGER, logging.INFO, "", 0, message, None, None)  # noqa
        assert progress.filter(record("Total Progress: 3/40")) and not progress.filter(record("Write: 0/1"))
        quiet_ray(verbose=False)  # idempotent: one filter
        assert len(progress.filters) == 1
        quiet_ray(verbose=True)
        assert progress.filter(record("Write: 0/1")) and logging.getLogger("ray").level == logging.INFO
    finally:
        for f in list(progress.filters):
            progress.removeFilter(f)
        logging.getLogger("ray").setLevel(logging.NOTSET)
        logging.getLogger("ray.data").setLevel(logging.NOTSET)


def test_notes_job_output_is_the_summary(tmp_path):
    """A fresh embedded Ray (a subprocess): no token-auth notice, no core_worker line, no operator logs."""
    checkpoint = tmp_path / "ckpt"
    tiny_model("bert", checkpoint, labels=("neg", "pos")).save_pretrained(checkpoint)
    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(f'{{"id": {i}, "text": "rash after dose {i}. no nausea."}}\n' for i in range(6)))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "epee_annotate", "annotate-notes", str(notes), "--checkpoint", str(checkpoint),
         "--out", str(tmp_path / "out"), "--batch-size", "2"],
        capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert any(line.startswith("notes job: 6 inputs") for line in result.stdout.splitlines()), lines
    noise = [line for line in lines if not line.startswith(("notes job:", "time:", "  textcat:", "dataset:"))
             and "Total Progress" not in line]
    assert noise == [], noise
    assert f"dataset: {tmp_path / 'out' / 'annotations'}" in result.stdout.splitlines()
    assert len(lines) <= 4 + 2  # the summary plus at most a progress line or two


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"][0]  # PEP 639 strings: setuptools 77+
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
