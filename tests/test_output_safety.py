"""Output safety, job identity and publishing as a commit (issue 20 items 3-5), locally and on S3 (moto).

No Ray here: the sink, the lock and the recovery are exercised directly, and the command line is
refused before any job starts. The Ray-level scenarios are in ``benchmarks/faults.py``.
"""

import logging
import os
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from epee_annotate import storage
from epee_annotate.pipelines.errors import OutputExistsError
from epee_annotate.pipelines.identity import JobChangedError, check_same_job, differences, fingerprint
from epee_annotate.pipelines.lock import LockLostError, LockRecord, OutputLock, OutputLockedError, lock_location
from epee_annotate.pipelines.publish import (
    MAIN_DATASET, MARKER, JobSink, NotOurOutputError, OutputOverlapsInputError, _write_marker, check_apart,
    claim_output, job_output, read_published, verify_output,
)

BUCKET = "safety"
TABLE = pa.table({"doc_id": ["a", "b", "c"], "label": ["x", "y", "z"]})


@pytest.fixture(scope="module")
def s3(s3_server):
    s3_server.create_bucket(Bucket=BUCKET)
    return s3_server


def _publish(out: str, table: pa.Table = TABLE, **kwargs) -> None:
    with job_output(out, **{"overwrite": False, **kwargs}) as sink:
        sink.write_table(table, MAIN_DATASET, "part-{i}.parquet")
        sink.write_file("summary.json", b"{}")


# ----- --out apart from the inputs ---------------------------------------------------------
@pytest.mark.parametrize("out, inputs, relation", [
    ("notes", ["notes"], "is input"),
    ("notes/", ["notes/*.csv"], "is input"),
    ("notes/out", ["notes"], "is inside input"),
    (".", ["notes/a.csv"], "contains input"),
    ("s3://b/x", ["s3://b/x/"], "is input"),
    ("s3://b/x/out", ["s3://b/x/**/*.jsonl"], "is inside input"),
    ("s3://b", ["s3://b/x/a.jsonl"], "contains input"),
])
def test_an_output_overlapping_an_input_is_refused(tmp_path, monkeypatch, out, inputs, relation):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    with pytest.raises(OutputOverlapsInputError, match=relation) as refused:
        check_apart(out, inputs)
    assert refused.value.settings == ("out",) and "--" not in str(refused.value)


def test_outputs_beside_inputs_are_fine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_apart("notes_out", ["notes", "notes.csv", "s3://b/notes"])
    check_apart("s3://b/notes_out", ["s3://b/notes", "gs://b/notes_out", "notes_out"])
    os.symlink(tmp_path, tmp_path / "link")  # the same folder under another name
    with pytest.raises(OutputOverlapsInputError):
        check_apart(str(tmp_path / "link" / "notes"), [str(tmp_path / "notes")])


