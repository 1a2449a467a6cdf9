"""The one input layer: every format through the registry, and the same records for training and for jobs."""

import bz2
import gzip
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from epee_annotate import filesystem
from epee_annotate.data import DataError, load_examples
from epee_annotate.data.examples import STOP_HINT
from epee_annotate.formats import (
    FORMATS, BadRecordError, ReadOptions, UnsupportedFormat, format_of, get, read_file, read_stream,
)
from epee_annotate.pipelines.notes import NoteColumns, extract_notes
from epee_annotate.pipelines.sources import READ_ERROR, RecordsDatasource, resolve_note_inputs

CANARY = "canaryphrase-okapi"


def _good(records):
    return [r.data for r in records if r.error is None]


def _zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


# ----- each format through the registry ----------------------------------------------------
LINES = b'{"id": 1, "text": "first"}\n{"id": 2, "text": "second"}\n'


@pytest.mark.parametrize("name, data", [
    ("notes.jsonl", LINES), ("notes.ndjson", LINES), ("notes.jsonl.gz", gzip.compress(LINES)),
    ("notes.jsonl.bz2", bz2.compress(LINES)), ("notes.jsonl.zst", _zstd(LINES)),
    ("notes.csv", b"id,text\n1,first\n2,second\n"), ("notes.csv.gz", gzip.compress(b"id,text\n1,first\n2,second\n")),
    ("notes.tsv", b"id\ttext\n1\tfirst\n2\tsecond\n"),
])
def test_text_formats_and_compression_by_file_name(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    assert [(str(d["id"]), d["text"]) for d in _good(read_file(str(path)))] == [("1", "first"), ("2", "second")]


def test_parquet_reads_only_the_requested_columns_with_their_types(tmp_path):
    path = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["a", "b"], "visit": pa.array([3, 4], pa.int32())}), path,
                   row_group_size=1)
    records = list(read_file(str(path), options=ReadOptions(columns=["id", "text"])))
    assert [(r.where, r.data) for r in records] == [("row 1", {"id": 1, "text": "a"}),
                                                    ("row 2", {"id": 2, "text": "b"})]
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    [bad] = read_file(str(tmp_path / "junk.parquet"))
    assert bad.message.startswith("junk.parquet: not a readable Parquet file (")


def test_a_directory_of_txt_files_is_a_directory_of_notes(tmp_path):
    (tmp_path / "notes" / "sub").mkdir(parents=True)
    (tmp_path / "notes" / "a.txt").write_text("first note")
    (tmp_path / "notes" / "sub" / "b.txt").write_bytes(b"\xef\xbb\xbfsecond note")
    (tmp_path / "notes" / "README.md").write_text("not a note")
    fmt, files = resolve_note_inputs([str(tmp_path / "notes")], "txt")
    assert fmt == "txt" and [os.path.basename(f) for f in files] == ["a.txt", "b.txt"]
    records = [r for f in files for r in read_file(f, "txt")]
    assert [(r.data["id"], r.data["text"]) for r in records] == [(files[0], "first note"), (files[1], "second note")]


def test_phee_and_ddi_give_structured_records(tmp_path):
    phee = tmp_path / "phee.json"
    phee.write_text(json.dumps({"id": "1_1", "context": "Rash.", "annotations": [{"events": [
        {"event_type": "Adverse_event"}]}]}) + "\n" + json.dumps({"id": "1_2", "context": "", "annotations": []}))
    good, bad = read_file(str(phee), "phee")
    assert good.data == {"id": "1_1", "text": "Rash.", "event_types": ["Adverse_event"]}
    assert bad.message == "phee.json line 2: 'context' must be a non-empty string"
    ddi = tmp_path / "d.xml"
    ddi.write_text('<document id="D1"><sentence id="D1.s0" text="A with B.">'
                   '<entity id="e0" charOffset="0-0" type="drug" text="A"/><entity id="e1" charOffset="7-7" '
                   'type="drug" text="B"/><pair id="p0" e1="e0" e2="e1" ddi="false"/></sentence>'
                   '<sentence id="D1.s1"/></document>')
    sentence, missing = read_file(str(ddi))
    assert sentence.data["document"] == "D1" and sentence.data["text"] == "A with B."
    assert [p["e2"] for p in sentence.data["pairs"]] == ["e1"] and len(sentence.data["entities"]) == 2
    assert missing.message == "d.xml sentence D1.s1: sentence has no text attribute"
    (tmp_path / "broken.xml").write_text("<document>\n<sentence>\n</document>")
    [broken] = read_file(str(tmp_path / "broken.xml"))
    assert broken.message.startswith("broken.xml line 3: malformed XML at column")


