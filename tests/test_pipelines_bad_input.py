"""Bad input at the reading stage, without Ray: every fault is one error row that names where and what, never content."""

import io
import os

import pyarrow as pa
import pytest

from epee_annotate.pipelines.notes import NoteAnnotator, NoteColumns, extract_notes
from epee_annotate.pipelines.runtime import ActorSettings, check_cluster_fits
from epee_annotate.formats import ReadOptions, read_stream
from epee_annotate.pipelines.sources import (
    READ_ERROR, WHERE, note_passthrough_fields, records_block, resolve_image_inputs, resolve_note_inputs,
    unreadable_inputs,
)

CANARY = "canaryphrase-okapi"


def _rows(data: bytes, path: str, fmt: str, columns=("id", "text")) -> pa.Table:
    """The block a job's read task makes of ``data`` (the registry's reader, then ``records_block``)."""
    return records_block(read_stream(io.BytesIO(data), path, fmt, ReadOptions(columns=list(columns))))


def _jsonl_rows(data: bytes, path: str = "/in/notes.jsonl") -> pa.Table:
    return _rows(data, path, "jsonl")


def _csv_rows(data: bytes, path: str = "/in/export.csv", columns=("id", "text")) -> pa.Table:
    return _rows(data, path, "csv", columns)


def test_a_100k_deep_json_line_is_one_error_row():
    deep = b'{"id": 1, "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    block = _jsonl_rows(deep + b"\n" + b'{"id": 2, "text": "fine"}\n')
    bad, good = extract_notes(block, NoteColumns("jsonl"))
    assert bad.error == "notes.jsonl line 1: nested too deeply to parse (RecursionError)"
    assert good.doc_id == "2" and good.text == "fine" and good.error is None


def test_a_byte_order_mark_does_not_spoil_the_first_note():
    block = _jsonl_rows(b'\xef\xbb\xbf{"id": 1, "text": "first"}\n{"id": 2, "text": "second"}\n')
    notes = extract_notes(block, NoteColumns("jsonl"))
    assert [(n.doc_id, n.text, n.error) for n in notes] == [("1", "first", None), ("2", "second", None)]
    csv_notes = extract_notes(_csv_rows(b"\xef\xbb\xbfid,text\n1,first\n"), NoteColumns("csv"))
    assert [(n.doc_id, n.text, n.error) for n in csv_notes] == [("1", "first", None)]


def test_csv_row_with_extra_fields_is_an_error_row_naming_the_row_not_the_text():
    data = (f'id,text\n1,"two\nlines"\n2,{CANARY} took aspirin,{CANARY}\n3,fine\n4,"x",y,z\n').encode()
    block = _csv_rows(data)
    notes = extract_notes(block, NoteColumns("csv"))
    assert [(n.doc_id, n.text) for n in notes if n.error is None] == [("1", "two\nlines"), ("3", "fine")]
    errors = sorted(n.error for n in notes if n.error)
    assert errors == ["export.csv line 4: wrong number of fields (expected 2, found 3)",
                      "export.csv line 6: wrong number of fields (expected 2, found 4)"]
    # Rows keep the line they start on, so per-note errors say where too.
    assert block.column(WHERE).to_pylist() == ["line 2", "line 4", "line 5", "line 6"]


def test_a_non_csv_file_is_one_error_row_that_quotes_nothing_after_the_good_rows(tmp_path):
    from pydicom.data import get_testdata_file

    binary = open(get_testdata_file("CT_small.dcm"), "rb").read()
    block = _csv_rows(b"id,text\n1,ok\n" + binary + CANARY.encode())
    notes = extract_notes(block, NoteColumns("csv"))
    assert (notes[0].doc_id, notes[0].text, notes[0].error) == ("1", "ok", None)
    messages = [m for m in block.column(READ_ERROR).to_pylist() if m]
    assert messages == ["export.csv line 3: binary content (a NUL byte): not a text file; the rest of the file was "
                        "not read"]
    (tmp_path / "scan.csv").write_bytes(binary)
    (tmp_path / "noheader.csv").write_text(f"1,{CANARY} has a rash\n")
    for name in ("scan.csv", "noheader.csv"):
        with pytest.raises(ValueError) as refused:
            note_passthrough_fields("csv", [str(tmp_path / name)], "id", "text", [])
        assert name in str(refused.value) and CANARY not in str(refused.value) and "ISO_IR" not in str(refused.value)


