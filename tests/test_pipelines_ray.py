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
from epee_annotate.testing import tiny_model

ray = pytest.importorskip("ray")

SECRET = "zebrafishword"  # a distinctive word that must never reach the output unless asked for
COMMON = ["--no-progress", "--num-actors", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("text_ckpt")
    tiny_model("bert", path, labels=("neg", "pos", "other")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("image_ckpt")
    tiny_model("vit", path, task="image", labels=("normal", "pneumonia")).save_pretrained(path)
    return path


def read(out: Path, partitioned: bool = False) -> pa.Table:
    dataset = pads.dataset(str(out), format="parquet", partitioning="hive" if partitioned else None)
    return dataset.to_table()


def rows_by_id(table: pa.Table) -> dict:
    out = {}
    for row in table.to_pylist():
        out.setdefault(row["doc_id"], []).append(row)
    return out


def parquet_bytes(out: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())


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
    meta = read_job_metadata(out)
    (component,) = meta["components"]
    assert meta["job"] == "notes" and meta["package_version"] and component["labels"] == ["neg", "pos", "other"]
    assert component["checkpoint_id"].split("@")[1] and component["policy"] == "budgeted(layer=0)"
    assert meta["parameters"]["include_text"] is False and meta["inputs"]["keep_columns"] == ["pid"]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["documents"] == 6 and summary["rows_per_status"]["error"] == 2
    assert summary["tasks"]["textcat"]["layer_speedup"] == 1.0 and (out / "_summary.png").stat().st_size > 0
    # PHI: no note text anywhere in the output directory.
    assert SECRET.encode() not in parquet_bytes(out) and b"ginkgo" not in parquet_bytes(out)


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
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["task=__HIVE_DEFAULT_PARTITION__", "task=textcat"]
    result = read(out, partitioned=True)
    assert result.schema.field("visit").type == pa.int32()
    by_id = rows_by_id(result)
    assert len(by_id["11"]) == 2 and all(r["visit"] == 100 and r["task"] == "textcat" for r in by_id["11"])
    assert by_id["12"][0]["status"] == "empty" and by_id["12"][0]["task"] is None
    assert by_id["13"][0]["status"] == "ok" and by_id["13"][0]["visit"] == 300


def _write_images(directory: Path) -> None:
    from PIL import Image
    from pydicom.data import get_testdata_file

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 36), dtype=np.uint8)).save(directory / f"xray{i}.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), directory / "ct.dcm")
    shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm"), directory / "IM0002")  # extension-less DICOM
    (directory / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00" * 40)
    (directory / "empty.png").write_bytes(b"")


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
    assert sorted(by_name) == ["IM0002", "corrupt.dcm", "ct.dcm", "empty.png", "xray0.png", "xray1.png"]
    (ct,) = by_name["ct.dcm"]
    assert ct["status"] == "ok" and ct["modality"] == "CT" and ct["sop_instance_uid"] and ct["frame"] is None
    assert ct["kind"] == "image" and ct["start"] is None and ct["label"] in ("normal", "pneumonia")
    assert ct["policy"] == "patience(patience=2)" and ct["exit_layer"] <= 2
    frames = by_name["IM0002"]
    assert [(r["kind"], r["frame"]) for r in frames] == [("frame", 0), ("frame", 1)]
    assert by_name["xray0.png"][0]["modality"] is None and by_name["xray0.png"][0]["status"] == "ok"
    for name in ("corrupt.dcm", "empty.png"):
        (row,) = by_name[name]
        assert row["status"] == "error" and row["error"].startswith("cannot decode image") and row["label"] is None
        assert row["path"].endswith(name)
    meta = read_job_metadata(out)
    assert meta["components"][0]["labels"] == ["normal", "pneumonia"] and meta["inputs"]["frames"] == "all"
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["documents"] == 6 and summary["rows"] == 7 and summary["throughput"]["images_per_s"] > 0


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


def test_killed_actor_is_restarted_without_loss_or_duplicates(local_ray, text_checkpoint, tmp_path, monkeypatch):
    source = tmp_path / "notes.jsonl"
    ids = [f"d{i:02d}" for i in range(24)]
    source.write_text("".join(json.dumps({"id": i, "text": "aspirin increases the effect of warfarin"}) + "\n"
                              for i in ids))
    marker = tmp_path / "crashed"
    monkeypatch.setenv("EPEE_TEST_CRASH_ONCE", str(marker))
    monkeypatch.setenv("EPEE_TEST_CRASH_DOC", "d13")  # in the fourth of six batches
    out = tmp_path / "out"
    assert main(["annotate-notes", str(source), "--checkpoint", str(text_checkpoint), "--out", str(out),
                 *COMMON]) == 0
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
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and read(out).num_rows == 1