def test_npz_image_directory_and_dicom(tmp_path):
    from PIL import Image
    from pydicom.data import get_testdata_file

    from epee_annotate.imaging import read_image

    np.savez(tmp_path / "mini.npz", val_images=np.zeros((3, 4, 4), np.uint8), val_labels=np.array([[0], [1], [1]]))
    records = list(read_file(str(tmp_path / "mini.npz"), split="val"))
    assert [(r.data["id"], r.data["label"], r.data["image"].shape) for r in records] == [
        ("val-0", 0, (4, 4)), ("val-1", 1, (4, 4)), ("val-2", 1, (4, 4))]
    with pytest.raises(TypeError, match="takes no option"):
        read_file(str(tmp_path / "mini.npz"), splitt="val")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "x.png")
    dicom = tmp_path / "IM0001"
    dicom.write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read())
    assert format_of(str(tmp_path / "x.png")) == "image" and format_of(str(dicom)) == "dicom"
    for path in (tmp_path / "x.png", dicom):
        [record] = read_file(str(path))
        assert record.data["path"] == str(path) and read_image(record.data["bytes"])[0].pixels.ndim == 2


def test_unsupported_format_lists_the_supported_ones(tmp_path):
    with pytest.raises(UnsupportedFormat) as refused:
        get("xlsx")
    message = str(refused.value)
    assert "\n" not in message and message.endswith("supported: " + ", ".join(FORMATS))
    with pytest.raises(UnsupportedFormat, match="cannot tell the format of 'notes.xlsx' from its name; supported: "):
        read_file(str(tmp_path / "notes.xlsx"))
    with pytest.raises(UnsupportedFormat, match="supported: jsonl, csv"):
        load_examples(tmp_path / "x", "xlsx", "text")


