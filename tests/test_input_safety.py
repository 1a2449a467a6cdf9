"""Malformed input never merges, hides or loses records: open quotes, JSON arrays, truncated files, limits."""

import gzip
import io
import json
import os

import pytest

from epee_annotate import filesystem
from epee_annotate.formats import BadRecordLimit, ReadOptions, TooManyBadRecords, read_file, read_stream
from epee_annotate.pipelines.sources import note_passthrough_fields, resolve_note_inputs, unreadable_inputs

CANARY = "canaryphrase-okapi"


def _read(data: bytes, name: str, fmt: str, options: ReadOptions = ReadOptions()):
    return list(read_stream(io.BytesIO(data), name, fmt, options))


def _csv(rows) -> bytes:
    return ("\n".join(["id,text", *rows]) + "\n").encode()


# ----- a quote left open ----------------------------------------------------------------------
def test_a_quote_left_open_until_the_end_is_one_error_row_and_the_records_after_it_are_kept():
    rows = [f"{i},note {i}" for i in range(5)] + [f'5,"{CANARY} quote never closed'] + \
        [f"{i},note {i}" for i in range(6, 60)]
    records = _read(_csv(rows), "export.csv", "csv")
    errors = [r for r in records if r.error]
    assert len(errors) == 1 and errors[0].where == "line 7"
    assert "quote opened in line 7" in errors[0].error and CANARY not in errors[0].message
    assert [r.data["id"] for r in records if not r.error] == [str(i) for i in range(60) if i != 5]


def test_a_quote_open_longer_than_max_field_lines_is_reported_where_it_opened():
    rows = ['0,"open'] + [f"{i},note {i}" for i in range(1, 300)]
    records = _read(_csv(rows), "export.csv", "csv", ReadOptions(max_field_lines=10))
    (error,) = [r for r in records if r.error]
    assert error.where == "line 2" and "still open after 10 lines" in error.error
    assert len([r for r in records if not r.error]) == 299


def test_a_stray_quote_closed_by_another_row_does_not_merge_the_rows_between():
    rows = ['1,"abc', "2,def", '3,gh"i', "4,ok", '5,"two', 'lines"']
    records = _read(_csv(rows), "export.csv", "csv")
    assert [r.where for r in records if r.error] == ["line 2"]
    good = {r.data["id"]: r.data["text"] for r in records if not r.error}
    assert good == {"2": "def", "3": 'gh"i', "4": "ok", "5": "two\nlines"}  # a real multi-line field stays whole


def test_a_multi_line_field_within_the_limit_is_one_record():
    text = "\n".join(f"line {i}" for i in range(50))
    records = _read(_csv([f'1,"{text}"', "2,b"]), "export.csv", "csv")
    assert [r.data for r in records] == [{"id": "1", "text": text}, {"id": "2", "text": "b"}]


def test_a_row_with_an_extra_field_and_a_bad_byte_costs_only_that_row():
    records = _read(b"id,text\n1,a\n2,b,extra\xff\n3,c\n", "export.csv", "csv")
    assert [r.data.get("id") for r in records if not r.error] == ["1", "3"]
    assert [r.where for r in records if r.error] == ["line 3"]


# ----- JSON Lines and compressed files -------------------------------------------------------
def test_a_json_array_where_json_lines_is_expected_is_one_error_naming_the_format():
    data = b'[\n  {"id": 1, "text": "a"},\n  {"id": 2, "text": "b"}\n]\n'
    (record,) = _read(data, "notes.jsonl", "jsonl")
    assert "a JSON array, not JSON Lines" in record.error and "json format" in record.error