def test_cli_refuses_out_equal_to_the_input_even_with_overwrite(tmp_path, capsys):
    from epee_annotate.cli import main

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.jsonl").write_text('{"id": 1, "text": "x"}\n')
    (tmp_path / "ckpt").mkdir()
    code = main(["annotate-notes", str(notes), "--checkpoint", str(tmp_path / "ckpt"), "--out", str(notes),
                 "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "is input" in err and "(see --out)" in err
    assert (notes / "a.jsonl").read_text() == '{"id": 1, "text": "x"}\n'
    code = main(["annotate-notes", str(notes / "a.jsonl"), "--checkpoint", str(tmp_path / "ckpt"), "--out",
                 str(tmp_path), "--overwrite"])
    assert code == 2 and "contains input" in capsys.readouterr().err and (notes / "a.jsonl").exists()


# ----- --overwrite replaces only this tool's own output --------------------------------------
def test_overwrite_replaces_only_our_own_output_locally(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpg")
    with pytest.raises(NotOurOutputError, match="no manifest of this tool") as refused:
        _publish(str(foreign), overwrite=True)
    assert refused.value.settings == ("out",) and (foreign / "holiday.jpg").read_bytes() == b"jpg"
    (foreign / MARKER).write_text("")  # a Hadoop/Spark marker (empty) is not our manifest
    with pytest.raises(NotOurOutputError):
        _publish(str(foreign), overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    _publish(str(empty), overwrite=True)  # nothing to lose
    _publish(str(empty), TABLE.slice(0, 1), overwrite=True)  # ours: replaced
    assert read_published(str(empty)).num_rows == 1


def test_overwrite_replaces_only_our_own_output_on_s3(s3):
    s3.put_object(Bucket=BUCKET, Key="foreign/data.csv", Body=b"a,b\n")
    with pytest.raises(NotOurOutputError):
        _publish(f"s3://{BUCKET}/foreign", overwrite=True)
    assert s3.get_object(Bucket=BUCKET, Key="foreign/data.csv")["Body"].read() == b"a,b\n"
    out = f"s3://{BUCKET}/ours"
    _publish(out)
    _publish(out, TABLE.slice(0, 2), overwrite=True)
    assert read_published(out).num_rows == 2 and verify_output(out)[1] == []


# ----- one job per output ------------------------------------------------------------------
def test_a_second_driver_is_refused_at_once_and_a_dead_holder_is_taken_over_locally(tmp_path, caplog):
    out = str(tmp_path / "out")
    with OutputLock(out) as first:
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()} on ") as refused:
            OutputLock(out).acquire()
        assert refused.value.settings == ("out",)
        first.check()
    assert not os.path.exists(lock_location(out))  # released: no file left behind
    # A holder killed with SIGKILL: its flock is gone, its record stays; the next job takes over, logged.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from epee_annotate.pipelines.lock import OutputLock\n"
                               f"OutputLock({out!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid} "):
            OutputLock(out).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with caplog.at_level(logging.WARNING, logger="epee_annotate.pipelines.lock"):
        with OutputLock(out) as taker:
            assert taker.took_over is not None and taker.took_over.pid == holder.pid
    assert f"took over the lock of" in caplog.text and f"pid {holder.pid}" in caplog.text


def test_s3_lock_uses_conditional_writes_and_expired_leases_are_taken_over(s3, caplog):
    out = f"s3://{BUCKET}/locked"
    with OutputLock(out, lease_s=30) as first:
        with pytest.raises(OutputLockedError, match="holds its lock"):
            OutputLock(out, lease_s=30).acquire()
        first.check()
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="locked/_LOCK")
    # A driver on another host that died: its lease runs out, then it is taken over (and logged).
    stale = LockRecord("someone", "other-host", 1, "t0", time.time() - 100, time.time() - 100, 30)
    s3.put_object(Bucket=BUCKET, Key="locked/_LOCK", Body=stale.encode())
    with caplog.at_level(logging.WARNING, logger="epee_annotate.pipelines.lock"):
        with OutputLock(out, lease_s=30) as taker:
            assert taker.took_over.host == "other-host"
            # ... and if the old holder comes back and overwrites the lock, the taker must not publish.
            s3.put_object(Bucket=BUCKET, Key="locked/_LOCK", Body=stale.encode())
            with pytest.raises(LockLostError, match="nothing was published"):
                taker.check()
    assert "took over the lock of someone (pid 1 on other-host" in caplog.text
    live = LockRecord("someone", "other-host", 1, "t1", time.time(), time.time(), 30)
    s3.put_object(Bucket=BUCKET, Key="locked/_LOCK", Body=live.encode())
    with pytest.raises(OutputLockedError, match="someone \\(pid 1 on other-host"):
        OutputLock(out).acquire()
    s3.delete_object(Bucket=BUCKET, Key="locked/_LOCK")


DRIVER = """
import sys, time
import pyarrow as pa
from epee_annotate.pipelines.publish import MAIN_DATASET, job_output
from epee_annotate.pipelines.lock import OutputLockedError
out, name = sys.argv[1], sys.argv[2]
try:
    with job_output(out, overwrite=False, resume=True) as sink:
        print("writing", flush=True)
        for i in range(4):
            sink.write_table(pa.table({"doc_id": [f"n{j}" for j in range(i * 5, i * 5 + 5)]}), MAIN_DATASET,
                             f"part-{i}-{{i}}.parquet")
            time.sleep(0.3)
except OutputLockedError as error:
    print("refused:", error, flush=True)
    sys.exit(3)
"""


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_concurrent_drivers_give_each_row_exactly_once(tmp_path, where, request):
    if where == "s3":
        request.getfixturevalue("s3")
    out = str(tmp_path / "out") if where == "local" else f"s3://{BUCKET}/concurrent"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, out, str(i)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env) for i in range(2)]
    outputs = [d.communicate(timeout=120)[0].decode() for d in drivers]
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 3], outputs
    assert any("refused: another job is writing this output" in o for o in outputs)
    ids = read_published(out).column("doc_id").to_pylist()
    assert sorted(ids) == sorted(f"n{j}" for j in range(20))
    assert verify_output(out)[1] == []