def test_encoding_is_declared_once_and_refused_where_it_cannot_apply(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("id,text,label\n1,caf\xe9 au lait,a\n".encode("latin-1"))
    [utf8] = read_file(str(path))
    assert utf8.message == "latin.csv line 2: field 2 is not valid UTF-8 (byte 3)"
    [latin] = read_file(str(path), options=ReadOptions(encoding="latin-1"))
    assert latin.data["text"] == "caf\xe9 au lait"
    [example] = load_examples(path, "csv", "text", encoding="latin-1")
    assert example.input == "caf\xe9 au lait"
    with pytest.raises(ValueError, match="format 'parquet' does not take an encoding"):
        read_file(str(tmp_path / "x.parquet"), options=ReadOptions(encoding="latin-1"))
    with pytest.raises(ValueError, match="unknown text encoding"):
        ReadOptions(encoding="klingon")
    with pytest.raises(ValueError, match="on_bad_record must be one of permissive, failfast"):
        ReadOptions(on_bad_record="dropmalformed")


def test_failfast_stops_at_the_first_bad_record_without_quoting_it(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "text": "' + CANARY + '\n{"id": 3, "text": "ok"}\n')
    assert len(list(read_file(str(path)))) == 3
    records = read_file(str(path), options=ReadOptions(on_bad_record="failfast"))
    assert next(records).data["id"] == 1
    with pytest.raises(BadRecordError, match=r"^notes\.jsonl line 2: not valid JSON") as stopped:
        next(records)
    assert CANARY not in str(stopped.value)


# ----- the same records for training and for jobs ----------------------------------------
def _job_errors(path, fmt: str, columns=("id", "text", "label")) -> list[str]:
    """What a job's read task makes of the file (RecordsDatasource, as Ray calls it), as note errors."""
    source = object.__new__(RecordsDatasource)  # no Ray session: call the read task's body directly
    source.fmt, source.default_format, source.record_schema = fmt, None, None
    source.options = ReadOptions(columns=list(columns))
    with open(path, "rb") as handle:
        blocks = list(source._read_stream(handle, str(path)))
    notes = extract_notes(pa.concat_tables(blocks), NoteColumns(fmt, keep_columns=("label",)))
    return [n.error for n in notes if n.error is not None]


MALFORMED = {
    "bad.jsonl": b'{"id": 1, "text": "ok", "label": "a"}\n{"id": 2, "text": "' + CANARY.encode() + b'\n'
                 b'[1, 2]\n{"id": 4, "text": "bad \xff byte", "label": "a"}\n{"id": 5, "text": "ok", "label": "b"}\n',
    "bad.csv": b'id,text,label\n1,ok,a\n2,' + CANARY.encode() + b',a,extra\n3,"bad \xff byte",a\n4,ok,b\n'
               b'5,"' + CANARY.encode() + b' open quote,a\n6,ok,a\n',
    "bad.tsv": b'id\ttext\tlabel\n1\tok\ta\n2\t' + CANARY.encode() + b'\n3\tok\tb\n',
    "bad.csv.gz": gzip.compress(b'id,text,label\n1,ok,a\n2,x\n3,ok,b\n'),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_the_same_malformed_input_gives_the_same_error_records_for_training_and_jobs(tmp_path, caplog, name):
    path = tmp_path / name
    path.write_bytes(MALFORMED[name])
    fmt = format_of(str(path))
    job = _job_errors(path, fmt)
    assert job and all(CANARY not in message for message in job)
    with pytest.raises(DataError) as stopped:
        load_examples(path, fmt, "text")
    assert str(stopped.value) == f"{job[0]} {STOP_HINT}"
    with caplog.at_level("WARNING"):
        load_examples(path, fmt, "text", on_error="skip")
    skipped = caplog.text.split("(")[-1]
    assert [message.split(":")[0] for message in job] == skipped.rstrip(")\n").split(", ")
    assert CANARY not in caplog.text


def test_a_byte_order_mark_csv_is_read_by_training_and_by_jobs(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfid,text,label\n1,first,a\n2,second,b\n")
    assert [(e.input, e.label) for e in load_examples(path, "csv", "text")] == [("first", "a"), ("second", "b")]
    assert _job_errors(path, "csv") == []
    source = object.__new__(RecordsDatasource)
    source.fmt, source.default_format, source.record_schema = "csv", None, None
    source.options = ReadOptions(columns=["id", "text"])
    with open(path, "rb") as handle:
        [block] = source._read_stream(handle, str(path))
    notes = extract_notes(block, NoteColumns("csv"))
    assert [(n.doc_id, n.text) for n in notes] == [("1", "first"), ("2", "second")]
    assert block.column(READ_ERROR).null_count == 2


def test_a_stream_read_matches_a_file_read(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(MALFORMED["bad.jsonl"])
    by_file = [(r.where, r.data, r.error) for r in read_file(str(path))]
    by_stream = [(r.where, r.data, r.error) for r in read_stream(io.BytesIO(path.read_bytes()), str(path), "jsonl")]
    assert by_file == by_stream


# ----- object storage through the same abstraction ----------------------------------------
def test_object_storage_lists_opens_and_reads_through_the_same_api(s3_server, tmp_path):
    s3_server.create_bucket(Bucket="formats")
    s3_server.put_object(Bucket="formats", Key="in/a.csv", Body=b"\xef\xbb\xbfid,text,label\n1,rash,a\n2,x\n")
    s3_server.put_object(Bucket="formats", Key="in/sub/b.jsonl.gz",
                         Body=gzip.compress(b'{"id": 3, "text": "cough", "label": "b"}\n'))
    s3_server.put_object(Bucket="formats", Key="in/_SUCCESS", Body=b"")
    files = filesystem.expand(["s3://formats/in"], lambda p: format_of(p) is not None)
    assert files == ["s3://formats/in/a.csv", "s3://formats/in/sub/b.jsonl.gz"]
    records = [r for f in files for r in read_file(f)]
    assert [(r.data.get("id"), r.message) for r in records] == [
        ("1", None), (None, "a.csv line 3: wrong number of fields (expected 3, found 2)"), (3, None)]
    with filesystem.open_input("s3://formats/in/a.csv") as handle:
        assert handle.read(3) == b"\xef\xbb\xbf"


def test_training_data_is_read_from_object_storage_like_a_local_file(s3_server, tmp_path):
    s3_server.create_bucket(Bucket="training")
    s3_server.put_object(Bucket="training", Key="train.csv.gz",
                         Body=gzip.compress(b"\xef\xbb\xbftext,label\nrash,a\ncough,b\n"))
    s3_server.put_object(Bucket="training", Key="ddi/sub/d.xml",
                         Body=b'<document id="D1"><sentence id="s0" text="A with B."><entity id="e0" charOffset="0-0" '
                              b'type="drug" text="A"/><entity id="e1" charOffset="7-7" type="drug" text="B"/>'
                              b'<pair id="p0" e1="e0" e2="e1" ddi="true" type="effect"/></sentence></document>')
    examples = load_examples("s3://training/train.csv.gz", "csv", "text")
    assert [(e.input, e.label) for e in examples] == [("rash", "a"), ("cough", "b")]
    [pair] = load_examples("s3://training/ddi", "ddi", "relation")
    assert pair.label == "effect" and pair.input["head"] == (0, 1) and pair.group == "D1"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_examples("s3://training/absent.jsonl", "jsonl", "text")


def test_a_notes_job_refuses_reader_options_it_cannot_honour(tmp_path):
    from epee_annotate.pipelines.errors import SettingError
    from epee_annotate.pipelines.jobs import JobOptions, NotesJob
    from epee_annotate.pipelines.notes import PipelineSource

    source, options = PipelineSource(checkpoint=str(tmp_path)), JobOptions(out=str(tmp_path / "out"))
    assert NotesJob(["x.csv"], source, options, encoding="latin-1").read_options.encoding == "latin-1"
    for kwargs, setting in (({"encoding": "klingon"}, "encoding"), ({"on_bad_record": "dropmalformed"},
                                                                     "on_bad_record")):
        with pytest.raises(SettingError) as refused:
            NotesJob(["x.csv"], source, options, **kwargs)
        assert refused.value.settings == (setting,)