def test_a_truncated_gzip_keeps_the_records_before_the_cut_and_says_where_it_stopped():
    data = gzip.compress(b"id,text\n" + b"".join(b"%d,note\n" % i for i in range(20000)))
    records = _read(data[: len(data) // 2], "export.csv.gz", "csv")
    *good, last = records
    assert good and all(r.error is None for r in good) and last.error is not None
    assert f"read failed after {good[-1].where}" in last.error


# ----- how many bad records a job may meet ---------------------------------------------------
def test_max_bad_records_takes_a_count_or_a_share():
    assert BadRecordLimit.parse("3") == BadRecordLimit(count=3)
    assert BadRecordLimit.parse("2.5%") == BadRecordLimit(share=0.025)
    for bad in ("-1", "x", "150%", ""):
        with pytest.raises(ValueError, match="count .* or a share"):
            BadRecordLimit.parse(bad)
    BadRecordLimit.parse("3").check(3, 10)
    with pytest.raises(TooManyBadRecords, match="4 bad record"):
        BadRecordLimit.parse("3").check(4, 10)
    BadRecordLimit.parse("10%").check(1, 10)
    with pytest.raises(TooManyBadRecords, match=r"2 bad record\(s\) of 10 read"):
        BadRecordLimit.parse("10%").check(2, 10)


# ----- directories: every file accounted for ------------------------------------------------
def _folder(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "_tmp").mkdir()
    (folder / "a.jsonl").write_text('{"id": "a", "text": "rash"}\n')
    (folder / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(b'{"id": "b", "text": "cough"}\n'))
    (folder / "empty.jsonl").write_bytes(b"")
    (folder / "README.md").write_text("not notes")
    (folder / ".hidden.jsonl").write_text("{}\n")
    (folder / "_tmp" / "part.jsonl").write_text("{}\n")
    os.close(os.open(os.fsencode(folder) + b"/caf\xe9.jsonl", os.O_CREAT | os.O_WRONLY))
    return folder


def test_every_listed_file_is_read_reported_or_skipped_with_its_reason(tmp_path):
    folder = _folder(tmp_path)
    skipped = {}
    fmt, files = resolve_note_inputs([str(folder)], None, skipped)
    readable, unreadable = unreadable_inputs(files)
    assert fmt == "jsonl"
    assert sorted(os.path.basename(f) for f in readable) == ["a.jsonl", "b.jsonl.gz", "empty.jsonl"]
    (bad_name, reason), = unreadable.items()
    assert "not valid UTF-8" in reason and filesystem.display(bad_name).endswith("caf\\xe9.jsonl")
    assert {os.path.basename(p): r.split(" ")[0] for p, r in skipped.items()} == {
        "README.md": "file", ".hidden.jsonl": "hidden", "_tmp": "hidden"}
    records = [r for f in readable for r in read_file(f, "jsonl")]
    assert [r.data["id"] for r in records if not r.error] == ["a", "b"]  # the .gz is read
    assert [r.message for r in records if r.error] == ["empty.jsonl: empty file (no records)"]


def test_an_unreadable_directory_is_one_error_not_a_silent_skip(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    real = os.scandir

    def scandir(path="."):
        if os.fsdecode(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", lambda path: list(scandir(path)))
    files = resolve_note_inputs([str(folder)])[1]
    assert str(folder / "sub") in files
    assert unreadable_inputs(files)[1][str(folder / "sub")].startswith("directory cannot be listed (Permission")


def test_an_empty_csv_is_its_own_error_row_not_a_failed_job(tmp_path):
    (tmp_path / "a.csv").write_text("id,text\n1,x\n")
    (tmp_path / "empty.csv").write_bytes(b"")
    fmt, files = resolve_note_inputs([str(tmp_path)])
    assert note_passthrough_fields(fmt, files, "id", "text", []) == []
    records = list(read_file(str(tmp_path / "empty.csv")))
    assert [r.error for r in records] == ["empty file (no header row)"]


# ----- big inputs ----------------------------------------------------------------------------
def test_a_3_million_character_note_is_one_error_row_saying_so(tmp_path):
    from epee_annotate.pipelines.notes import NoteAnnotator, NoteColumns, PipelineSource
    from epee_annotate.pipelines.schema import output_schema
    from epee_annotate.pipelines.sources import records_block
    from epee_annotate.testing import tiny_model

    tiny_model("bert", tmp_path, labels=("neg", "pos")).save_pretrained(tmp_path)
    annotator = NoteAnnotator(PipelineSource(checkpoint=str(tmp_path)), NoteColumns("jsonl"), {"device": "cpu"},
                              output_schema("notes", []))
    long_note = (CANARY + " fever. ") * (3_000_000 // (len(CANARY) + 8) + 1)
    data = (json.dumps({"id": "long", "text": long_note}) + "\n" + json.dumps({"id": "short", "text": "rash."})
            + "\n").encode()
    rows = annotator(records_block(_read(data, "notes.jsonl", "jsonl", ReadOptions(columns=["id", "text"]))))
    by_id = {}
    for row in rows.to_pylist():
        by_id.setdefault(row["doc_id"], []).append(row)
    (long_row,) = by_id["long"]
    assert long_row["status"] == "error" and CANARY not in long_row["error"]
    assert long_row["error"].startswith(f"notes.jsonl line 1: note is {len(long_note):,} characters, over the "
                                        "pipeline's limit of 1,000,000")
    assert all(row["status"] == "ok" for row in by_id["short"])


def _truncated_dicom(name: str) -> bytes:
    """A DICOM test file whose one compressed frame is cut in half (the header stays valid)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(get_testdata_file(name))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm"])
def test_truncated_jpeg_pixel_data_is_corrupt_not_a_missing_codec(name):
    from epee_annotate.image_decoding import ImageReadError, read_image

    pytest.importorskip("pydicom")
    if name == "JPEG-lossy.dcm":  # 12-bit JPEG Extended: the codecs extra decodes it, Pillow does not
        pytest.importorskip("pylibjpeg")
    with pytest.raises(ImageReadError, match=r"^corrupt or truncated DICOM pixel data \(frame 0: the compressed "
                                             r"stream has no end marker\)$"):
        read_image(_truncated_dicom(name))


@pytest.mark.parametrize("dtype", ["uint16", "int16", "uint8"])
@pytest.mark.parametrize("rescale", [{}, {"RescaleSlope": 2.5, "RescaleIntercept": -1024},
                                     {"RescaleSlope": -1.5, "RescaleIntercept": 10}])
def test_the_percentile_window_from_stored_values_equals_numpys(dtype, rescale):
    import numpy as np

    from epee_annotate.image_decoding import _stored_percentiles

    info = np.iinfo(dtype)
    raw = np.random.default_rng(0).integers(info.min, info.max, size=(301, 257), dtype=dtype)
    values = raw * rescale.get("RescaleSlope", 1.0) + rescale.get("RescaleIntercept", 0.0)
    np.testing.assert_allclose(_stored_percentiles(raw, rescale, (0.5, 99.5)), np.percentile(values, [0.5, 99.5]),
                               rtol=0, atol=1e-9)


# ----- honest counts ---------------------------------------------------------------------------
def test_records_that_repeat_an_id_are_counted_as_records_and_reported(tmp_path):
    import pyarrow.parquet as pq

    from epee_annotate.pipelines.schema import output_schema, rows_to_table
    from epee_annotate.pipelines.summary import format_summary, summarize

    def sentence(doc_id, start, end):
        return {"doc_id": doc_id, "task": "t", "kind": "sentence", "start": start, "end": end, "label": "x",
                "exit_layer": 1, "num_layers": 2, "status": "ok"}

    one_record = [sentence("a", 0, 5), sentence("a", 6, 9)]
    rows = [*one_record, *one_record,  # two records with id "a" (same text)
            {"doc_id": "b", "task": "input", "kind": "doc", "status": "error", "error": "line 4: bad"},
            {"doc_id": "b", "task": "input", "kind": "doc", "status": "error", "error": "line 9: bad"},
            sentence("c", 0, 5), sentence("c", 6, 9)]  # one record, two sentences
    pq.write_table(rows_to_table(rows, output_schema("notes")), tmp_path / "p.parquet")
    summary = summarize(tmp_path, False, {"pipeline_s": 1.0}, "notes")
    assert summary["duplicate_ids"] == {"ids": 2, "extra_records": 2}
    assert summary["documents"] == 5 and summary["bad_records"] == 2
    assert "duplicate ids: 2 id(s) held by more than one record" in format_summary(summary)
