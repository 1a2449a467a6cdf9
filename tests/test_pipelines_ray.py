"""The batch jobs end to end on a local 2-CPU Ray: notes (CSV, JSONL, Parquet) and images (files, npz).

One Ray session for the module (start-up is slow on two cores); every job runs one actor.
"""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from epee_annotate.cli import main
from epee_annotate.pipelines.schema import read_job_metadata

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

SECRET = "zebrafishword"  # a distinctive word that must never reach the output unless asked for
COMMON = ["--no-progress", "--num-actors", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def read(out: Path, partitioned: bool = False) -> pa.Table:
    """The rows of a job output: its ``annotations`` dataset."""
    dataset = pads.dataset(str(out / "annotations"), format="parquet", partitioning="hive" if partitioned else None)
    return dataset.to_table()


def rows_by_id(table: pa.Table) -> dict:
    out = {}
    for row in table.to_pylist():
        out.setdefault(row["doc_id"], []).append(row)
    return out


def parquet_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


def read_with_every_reader(out: Path, partitioned: bool) -> "pd.DataFrame":  # noqa: F821
    """pandas, pyarrow.dataset, polars and DuckDB open the dataset the job recorded, with no filter, and see
    exactly the manifest's rows."""
    import duckdb
    import pandas as pd
    import polars as pl

    from epee_annotate.pipelines.publish import read_manifest

    (entry,) = read_manifest(str(out))["datasets"].values()
    path = Path(entry["location"])
    assert path == out / "annotations" and all(p.suffix == ".parquet" for p in path.rglob("*") if p.is_file())
    rows = entry["rows"]
    frame = pd.read_parquet(path)  # no options: what a user types first
    dataset = pads.dataset(str(path)).to_table()
    polars_frame = pl.read_parquet(path)
    scanned = pl.scan_parquet(path).select(pl.len()).collect().item()
    pattern = str(path / "**" / "*.parquet") if partitioned else str(path / "*.parquet")
    duck = duckdb.sql(f"SELECT doc_id, task, status, exit_layer FROM read_parquet('{pattern}', "
                      f"hive_partitioning = {str(partitioned).lower()})").fetchall()
    assert len(frame) == dataset.num_rows == polars_frame.height == scanned == len(duck) == rows > 0
    assert frame["task"].notna().all() and polars_frame["task"].null_count() == 0
    ok = [r for r in duck if r[2] == "ok"]
    assert len(ok) == int((frame["status"] == "ok").sum()) and all(isinstance(r[3], int) for r in ok if r[3])
    # Integer columns stay integers with pandas' Arrow dtypes (the documented way to read nullable ints).
    typed = pd.read_parquet(path, dtype_backend="pyarrow")
    assert str(typed["exit_layer"].dtype) == "int16[pyarrow]" and str(typed["start"].dtype) == "int32[pyarrow]"
    return frame


NOTES = [
    {"id": "n1", "text": f"the patient takes fish oil daily. {SECRET} stopped taking ginkgo before surgery.",
     "pid": "p1"},
    {"id": "n2", "text": "   ", "pid": "p2"},  # whitespace only -> empty
    {"id": "", "text": "aspirin increases the effect of warfarin", "pid": "p3"},  # missing id -> error
    {"id": "n4", "text": "rash and nausea\ndeveloped after the first dose", "pid": "p4"},  # newline in a field
    {"id": "n5", "text": "...", "pid": "p5"},  # nothing to classify -> ok, label null
]


def test_notes_csv_rows_schema_metadata_and_no_text(local_ray, text_checkpoint, tmp_path):
    source = tmp_path / "export.csv"
    with open(source, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "text", "pid"])
        writer.writeheader()
        writer.writerows(NOTES)
    with open(source, "ab") as handle:
        handle.write(b'n6,"invalid \xff utf-8",p6\n')
    out = tmp_path / "out"
    code = main(["annotate-notes", str(source), "--checkpoint", str(text_checkpoint), "--out", str(out),
                 "--keep-columns", "pid", "--budget", "0", *COMMON])
    assert code == 0
    table = read(out)
    schema = table.schema
    assert schema.names[:3] == ["doc_id", "task", "kind"] and schema.names[-1] == "pid"
    assert "text" not in schema.names
    assert schema.field("exit_layer").type == pa.int16() and schema.field("probs").type == pa.list_(pa.float32())
    assert schema.field("start").type == pa.int32() and schema.field("confidence").type == pa.float32()
    by_id = rows_by_id(table)
    assert sorted(k for k in by_id if k) == ["n1", "n2", "n4", "n5", "n6"]
    assert [r["kind"] for r in by_id["n1"]] == ["sentence", "sentence"]
    assert all(r["status"] == "ok" and r["label"] in ("neg", "pos", "other") for r in by_id["n1"])
    assert all(r["exit_layer"] == r["num_layers"] == 4 and r["policy"] == "budgeted(layer=0)" for r in by_id["n1"])
    assert all(abs(sum(r["probs"]) - 1) < 1e-4 and r["pid"] == "p1" for r in by_id["n1"])
    assert by_id["n2"][0]["status"] == "empty" and by_id["n2"][0]["label"] is None
    assert by_id["n5"] == [dict(by_id["n5"][0], kind="doc", status="ok", label=None)]
    (missing,) = by_id[None]
    assert missing["status"] == "error" and "missing id" in missing["error"] and missing["pid"] == "p3"
    assert by_id["n6"][0]["status"] == "error" and "UTF-8" in by_id["n6"][0]["error"]
    assert sum(len(rows) for rows in by_id.values()) == table.num_rows
    meta = read_job_metadata(out / "annotations")
    (component,) = meta["components"]
    assert meta["job"] == "notes" and meta["package_version"] and component["labels"] == ["neg", "pos", "other"]
    sha = json.loads((text_checkpoint / "epee_config.json").read_text())["weights_sha256"]
    assert component["checkpoint_id"] == f"{text_checkpoint.name}@{sha[:12]}" and component["policy"] == "budgeted(layer=0)"
    assert meta["parameters"]["include_text"] is False and meta["inputs"]["keep_columns"] == ["pid"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["documents"] == 6 and summary["rows_per_status"]["error"] == 2
    assert summary["tasks"]["textcat"]["layer_speedup"] == 1.0 and (out / "summary.png").stat().st_size > 0
    assert summary["dataset"] == str(out / "annotations")
    # PHI: no note text anywhere in the output directory.
    assert SECRET.encode() not in parquet_bytes(out) and b"ginkgo" not in parquet_bytes(out)
    frame = read_with_every_reader(out, partitioned=False)
    assert set(frame.loc[frame["status"] != "ok", "task"]) == {"input"} and len(frame) == table.num_rows


def test_notes_jsonl_with_config_bad_lines_and_include_text(local_ray, text_checkpoint, tmp_path):
    from epee_annotate.pipelines.notes import PipelineSource

    nlp = PipelineSource(checkpoint=str(text_checkpoint), task_name="cls").load({})
    nlp.config.to_disk(tmp_path / "pipe.cfg")
    lines = [json.dumps({"nid": 1, "body": f"{SECRET} rash after the first dose", "enc": 10}),
             json.dumps({"nid": 2, "body": 42}),
             "{not json",
             "",
             json.dumps({"nid": 3, "body": "melatonin was started for insomnia", "enc": None})]
    source = tmp_path / "notes.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = main(["annotate-notes", str(source), "--config", str(tmp_path / "pipe.cfg"), "--set",
                 f"components.cls.checkpoint={text_checkpoint}", "--set", "components.cls.scope=doc",
                 "--out", str(out), "--id-column", "nid", "--text-column", "body", "--keep-columns", "enc",
                 "--include-text",
                 "--entropy", "0.9", "--patience", "1", *COMMON])
    assert code == 0
    table = read(out)
    assert table.schema.field("enc").type == pa.string() and "text" in table.schema.names
    by_id = rows_by_id(table)
    assert by_id["1"][0]["kind"] == "doc" and by_id["1"][0]["task"] == "cls" and by_id["1"][0]["enc"] == "10"
    assert by_id["1"][0]["text"].startswith(SECRET)  # opted in
    assert by_id["1"][0]["exit_layer"] == 1 and by_id["1"][0]["policy"] == "epee(entropy=0.9,patience=1)"
    assert "must be a string" in by_id["2"][0]["error"]
    (bad,) = by_id[None]
    assert "line 3" in bad["error"] and "not valid JSON" in bad["error"]
    assert by_id["3"][0]["enc"] is None and by_id["3"][0]["status"] == "ok"
    assert table.num_rows == 4  # the blank line is not a document
    assert SECRET.encode() in parquet_bytes(out)  # the byte check used for PHI does see text when present


