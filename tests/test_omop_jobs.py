"""``annotate-notes --note-nlp`` end to end: NOTE_NLP beside the rows, in the manifest, loadable into the CDM."""

import json
from contextlib import contextmanager

import pytest

from epee_annotate.cli import main
from epee_annotate.pipelines.publish import read_manifest, read_published
from test_omop import REQUIRED, load_into_cdm

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

@contextmanager
def ray_session(num_cpus: int):
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


COMMON = ["--no-progress", "--num-actors", "1", "--batch-size", "4"]
TEXTS = ["the patient takes fish oil daily. aspirin increases the effect of warfarin.",
         "she stopped taking ginkgo biloba before surgery", "   ", "rash and nausea developed. pain. coq10 garlic."]


@pytest.fixture(scope="module")
def checkpoint(text_checkpoint):
    return text_checkpoint


@pytest.fixture(scope="module")
def local_ray():
    # logical CPUs: a resumed run's checkpoint filter needs one more than the reader and the actor
    with ray_session(num_cpus=3):
        yield


def write_notes(path, ids, texts=TEXTS):
    path.write_text("".join(json.dumps({"id": i, "mrn": f"m{n}", "text": t}) + "\n"
                            for n, (i, t) in enumerate(zip(ids, texts))))
    return path


def test_note_nlp_dataset_beside_the_rows_in_the_manifest_and_loadable(local_ray, checkpoint, tmp_path, capsys):
    source = write_notes(tmp_path / "notes.jsonl", [11, 12, 13, "14"])
    concepts = tmp_path / "map.csv"
    concepts.write_text("component,label,concept_id,source_concept_id\ntextcat,pos,4000001,0\n")
    out = tmp_path / "out"
    assert main(["annotate-notes", str(source), "--checkpoint", str(checkpoint), "--out", str(out), "--note-nlp",
                 "--concept-map", str(concepts), *COMMON]) == 0
    assert f"note_nlp: {out / 'note_nlp'}" in capsys.readouterr().out
    manifest = read_manifest(str(out))
    assert set(manifest["datasets"]) == {"annotations", "note_nlp"}
    rows = read_published(str(out)).to_pylist()
    note_nlp = read_published(str(out), dataset="note_nlp").to_pylist()
    labelled = [r for r in rows if r["status"] == "ok" and r["label"] is not None]
    assert len(note_nlp) == len(labelled) == manifest["datasets"]["note_nlp"]["rows"] > 0
    assert {r["note_nlp_id"] for r in note_nlp} == {r["note_nlp_id"] for r in labelled}
    assert {r["note_id"] for r in note_nlp} == {11, 12, 14}  # 13 is blank: no annotation
    for row in note_nlp:
        assert row["note_nlp_concept_id"] == (4000001 if row["lexical_variant"] == "pos" else 0)
        assert row["term_exists"] is None  # no ConText in this pipeline: no claim
        assert row["snippet"] is None and row["lexical_variant"] in ("neg", "pos", "other")
    con = load_into_cdm(str(out / "note_nlp" / "*.parquet"))
    assert con.execute("SELECT count(*), count(DISTINCT note_nlp_id) FROM note_nlp").fetchone() == (len(note_nlp),) * 2
    for column in REQUIRED:
        assert con.execute(f"SELECT count(*) FROM note_nlp WHERE {column} IS NULL").fetchone()[0] == 0


def test_non_integer_ids_are_refused_unless_an_integer_column_is_named(local_ray, checkpoint, tmp_path, capsys):
    source = write_notes(tmp_path / "notes.jsonl", ["a1", "a2", "a3", "a4"])
    out = tmp_path / "out"
    argv = ["annotate-notes", str(source), "--checkpoint", str(checkpoint), "--out", str(out), "--note-nlp", *COMMON]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "column 'id' is not an integer column" in error and "--note-id-column" in error
    assert not out.exists()
    source.write_text("".join(json.dumps({"id": f"a{n}", "oid": 100 + n, "text": t}) + "\n"
                              for n, t in enumerate(TEXTS)))
    assert main(argv + ["--note-id-column", "oid"]) == 0
    assert {r["note_id"] for r in read_published(str(out), dataset="note_nlp").to_pylist()} == {100, 101, 103}
    assert main(argv + ["--note-id-column", "nope", "--overwrite"]) == 2  # a column the notes lack: refused
    assert "missing note_id (column 'nope')" in capsys.readouterr().err
    # the companions of --note-nlp do nothing without it: refused
    assert main(argv[:-len(COMMON) - 1] + ["--concept-map", "x.csv", "--overwrite", *COMMON]) == 2
    assert "add --note-nlp" in capsys.readouterr().err