# ----- job identity ------------------------------------------------------------------------
def test_a_fingerprint_names_what_differs(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("{}\n")
    b.write_text("{}\n")
    models = [{"checkpoint_id": "pv@0123456789ab", "policy": "epee"}]
    first = fingerprint([str(a)], models, {"include_text": False, "policy": {"entropy": 0.3}})
    assert differences(first, fingerprint([str(a)], models, {"include_text": False, "policy": {"entropy": 0.3}})) == []
    other = fingerprint([str(a), str(b)], [{"checkpoint_id": "pv@ffffffffffff", "policy": "epee"}],
                        {"include_text": True, "policy": {"entropy": 0.5}})
    found = differences(first, other)
    assert found == ["input files added: 1 (b.jsonl)", "models: pv@0123456789ab -> pv@ffffffffffff",
                     "include_text: false -> true", 'policy: {"entropy": 0.3} -> {"entropy": 0.5}']
    a.write_text("{}\n{}\n")  # the same file, changed
    assert differences(first, fingerprint([str(a)], models, first["parts"]["options"])) == [
        "input files changed (size or time): 1 (a.jsonl)"]
    with pytest.raises(JobChangedError, match="differs: input files added: 1 \\(b.jsonl\\); models") as refused:
        check_same_job(first, other)
    assert refused.value.settings == ("resume", "overwrite")


class _Captured(RuntimeError):
    pass


def test_resume_with_another_policy_is_refused_before_any_work(tmp_path, monkeypatch, model_factory, capsys):
    """The fingerprint of the interrupted run is stored by its staging; a resume with other settings names them."""
    from epee_annotate.cli import main
    from epee_annotate.pipelines import jobs
    from epee_annotate.pipelines.identity import write_identity
    from epee_annotate.pipelines.publish import identity_location

    checkpoint = tmp_path / "ckpt"
    model_factory("bert").save_pretrained(checkpoint)
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "rash"}\n')
    out = tmp_path / "out"
    argv = ["annotate-notes", str(tmp_path / "in.jsonl"), "--checkpoint", str(checkpoint), "--out", str(out),
            "--resume"]
    seen = []

    def capture(stored, current):
        seen.append(current)
        raise _Captured()

    monkeypatch.setattr(jobs, "check_same_job", capture)
    with pytest.raises(_Captured):
        main([*argv, "--entropy", "0.2"])
    monkeypatch.undo()
    write_identity(identity_location(str(out)), seen[0])  # what the interrupted run recorded ...
    (tmp_path / ".out.resume" / "output").mkdir()  # ... beside what it staged
    assert main([*argv, "--entropy", "0.4"]) == 2
    err = capsys.readouterr().err
    assert "resuming would mix two jobs" in err and "policy: " in err and "0.2" in err and "0.4" in err
    assert "(see --resume, --overwrite)" in err and "rash" not in err


# ----- publishing as a commit --------------------------------------------------------------
def _staged_but_not_published(out: str, root: str) -> JobSink:
    sink = JobSink(out, root)
    sink.write_table(TABLE, MAIN_DATASET, "part-{i}.parquet")
    sink.write_file("summary.json", b"{}")
    _write_marker(sink)  # the publish intent: the staged output is complete
    return sink