def test_dangling_symlinks_and_loops_are_listed_and_reported_not_skipped(tmp_path):
    from epee_annotate.imaging.classify import find_image_files

    (tmp_path / "good.jsonl").write_text('{"id": 1, "text": "x"}\n')
    os.symlink(tmp_path / "missing.jsonl", tmp_path / "dangling.jsonl")
    os.symlink(tmp_path / "loop_b.jsonl", tmp_path / "loop_a.jsonl")
    os.symlink(tmp_path / "loop_a.jsonl", tmp_path / "loop_b.jsonl")
    fmt, files = resolve_note_inputs([str(tmp_path)])
    assert fmt == "jsonl" and len(files) == 4
    readable, problems = unreadable_inputs(files)
    assert [os.path.basename(f) for f in readable] == ["good.jsonl"]
    reasons = {os.path.basename(path): reason for path, reason in problems.items()}
    assert reasons == {"dangling.jsonl": "dangling symbolic link (its target does not exist)",
                       "loop_a.jsonl": "symbolic link loop", "loop_b.jsonl": "symbolic link loop"}
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"x")
    os.symlink(images / "gone.png", images / "b.png")
    assert [os.path.basename(f) for f in resolve_image_inputs([str(images)])] == ["a.png", "b.png"]
    assert [p.name for p in find_image_files([images])] == ["a.png", "b.png"]


def test_a_pool_that_takes_every_cpu_is_refused_naming_what_it_needs():
    with pytest.raises(ValueError, match=r"needs 2 x 1 CPU .* = 3 CPUs, but the Ray cluster has 2") as refused:
        check_cluster_fits(ActorSettings(num_actors=2), {"CPU": 2.0})
    assert refused.value.settings == ("num_actors", "cpus_per_actor")
    check_cluster_fits(ActorSettings(num_actors=2), {"CPU": 3.0})
    with pytest.raises(ValueError, match="2 GPUs"):
        check_cluster_fits(ActorSettings(num_actors=2, gpus_per_actor=1), {"CPU": 8.0, "GPU": 1.0})


def test_a_resumed_run_counts_the_checkpoint_filters_cpu():
    with pytest.raises(ValueError, match=r"plus 1 CPU for the checkpoint filter = 4 CPUs, but the Ray cluster has 3"):
        check_cluster_fits(ActorSettings(num_actors=2), {"CPU": 3.0}, extra_cpus=1)
    check_cluster_fits(ActorSettings(num_actors=2), {"CPU": 4.0}, extra_cpus=1)


def test_the_models_error_reaches_the_error_column():
    import spacy

    from epee_annotate.components.records import make_record
    from epee_annotate.prediction import Prediction

    annotator = object.__new__(NoteAnnotator)
    annotator.include_text, annotator.policies = False, {"cls": "budgeted(layer=0)"}
    annotator.names = {"doc_id", "task", "kind", "start", "end", "label", "status", "error", "policy", "probs"}
    doc = spacy.blank("en")("a note")
    doc._.epee_annotations = [make_record("cls", "doc", 0, 6, Prediction.failed("input is empty after encoding", 4))]
    (row,) = annotator._rows({"doc_id": "n1"}, doc)
    assert row["status"] == "error" and row["error"] == "input is empty after encoding"


def test_the_wait_for_the_actor_pool_is_bounded_for_the_job_only(monkeypatch):
    from ray.data import DataContext

    from epee_annotate.pipelines.jobs import JobOptions
    from epee_annotate.pipelines.runtime import job_data_context

    context = DataContext.get_current()
    monkeypatch.setattr(context, "wait_for_min_actors_s", -1)  # Ray Data's default: wait forever
    monkeypatch.setattr(context, "enable_progress_bars", True)
    with job_data_context(False, False, JobOptions(out="x").actor_start_timeout_s):
        assert context.wait_for_min_actors_s == 600 and context.enable_progress_bars is False
    with job_data_context(True, False, 5):  # the job's own bar (with a total) replaces Ray's "0/?" one
        assert context.enable_progress_bars is False
    with job_data_context(True, True, 5):
        assert context.enable_progress_bars is True and context.enable_operator_progress_bars is True
    assert context.wait_for_min_actors_s == -1 and context.enable_progress_bars is True  # the caller's again
    with pytest.raises(ValueError, match="must be > 0"):
        JobOptions(out="x", actor_start_timeout_s=0)