def test_ids_are_the_same_after_a_killed_and_resumed_run(local_ray, checkpoint, tmp_path):
    import crash_once
    from epee_annotate.pipelines.jobs import JobOptions, NotesJob, run_notes_job
    from epee_annotate.pipelines.note_nlp import NoteNlpOptions
    from epee_annotate.pipelines.notes import PipelineSource
    from epee_annotate.pipelines.runtime import ActorSettings

    ray.cloudpickle.register_pickle_by_value(crash_once)
    texts = [TEXTS[n % 4] if n % 4 != 2 else "pain" for n in range(16)]
    source = write_notes(tmp_path / "notes.jsonl", list(range(500, 516)), texts)

    def job(out, **kwargs):
        return NotesJob(inputs=[str(source)], source=PipelineSource(checkpoint=str(checkpoint)),
                        note_nlp=NoteNlpOptions(), **kwargs,
                        options=JobOptions(out=str(out), batch_size=4, progress=False, resume=True,
                                           actors=ActorSettings(max_restarts=0, max_task_retries=0)))

    out = tmp_path / "out"
    with pytest.raises(Exception) as failed:  # the actor dies in the third batch and may not restart: the job fails
        run_notes_job(job(out, annotator=crash_once.crashing_annotator(str(tmp_path / "crashed"), "509")))
    assert (tmp_path / "crashed").exists(), failed.value  # it failed because the worker died
    assert not out.exists() and (tmp_path / ".out.resume").exists()
    run_notes_job(job(out))
    resumed = read_published(str(out), dataset="note_nlp").column("note_nlp_id").to_pylist()
    fresh = tmp_path / "fresh"
    run_notes_job(NotesJob(inputs=[str(source)], source=PipelineSource(checkpoint=str(checkpoint)),
                           note_nlp=NoteNlpOptions(), options=JobOptions(out=str(fresh), batch_size=4, progress=False)))
    again = read_published(str(fresh), dataset="note_nlp").column("note_nlp_id").to_pylist()
    assert len(set(resumed)) == len(resumed) and sorted(resumed) == sorted(again)


def test_audit_dataset_manifest_verdict_and_strict_exit(local_ray, checkpoint, tmp_path, capsys):
    from epee_annotate.model import MultiExitModel
    from epee_annotate.policies import BudgetedExit

    model = MultiExitModel.from_pretrained(checkpoint)
    policy = BudgetedExit(1)  # layer 1 of a random tiny model disagrees with layer 4 often
    model.set_default_policy(policy, {"policy": policy.to_dict(), "disagreement_bound": 0.01, "confidence": 0.9})
    model.save_pretrained(tmp_path / "calibrated")
    source = write_notes(tmp_path / "notes.jsonl", list(range(40)), [TEXTS[n % 4] + f" {n}" for n in range(40)])
    out = tmp_path / "out"
    argv = ["annotate-notes", str(source), "--checkpoint", str(tmp_path / "calibrated"), "--out", str(out),
            "--audit-fraction", "0.5", "--audit-strict", *COMMON]
    assert main(argv) == 1  # exceeded, and strict
    captured = capsys.readouterr()
    assert "EXCEEDED" in captured.out and "--audit-strict" in captured.err
    report = read_manifest(str(out))["audit"]["components"]["textcat"]
    assert report["verdict"] == "exceeded" and report["promised_bound"] == 0.01 and report["fraction"] == 0.5
    audit = read_published(str(out), dataset="audit").to_pylist()
    rows = read_published(str(out)).to_pylist()
    checked = [r for r in rows if r["full_label"] is not None]
    assert len(audit) == len(checked) == report["audited"] > 0
    assert sum(not r["agree"] for r in audit) == report["disagreements"]
    assert all(r["exit_layer"] == 1 for r in audit) and all(r["early_label"] == r["label"] for r in checked)
    assert 0 < len({r["doc_id"] for r in checked}) < 40  # a sample of the docs, not all
    # the same docs on a rerun
    again = tmp_path / "again"
    assert main(argv[:5] + [str(again)] + argv[6:]) == 1
    assert {r["doc_id"] for r in read_published(str(again), dataset="audit").to_pylist()} == {r["doc_id"] for r in audit}