def test_notes_parquet_pipeline_dir_partitioned_and_typed_passthrough(local_ray, text_checkpoint, tmp_path):
    from epee_annotate.pipelines.notes import PipelineSource

    PipelineSource(checkpoint=str(text_checkpoint)).load({}).to_disk(tmp_path / "pipe")
    table = pa.table({"note_id": pa.array([11, 12, 13], pa.int64()),
                      "note": ["she stopped taking ginkgo. melatonin was started.", None, "no history of rash"],
                      "visit": pa.array([100, 200, 300], pa.int32())})
    (tmp_path / "in").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "in" / "a.parquet")
    pq.write_table(table.slice(2), tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"
    code = main(["annotate-notes", str(tmp_path / "in"), "--pipeline", str(tmp_path / "pipe"), "--out", str(out),
                 "--id-column", "note_id", "--text-column", "note", "--keep-columns", "visit",
                 "--partition-by-task", *COMMON])
    assert code == 0
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["task=input", "task=textcat"]  # no null partition
    frame = read_with_every_reader(out, partitioned=True)
    assert sorted(frame["task"].astype(str).unique()) == ["input", "textcat"]
    result = read(out, partitioned=True)
    assert result.schema.field("visit").type == pa.int32()
    by_id = rows_by_id(result)
    assert len(by_id["11"]) == 2 and all(r["visit"] == 100 and r["task"] == "textcat" for r in by_id["11"])
    assert by_id["12"][0]["status"] == "empty" and by_id["12"][0]["task"] == "input"
    assert by_id["13"][0]["status"] == "ok" and by_id["13"][0]["visit"] == 300


def _write_images(directory: Path) -> None:
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(directory / f"xray{i}.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), directory / "ct.dcm")
    shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm"), directory / "IM0002")  # extension-less DICOM
    (directory / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
    (directory / "empty.png").write_bytes(b"")
    seg = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # pixel data, but a segmentation: not classified
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    seg.save_as(directory / "seg.dcm", enforce_file_format=True)
    os.symlink(directory / "gone.png", directory / "dangling.png")
    os.symlink(directory / "loop2.dcm", directory / "loop1.dcm")
    os.symlink(directory / "loop1.dcm", directory / "loop2.dcm")


def test_images_files_dicom_png_corrupt_and_frames(local_ray, image_checkpoint, tmp_path):
    (tmp_path / "in").mkdir()
    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["annotate-images", str(tmp_path / "in"), "--checkpoint", str(image_checkpoint), "--out", str(out),
                 "--frames", "all", "--patience", "2", *COMMON])
    assert code == 0
    table = read(out)
    assert table.schema.names[-6:] == ["sop_instance_uid", "study_instance_uid", "series_instance_uid", "modality",
                                       "body_part_examined", "path"]
    by_name = {}
    for row in table.to_pylist():
        by_name.setdefault(os.path.basename(row["doc_id"]), []).append(row)
    assert sorted(by_name) == ["IM0002", "corrupt.dcm", "ct.dcm", "dangling.png", "empty.png", "loop1.dcm", "loop2.dcm",
                               "seg.dcm", "xray0.png", "xray1.png"]
    (ct,) = by_name["ct.dcm"]
    assert ct["status"] == "ok" and ct["modality"] == "CT" and ct["sop_instance_uid"] and ct["frame"] is None
    assert ct["kind"] == "image" and ct["start"] is None and ct["label"] in ("normal", "pneumonia")
    assert ct["policy"] == "patience(patience=2)" and ct["exit_layer"] <= 2
    frames = by_name["IM0002"]
    assert [(r["kind"], r["frame"]) for r in frames] == [("frame", 0), ("frame", 1)]
    assert by_name["xray0.png"][0]["modality"] is None and by_name["xray0.png"][0]["status"] == "ok"
    for name in ("corrupt.dcm", "empty.png", "seg.dcm", "dangling.png", "loop1.dcm"):
        (row,) = by_name[name]
        assert row["status"] == "error" and row["error"].startswith("cannot decode image") and row["label"] is None
        assert row["path"].endswith(name) and row["task"] == "image"
    assert "segmentation" in by_name["seg.dcm"][0]["error"]
    assert by_name["dangling.png"][0]["error"].endswith("dangling symbolic link (its target does not exist)")
    assert by_name["loop2.dcm"][0]["error"].endswith("symbolic link loop")
    meta = read_job_metadata(out / "annotations")
    assert meta["components"][0]["labels"] == ["normal", "pneumonia"] and meta["inputs"]["frames"] == "all"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["documents"] == 10 and summary["rows"] == 11 and summary["throughput"]["images_per_s"] > 0
    read_with_every_reader(out, partitioned=False)


def test_images_npz_split_with_reference_labels(local_ray, image_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (9, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "mnist.npz", val_images=images, val_labels=np.arange(9).reshape(9, 1) % 2,
             train_images=images[:1], train_labels=np.zeros((1, 1)))
    out = tmp_path / "out"
    code = main(["annotate-images", "--npz", str(tmp_path / "mnist.npz"), "--split", "val", "--checkpoint",
                 str(image_checkpoint), "--out", str(out), *COMMON])
    assert code == 0
    table = read(out).sort_by("doc_id")
    assert table.column("doc_id").to_pylist() == [f"val-{i}" for i in range(9)]
    assert table.column("reference_label").to_pylist() == [i % 2 for i in range(9)]
    assert table.schema.field("reference_label").type == pa.int64()
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert table.column("path").to_pylist()[0].endswith("mnist.npz")
    # Same answers as calling the model directly on the arrays.
    from epee_annotate import MultiExitModel

    model = MultiExitModel.from_pretrained(image_checkpoint)
    expected = [p.label for p in model.predict(list(images))]
    assert table.column("label").to_pylist() == expected


def test_killed_actor_is_restarted_without_loss_or_duplicates(local_ray, text_checkpoint, tmp_path):
    import crash_once  # test-only actor: not in the package, so the workers get it by value
    from epee_annotate.pipelines.jobs import JobOptions, NotesJob, run_notes_job
    from epee_annotate.pipelines.notes import PipelineSource

    ray.cloudpickle.register_pickle_by_value(crash_once)
    source = tmp_path / "notes.jsonl"
    ids = [f"d{i:02d}" for i in range(24)]
    source.write_text("".join(json.dumps({"id": i, "text": "aspirin increases the effect of warfarin"}) + "\n"
                              for i in ids))
    marker = tmp_path / "crashed"
    out = tmp_path / "out"
    run_notes_job(NotesJob(
        inputs=[str(source)], source=PipelineSource(checkpoint=str(text_checkpoint)),
        options=JobOptions(out=str(out), batch_size=4, progress=False),
        annotator=crash_once.crashing_annotator(str(marker), "d13"),  # in the fourth of six batches
    ))
    assert marker.exists()  # the worker really died once
    got = read(out).column("doc_id").to_pylist()
    assert sorted(got) == ids  # one sentence each: exactly one row per note, none lost, none twice


def test_existing_output_is_refused_and_kept(local_ray, text_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous results")
    (tmp_path / "in.csv").write_text("id,text\n1,rash\n")
    args = ["annotate-notes", str(tmp_path / "in.csv"), "--checkpoint", str(text_checkpoint), "--out", str(out),
            *COMMON]
    assert main(args) == 2
    assert (out / "keep.txt").read_text() == "previous results"
    # --overwrite replaces only an output of this tool (one with its _SUCCESS manifest): not this folder.
    assert main(args + ["--overwrite"]) == 2
    assert (out / "keep.txt").read_text() == "previous results"
    ours = ["--out" if a == "--out" else str(tmp_path / "ours") if a == str(out) else a for a in args]
    assert main(ours) == 0
    assert main(ours) == 2  # an existing output is refused ...
    assert main(ours + ["--overwrite"]) == 0  # ... and replaced with --overwrite
    assert read(tmp_path / "ours").num_rows == 1


def test_a_pool_that_takes_every_cpu_is_refused_not_left_hanging(local_ray, text_checkpoint, tmp_path, capsys):
    (tmp_path / "in.csv").write_text("id,text\n1,rash\n")
    code = main(["annotate-notes", str(tmp_path / "in.csv"), "--checkpoint", str(text_checkpoint),
                 "--out", str(tmp_path / "out"), "--no-progress", "--num-actors", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "3 CPUs, but the Ray cluster has 2" in err and "--num-actors" in err
    assert not (tmp_path / "out").exists()


CANARY = "canaryphrase-okapi"  # must never appear in any output, log or message below


def _ray_log_bytes() -> bytes:
    """Everything the Ray session logged so far (driver, raylet, workers)."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return b"".join(p.read_bytes() for p in logs.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000)


def test_no_note_text_reaches_any_output_or_log_for_any_bad_input(local_ray, text_checkpoint, tmp_path, capfd,
                                                                    caplog):
    """Every bad-input kind carries the canary; all captured output must be free of it."""
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    lines = [
        b'\xef\xbb\xbf{"id": "bom", "text": "first note after a byte order mark"}',  # BOM: must be a good note
        b'{"id": "deep", "text": "' + CANARY.encode() + b'", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"id": "broken", "text": "' + CANARY.encode() + b' unterminated',
        b'{"id": "latin1", "text": "' + CANARY.encode() + b' caf\xe9"}',
        b'{"id": "number", "text": 42, "note": "' + CANARY.encode() + b'"}',
        b'["' + CANARY.encode() + b'"]',
        b'{"id": "fine", "text": "rash after the first dose"}',
    ]
    (jsonl / "notes.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    os.symlink(jsonl / "missing.jsonl", jsonl / "dangling.jsonl")
    os.symlink(jsonl / "loop_b.jsonl", jsonl / "loop_a.jsonl")
    os.symlink(jsonl / "loop_a.jsonl", jsonl / "loop_b.jsonl")
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / "export.csv").write_bytes(
        b'id,text\nc1,"fine note"\nc2,' + CANARY.encode() + b' extra,' + CANARY.encode() + b'\n'
        b'c3,"' + CANARY.encode() + b' \xff bad utf-8"\nc4,after the bad rows\n')
    (csv_dir / "tail.csv").write_bytes(b"id,text\nt1,ok\n" + open(_ct_path(), "rb").read() + CANARY.encode())
    headerless = tmp_path / "headerless.csv"
    headerless.write_text(f"1,{CANARY} has a rash\n")

    common = ["--checkpoint", str(text_checkpoint), "--no-progress", "--batch-size", "4"]
    assert main(["annotate-notes", str(jsonl), "--out", str(tmp_path / "out_jsonl"), *common]) == 0
    assert main(["annotate-notes", str(csv_dir), "--out", str(tmp_path / "out_csv"), *common]) == 0
    assert main(["annotate-notes", str(headerless), "--out", str(tmp_path / "out_bad"), *common]) == 2

    jsonl_rows = {r["doc_id"]: r for r in read(tmp_path / "out_jsonl").to_pylist() if r["status"] != "ok"}
    ok_ids = {r["doc_id"] for r in read(tmp_path / "out_jsonl").to_pylist() if r["status"] == "ok"}
    assert ok_ids == {"bom", "fine"}  # the BOM did not spoil the first note
    errors = [r["error"] for r in read(tmp_path / "out_jsonl").to_pylist() if r["status"] == "error"]
    assert "notes.jsonl line 2: nested too deeply to parse (RecursionError)" in errors
    assert "dangling.jsonl: dangling symbolic link (its target does not exist)" in errors
    assert {"loop_a.jsonl: symbolic link loop", "loop_b.jsonl: symbolic link loop"} <= set(errors)
    assert len(errors) == 8 and jsonl_rows["number"]["error"] == "notes.jsonl line 5: text must be a string, got int"
    csv_rows = read(tmp_path / "out_csv").to_pylist()
    csv_errors = sorted(r["error"] for r in csv_rows if r["status"] == "error")
    assert "export.csv line 3: wrong number of fields (expected 2, found 3)" in csv_errors
    assert "export.csv line 4: field 2 is not valid UTF-8 (byte 19)" in csv_errors
    assert [e for e in csv_errors if e.startswith("tail.csv")] == [
        "tail.csv line 3: binary content (a NUL byte): not a text file; the rest of the file was not read"]
    assert {r["doc_id"] for r in csv_rows if r["status"] == "ok"} == {"c1", "c4", "t1"}  # rows before it are kept

    captured = capfd.readouterr()
    everything = {
        "stdout": captured.out.encode(), "stderr": captured.err.encode(),
        "logging": "\n".join(r.getMessage() for r in caplog.records).encode(),
        "ray logs": _ray_log_bytes(),
        "parquet": parquet_bytes(tmp_path / "out_jsonl") + parquet_bytes(tmp_path / "out_csv"),
        "error column": "\n".join(errors + csv_errors).encode(),
    }
    assert "headerless.csv" in captured.err  # the refusal names the file ...
    for where, data in everything.items():
        assert CANARY.encode() not in data, f"note text leaked into {where}"  # ... and never the content


def _ct_path() -> str:
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm")


def test_failfast_stops_the_job_at_the_first_bad_record_and_publishes_nothing(local_ray, text_checkpoint, tmp_path,
                                                                              capsys):
    source = tmp_path / "notes.jsonl"
    source.write_bytes(b'{"id": "a", "text": "rash"}\n{"id": "b", "text": "' + CANARY.encode() + b'\n'
                       b'{"id": "c", "text": "cough"}\n')
    out = tmp_path / "out"
    code = main(["annotate-notes", str(source), "--checkpoint", str(text_checkpoint), "--out", str(out),
                 "--on-bad-record", "failfast", *COMMON])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "notes.jsonl line 2: not valid JSON" in err.splitlines()[-1] and CANARY not in err


def test_max_bad_records_fails_the_job_past_the_limit_and_publishes_nothing(local_ray, text_checkpoint, tmp_path,
                                                                          capsys):
    source = tmp_path / "notes.csv"
    source.write_text('id,text\na,rash\nb,"' + CANARY + ' open quote\nc,cough\nd,x,extra\ne,fever\n')
    out = tmp_path / "out"
    code = main(["annotate-notes", str(source), "--checkpoint", str(text_checkpoint), "--out", str(out),
                 "--max-bad-records", "20%", *COMMON])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "2 bad record(s) of 5 read" in err and "--max-bad-records" in err and CANARY not in err


def test_a_folder_job_accounts_for_every_file(local_ray, text_checkpoint, tmp_path):
    import gzip

    from epee_annotate.pipelines.publish import read_manifest

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"id": "a", "text": "rash"}\n')
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(b'{"id": "b", "text": "cough"}\n'))
    (folder / "empty.jsonl").write_bytes(b"")
    (folder / "README.md").write_text("not notes")
    os.close(os.open(os.fsencode(folder) + b"/caf\xe9.jsonl", os.O_CREAT | os.O_WRONLY))
    out = tmp_path / "out"
    assert main(["annotate-notes", str(folder), "--checkpoint", str(text_checkpoint), "--out", str(out),
                 *COMMON]) == 0
    rows = read(out).to_pylist()
    assert {r["doc_id"] for r in rows if r["status"] == "ok"} == {"a", "b"}
    errors = sorted(r["error"] for r in rows if r["status"] == "error")
    assert errors[0].startswith("caf\\xe9.jsonl: file name is not valid UTF-8") and \
        errors[1] == "empty.jsonl: empty file (no records)" and len(errors) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_records"] == 2
    for report in (summary["skipped_files"], read_manifest(str(out))["skipped_files"]):
        assert report["count"] == 1 and report["files"][0]["path"].endswith("README.md")


def test_progress_has_the_listed_size_as_total_and_reaches_it(local_ray, text_checkpoint, image_checkpoint, tmp_path,
                                                              progress_shown):
    """Ray's own bar says "0/?"; the job's bar counts input bytes annotated of the listed files' size."""
    import gzip

    shown = progress_shown
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(f'{{"id": "a{i}", "text": "rash {i}"}}\n' for i in range(2100)))
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(b'{"id": "b", "text": "cough"}\n' * 3))
    (folder / "c.jsonl").write_text('{"id": "c1", "text": "fever"}\n{"id": "c2", "text": \n')  # 1 good, 1 bad
    out = tmp_path / "out"
    assert main(["annotate-notes", str(folder), "--checkpoint", str(text_checkpoint), "--out", str(out),
                 "--num-actors", "1", "--batch-size", "64"]) == 0
    size = sum(f.stat().st_size for f in folder.iterdir())
    total, units, records = shown["annotating"][-1]
    assert (total, units) == (size, size) and records == 2100 + 3 + 2
    assert all(u <= size for _, u, _ in shown["annotating"])
    # Images: file bytes too; an npz archive counts its images.
    (tmp_path / "img").mkdir()
    _write_images(tmp_path / "img")
    shown.clear()
    assert main(["annotate-images", str(tmp_path / "img"), "--checkpoint", str(image_checkpoint),
                 "--out", str(tmp_path / "img_out"), "--num-actors", "1"]) == 0
    size = sum(f.stat().st_size for f in (tmp_path / "img").rglob("*") if f.is_file())
    assert shown["annotating"][-1][:2] == (size, size)


def test_the_resume_prescan_refuses_real_duplicates_only_even_when_every_hash_collides(local_ray):
    from benchmarks.resume_ids import SyntheticKeys
    from epee_annotate.pipelines.resume import ResumeError, check_resumable_ids

    assert check_resumable_ids(ray.data.range(50), SyntheticKeys(), hash_id=lambda doc_id: 7) == 50
    with pytest.raises(ResumeError, match=r"3 id\(s\) occur more than once in the input \(e.g. 'note-000000000', "):
        check_resumable_ids(ray.data.range(10).union(ray.data.range(3)), SyntheticKeys())
