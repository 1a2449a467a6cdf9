"""Batch-job building blocks that need no Ray: schema, input parsing, staging, pipeline sources."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from epee_annotate.pipelines.notes import NoteColumns, PipelineSource, component_info, extract_notes, parse_overrides
from epee_annotate.pipelines.output import check_output, staged_output
from epee_annotate.pipelines.schema import (
    METADATA_KEY, job_metadata, output_schema, read_job_metadata, rows_to_table, safe_rows_to_table,
    with_job_metadata,
)
from epee_annotate.formats import ReadOptions, read_stream
from epee_annotate.formats.jsonl import parse_object
from epee_annotate.pipelines.sources import note_format, records_block, resolve_image_inputs, resolve_note_inputs
from epee_annotate.pipelines.summary import format_summary, summarize


# ----- schema --------------------------------------------------------------------------
def test_schema_columns_types_and_order():
    schema = output_schema("images", [pa.field("reference_label", pa.int64())])
    names = schema.names
    assert names[:5] == ["doc_id", "task", "kind", "start", "end"]
    assert names[-7:] == ["reference_label", "sop_instance_uid", "study_instance_uid", "series_instance_uid",
                          "modality", "body_part_examined", "path"]
    assert schema.field("start").type == pa.int32() and schema.field("frame").type == pa.int32()
    assert schema.field("exit_layer").type == pa.int16()
    assert schema.field("confidence").type == pa.float32()
    assert schema.field("probs").type == pa.list_(pa.float32())
    notes = output_schema("notes", [pa.field("patient", pa.string())])
    assert "text" not in notes.names and "path" not in notes.names and notes.names[-1] == "patient"
    assert "text" in output_schema("notes", include_text=True).names


def test_schema_rejects_clashing_passthrough_and_unknown_row_keys():
    with pytest.raises(ValueError, match="clash"):
        output_schema("notes", [pa.field("label", pa.string())])
    with pytest.raises(KeyError, match="not in the output schema"):
        rows_to_table([{"doc_id": "a", "bogus": 1}], output_schema("notes"))


def test_safe_rows_to_table_replaces_only_the_row_that_does_not_fit():
    schema = output_schema("notes", [pa.field("visit", pa.int32())])
    rows = [{"doc_id": "a", "status": "ok", "visit": 1}, {"doc_id": "b", "status": "ok", "visit": "x"},
            {"doc_id": "c", "status": "ok", "visit": 2**40}]
    table = safe_rows_to_table(rows, schema)
    assert table.column("doc_id").to_pylist() == ["a", "b", "c"]
    assert table.column("status").to_pylist() == ["ok", "error", "error"]
    assert table.column("visit").to_pylist() == [1, None, None]
    assert "could not be stored" in table.column("error").to_pylist()[1]


def test_metadata_round_trip_through_parquet(tmp_path):
    schema = with_job_metadata(output_schema("notes"), {"job": "notes", "components": [{"task": "t"}]})
    table = rows_to_table([{"doc_id": "a", "status": "ok", "probs": [0.25, 0.75]}], schema)
    assert table.schema.field("probs").type == pa.list_(pa.float32())
    pq.write_table(table.replace_schema_metadata(schema.metadata), tmp_path / "x.parquet")
    meta = read_job_metadata(tmp_path)
    assert meta["job"] == "notes" and meta["schema_version"] == 2 and meta["components"] == [{"task": "t"}]
    assert job_metadata(pa.schema([])) == {}
    assert METADATA_KEY in pq.read_schema(tmp_path / "x.parquet").metadata


# ----- inputs ----------------------------------------------------------------------------
def test_resolve_note_inputs_dirs_globs_and_format_sniffing(tmp_path):
    (tmp_path / "a.csv").write_text("id,text\n1,x\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text("id,text\n2,y\n")
    (tmp_path / "_hidden.csv").write_text("id,text\n")
    (tmp_path / "notes.txt").write_text("ignored")
    fmt, files = resolve_note_inputs([str(tmp_path)])
    assert fmt == "csv" and [os.path.basename(f) for f in files] == ["a.csv", "b.csv"]
    assert resolve_note_inputs([str(tmp_path / "**" / "*.csv")])[1] == files
    (tmp_path / "lines.json").write_text('{"id": 1}\n')
    (tmp_path / "array.json").write_text('  [{"id": 1}]')
    assert note_format(str(tmp_path / "lines.json")) == "jsonl"
    assert note_format(str(tmp_path / "array.json")) == "json"
    with pytest.raises(ValueError, match="mix formats"):
        resolve_note_inputs([str(tmp_path)])
    with pytest.raises(FileNotFoundError):
        resolve_note_inputs([str(tmp_path / "missing.csv")])


def test_parquet_passthrough_types_must_agree_across_files(tmp_path):
    from epee_annotate.pipelines.sources import note_passthrough_fields

    pq.write_table(pa.table({"id": [1], "text": ["a"], "visit": pa.array([1], pa.int32())}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [2], "text": ["b"], "visit": ["v2"]}), tmp_path / "b.parquet")
    files = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    assert note_passthrough_fields("parquet", files[:1], "id", "text", ["visit"]) == [pa.field("visit", pa.int32())]
    with pytest.raises(ValueError, match="other types"):
        note_passthrough_fields("parquet", files, "id", "text", ["visit"])
    with pytest.raises(ValueError, match="not found"):
        note_passthrough_fields("parquet", files, "id", "body", [])


def test_resolve_image_inputs_keeps_extensionless_dicom_and_skips_others(tmp_path):
    for name in ("a.png", "b.DCM", "IM0001", "DICOMDIR", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    names = [os.path.basename(f) for f in resolve_image_inputs([str(tmp_path)])]
    assert names == ["IM0001", "a.png", "b.DCM"]


def _block(data: bytes, fmt: str, columns=("id", "text"), path: str = "/x/in.jsonl") -> pa.Table:
    import io

    return records_block(read_stream(io.BytesIO(data), path, fmt, ReadOptions(columns=list(columns))))


def test_json_lines_split_only_on_line_ends_not_inside_strings():
    data = "{\"id\": 1, \"text\": \"a\u2028b\"}\r\n\n{\"id\": 2, \"text\": \"c\"}".encode()
    notes = extract_notes(_block(data, "jsonl"), NoteColumns("jsonl"))
    assert [(n.doc_id, n.text) for n in notes] == [("1", "a\u2028b"), ("2", "c")]


def test_parse_object_errors_never_quote_content():
    assert parse_object('{"id": 1}', 9) == {"id": 1}
    for raw, reason in (('{"id": 1, "text": "secretword', "not valid JSON"), ("[1, 2]", "not an object")):
        with pytest.raises(ValueError, match=reason) as info:
            parse_object(raw, len(raw))
        assert "secretword" not in str(info.value)
    [bad] = extract_notes(_block(b"\xff\xfe secretword\n", "jsonl"), NoteColumns("jsonl"))
    assert bad.error == "in.jsonl line 1: not valid UTF-8 (byte 0)"


def test_extract_notes_jsonl_gives_one_outcome_per_line():
    lines = [b'{"id": 7, "text": "ok note", "pid": 3}', b'{"id": "b", "text": 12}', b'{"text": "no id"}',
             b'{"id": "c"}', b"{broken", b'{"id": "d", "text": null, "pid": {"a": 1}}', b'{"id": 1.0, "text": ""}']
    block = _block(b"\n".join(lines), "jsonl", ("id", "text", "pid"))
    notes = extract_notes(block, NoteColumns("jsonl", keep_columns=("pid",)))
    assert [n.doc_id for n in notes] == ["7", "b", None, "c", None, "d", "1"]
    assert notes[0].text == "ok note" and notes[0].error is None and notes[0].keep == {"pid": "3"}
    assert "must be a string, got int" in notes[1].error
    assert "missing id" in notes[2].error and "line 3" in notes[2].error
    assert "no 'text' field" in notes[3].error
    assert "not valid JSON" in notes[4].error and "line 5" in notes[4].error
    assert notes[5].text is None and notes[5].error is None and notes[5].keep == {"pid": '{"a": 1}'}
    assert notes[6].text == "" and notes[6].error is None


def test_extract_notes_csv_decodes_per_row():
    block = _block(b"id,text,pid\na,fine,p\n,x,q\nc,bad \xff,r\n", "csv", ("id", "text", "pid"), "/x/in.csv")
    notes = extract_notes(block, NoteColumns("csv", keep_columns=("pid",)))
    assert notes[0].text == "fine" and notes[0].keep == {"pid": "p"}
    assert notes[1].doc_id is None and "missing id" in notes[1].error
    assert notes[2].doc_id == "c" and notes[2].error == "in.csv line 4: field 2 is not valid UTF-8 (byte 4)"
    assert notes[2].keep == {"pid": "r"}  # an error record keeps the fields that could be read


def test_crash_once_kills_the_process_once(tmp_path):
    import subprocess
    import sys

    marker = tmp_path / "marker"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from crash_once import crash_once; "
              "crash_once(sys.argv[2], 'd3', sys.argv[3].split(',')); print('survived')")

    def call(doc_ids: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__), str(marker), doc_ids],
                              capture_output=True, text=True, timeout=60)

    first = call("d1,d2")  # not the chosen doc: nothing happens
    assert first.returncode == 0 and "survived" in first.stdout and not marker.exists()
    crashed = call("d2,d3")
    assert crashed.returncode == 1 and "survived" not in crashed.stdout and marker.exists()
    retry = call("d3")  # marker exists: this is the retry, so it proceeds
    assert retry.returncode == 0 and "survived" in retry.stdout


# ----- output staging --------------------------------------------------------------------
def test_staged_output_is_all_or_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output(out, overwrite=False) as staging:
            (staging / "part.parquet").write_text("half")
            raise RuntimeError("job died")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_output(out, overwrite=False) as staging:
        (staging / "part.parquet").write_text("v1")
    assert (out / "part.parquet").read_text() == "v1"
    with pytest.raises(FileExistsError, match="already exists") as refused:
        check_output(out, overwrite=False)
    assert refused.value.settings == ("overwrite",) and "--" not in str(refused.value)  # the CLI adds its flag
    with staged_output(out, overwrite=True) as staging:
        (staging / "other.parquet").write_text("v2")
    assert [p.name for p in out.iterdir()] == ["other.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copies left


def test_cli_refuses_existing_output_before_doing_work(tmp_path, capsys):
    from epee_annotate.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "in.csv").write_text("id,text\n1,x\n")
    (tmp_path / "ckpt").mkdir()
    code = main(["annotate-notes", str(tmp_path / "in.csv"), "--checkpoint", str(tmp_path / "ckpt"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "--overwrite" in capsys.readouterr().err


# ----- pipeline sources ------------------------------------------------------------------
def test_parse_overrides():
    assert parse_overrides(["a.b=1", "c.d=runs/x", 'e={"budget": 0}']) == {"a.b": 1, "c.d": "runs/x",
                                                                           "e": {"budget": 0}}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["nokey"])


def test_pipeline_sources_apply_settings_and_replace_saved_policy(tmp_path, model_factory):
    checkpoint = tmp_path / "ckpt"
    model_factory("bert").save_pretrained(checkpoint)
    with pytest.raises(ValueError, match="exactly one"):
        PipelineSource()
    nlp = PipelineSource(checkpoint=str(checkpoint), task_name="cls").load({"policy": {"budget": 2}})
    (info,) = component_info(nlp)
    assert info["task"] == "cls" and info["policy"] == "budgeted(layer=2)" and info["labels"] == ["neg", "pos", "other"]
    assert info["runtime"] == "torch"  # recorded in the job metadata
    digest = model_factory("bert").config.weights_sha256[:12]
    assert len(digest) == 12 and info["checkpoint_id"] == f"ckpt@{digest}"  # this checkpoint, not its base
    nlp.to_disk(tmp_path / "pipe")
    nlp.config.to_disk(tmp_path / "pipe.cfg")
    # A saved {"budget": 2} must be replaced, not merged with the new knobs.
    loaded = PipelineSource(pipeline=str(tmp_path / "pipe")).load({"policy": {"entropy": 0.5, "patience": 2},
                                                                   "batch_size": 5})
    assert loaded.get_pipe("cls").policy.describe() == "epee(entropy=0.5,patience=2)"
    assert loaded.get_pipe("cls").batch_size == 5
    from_cfg = PipelineSource(config=str(tmp_path / "pipe.cfg"),
                              overrides=parse_overrides(["components.cls.scope=doc"])).load({})
    assert from_cfg.get_pipe("cls").scope == "doc" and from_cfg.get_pipe("cls").policy.describe() == "budgeted(layer=2)"
    # A dict given with --set replaces the saved section too.
    replaced = PipelineSource(config=str(tmp_path / "pipe.cfg"),
                              overrides=parse_overrides(['components.cls.policy={"patience": 3}'])).load({})
    assert replaced.get_pipe("cls").policy.describe() == "patience(patience=3)"
    with pytest.raises(ValueError, match="not in the config"):
        PipelineSource(config=str(tmp_path / "pipe.cfg"), overrides={"components.nope.policy": {"budget": 1}}).load({})


def test_summary_counts_and_speedup(tmp_path):
    schema = output_schema("notes")
    rows = [
        {"doc_id": "a", "task": "t", "kind": "sentence", "label": "x", "exit_layer": 2, "num_layers": 4, "status": "ok"},
        {"doc_id": "a", "task": "t", "kind": "sentence", "label": "y", "exit_layer": 4, "num_layers": 4, "status": "ok"},
        {"doc_id": "b", "kind": "doc", "status": "empty"},
        {"doc_id": None, "kind": "doc", "status": "error", "error": "missing id"},
        {"doc_id": None, "kind": "doc", "status": "error", "error": "missing id"},
        # A pair a DDI negative rule answered: no exit layer, counted apart from the model's rows.
        {"doc_id": "a", "task": "t", "kind": "pair", "start": 0, "end": 9, "label": "none", "num_layers": 4,
         "status": "ok", "rule": "coordination"},
    ]
    pq.write_table(rows_to_table(rows, schema), tmp_path / "p.parquet")
    summary = summarize(tmp_path, False, {"pipeline_s": 2.0, "wall_s": 3.0}, "notes")
    assert summary["documents"] == 4 and summary["rows"] == 6
    assert summary["rows_per_status"] == {"ok": 3, "empty": 1, "error": 2}
    assert summary["tasks"]["t"]["exit_layers"] == {2: 1, 4: 1} and summary["tasks"]["t"]["rows"] == 2
    assert summary["tasks"]["t"]["layer_speedup"] == pytest.approx(4 / 3, abs=1e-3)
    assert summary["rule_rows"] == {"t": {"coordination": 1}}
    assert "t: 1 more rows answered by rules without the model (coordination 1)" in format_summary(summary)
    assert summary["throughput"]["docs_per_s"] == 2.0
    json.dumps(summary)


def test_output_parent_directories_are_created_but_not_through_a_file(tmp_path):
    out = tmp_path / "runs" / "2024" / "out"
    with staged_output(check_output(out, overwrite=False), overwrite=False) as staging:
        (staging / "part.parquet").write_text("v1")
    assert (out / "part.parquet").read_text() == "v1"
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        check_output(tmp_path / "afile" / "out", overwrite=False)


def test_a_lone_surrogate_escape_in_a_json_line_does_not_break_its_block():
    block = _block(b'{"id": 1, "text": "bad \\ud800 escape"}\n{"id": 2, "text": "fine"}\n', "jsonl")
    notes = extract_notes(block, NoteColumns("jsonl"))
    assert [(n.doc_id, n.text) for n in notes] == [("1", "bad \ud800 escape"), ("2", "fine")]