def test_a_kill_during_an_s3_publish_is_finished_by_the_next_run(s3):
    out = f"s3://{BUCKET}/killed"
    _staged_but_not_published(out, f"{out}/_staging/run-dead/output")
    # The copy got as far as the summary, then the driver died: no marker, so readers see nothing yet.
    s3.copy_object(Bucket=BUCKET, Key="killed/summary.json", CopySource=f"{BUCKET}/killed/_staging/run-dead/output/summary.json")
    s3.put_object(Bucket=BUCKET, Key="killed/_staging/run-older/output/annotations/x.parquet", Body=b"debris")
    with pytest.raises(OutputExistsError, match="already holds a dataset"):  # finished, so now it exists
        with claim_output(out, overwrite=False):
            pass
    assert read_published(out).to_pylist() == TABLE.to_pylist() and verify_output(out)[1] == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="killed/_staging/")


def test_a_kill_during_a_local_publish_is_finished_or_rolled_back(tmp_path):
    out = tmp_path / "out"
    _publish(str(out))
    # Killed between the two renames of an --overwrite: the old output aside, the new one complete.
    os.replace(out, tmp_path / ".out.old-1")
    _staged_but_not_published(str(out), str(tmp_path / ".out.tmp-2"))
    (tmp_path / ".out.tmp-3").mkdir()  # a run killed while writing
    with claim_output(str(out), overwrite=True):
        pass
    assert read_published(str(out)).num_rows == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # Killed before the new output was complete: the old one is put back.
    os.replace(out, tmp_path / ".out.old-4")
    (tmp_path / ".out.tmp-5").mkdir()
    with claim_output(str(out), overwrite=True):
        pass
    assert read_published(str(out)).num_rows == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_publish_never_happens_after_the_lock_was_lost(tmp_path):
    out = tmp_path / "out"
    with claim_output(str(out), overwrite=False) as lock:
        with pytest.raises(LockLostError, match="nothing was published"):
            with job_output(str(out), False, lock=lock) as sink:
                sink.write_table(TABLE, MAIN_DATASET, "part-{i}.parquet")
                lock.lost = "another job took the lock over"  # what the heartbeat thread records
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_verify_checks_files_sizes_hashes_and_unlisted_files(tmp_path, capsys):
    from epee_annotate.cli import main

    out = tmp_path / "out"
    _publish(str(out))
    assert main(["verify", str(out)]) == 0
    assert "ok: 2 file(s) match the manifest" in capsys.readouterr().out
    part = out / MAIN_DATASET / "part-0.parquet"
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF  # same size, other bytes
    part.write_bytes(bytes(data))
    (out / MAIN_DATASET / "stray.parquet").write_bytes(part.read_bytes())
    (out / "summary.json").unlink()
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "annotations/part-0.parquet: sha256 differs" in printed and "summary.json: missing" in printed
    assert "annotations/stray.parquet: a file in dataset 'annotations' the manifest does not list" in printed
    assert main(["verify", str(tmp_path / "nothing")]) == 2


def test_the_holder_renews_its_lease(tmp_path, s3):
    for out in (str(tmp_path / "out"), f"s3://{BUCKET}/renewed"):
        with OutputLock(out, lease_s=0.6) as lock:
            fs, path = storage.resolve(lock.location)

            def heartbeat() -> float | None:
                # A local record is rewritten in place under the flock: a read can catch it half written.
                with fs.open_input_stream(path) as handle:
                    record = LockRecord.parse(handle.read())
                return None if record is None else record.heartbeat

            deadline = time.monotonic() + 10
            first = heartbeat()
            while first is None:
                assert time.monotonic() < deadline, f"{out}: no readable lock record within 10 s"
                first = heartbeat()
            while heartbeat() in (first, None):
                assert time.monotonic() < deadline, f"{out}: no heartbeat within 10 s"
                time.sleep(0.05)
            lock.check()
        assert not storage.exists(lock.location)


def test_the_same_checkpoint_with_other_settings_names_the_settings():
    old = fingerprint([], [{"checkpoint_id": "pv@01", "policy": "epee(0.2)", "labels": ["a"]}], {})
    new = fingerprint([], [{"checkpoint_id": "pv@01", "policy": "epee(0.6)", "labels": ["a"]}], {})
    assert differences(old, new) == ["models pv@01: policy changed"]
