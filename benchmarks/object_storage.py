"""Notes/s of the notes job on local files vs a loopback S3 server, 1 and 2 actors; resume overhead.

One Ray session, one run of each, same input: N notes in one JSONL file (PHEE dev sentences when
/work/shared/data/phee is there, else synthetic sentences), annotated by ``--checkpoint`` (default:
a tiny random BERT, which measures the plumbing: reading, Ray, writing, publishing).

* local: input, output on the local disk (rename publish);
* s3: input, checkpoint and output on a moto S3 server on 127.0.0.1 started here (staging
  prefix + copy + ``_SUCCESS``). moto is a Python server in this process: the S3 figures are a
  pessimistic stand-in for real object storage, not a prediction of it;
* resume: the same job with ``--resume`` (first run: the id pre-scan + Ray Data's pending/commit
  checkpoint files per part), as a ratio to the same job without it.

Times include actor start-up and model loading. One discarded warm-up job first (worker imports,
page cache), then ``--repeat`` rounds of all six runs, in order, reporting the median seconds per
run. Absolute numbers on a shared machine are noisy: read the ratios.

    python -m benchmarks.object_storage [--notes 2000] [--repeat 2] [--checkpoint DIR] [--work /tmp/epee_bench_s3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

from benchmarks.batch_jobs import PHEE_DEV

BUCKET = "bench"


def write_notes(path: Path, count: int) -> None:
    """``count`` notes as JSONL: PHEE dev sentences (cycled) if available, else synthetic ones."""
    if PHEE_DEV.exists():
        from epee_annotate.data.phee import load_phee

        texts = [example.input for example in load_phee(PHEE_DEV)]
    else:
        texts = ["the patient developed a rash after the first dose of amoxicillin",
                 "no adverse reaction was reported", "nausea and dizziness resolved after stopping the drug"]
    with open(path, "w") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": f"note-{i:07d}", "text": texts[i % len(texts)]}) + "\n")


def start_s3():
    """moto on 127.0.0.1 with the AWS_* environment pointing at it (before Ray starts, so workers inherit it)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return server, client


def upload(client, local: Path, prefix: str) -> str:
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        client.upload_file(str(path), BUCKET, prefix if local.is_file() else f"{prefix}/{path.relative_to(local)}")
    return f"s3://{BUCKET}/{prefix}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--checkpoint", default=None, help="text checkpoint (default: a tiny random BERT)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows-per-file", type=int, default=500, help="parts per job = notes / this")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of all runs (median reported)")
    parser.add_argument("--work", default="/tmp/epee_bench_s3")
    args = parser.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / "tiny_bert"
    if not args.checkpoint:
        from epee_annotate.testing import tiny_model

        tiny_model("bert", checkpoint, labels=("neg", "pos", "other")).save_pretrained(checkpoint)
    notes = work / "notes.jsonl"
    write_notes(notes, args.notes)
    server, client = start_s3()

    import ray

    from epee_annotate.pipelines.jobs import JobOptions, NotesJob, run_notes_job
    from epee_annotate.pipelines.notes import PipelineSource
    from epee_annotate.pipelines.runtime import ActorSettings, local_cpus

    s3_notes = upload(client, notes, "in/notes.jsonl")
    s3_checkpoint = upload(client, checkpoint, "models/text")
    ray.init(num_cpus=local_cpus(ActorSettings(2), extra=1), include_dashboard=False, log_to_driver=False)
    runs = [("local", 1, False), ("local", 2, False), ("s3", 1, False), ("s3", 2, False),
            ("local", 1, True), ("s3", 1, True)]

    def run(storage_kind: str, actors: int, resume: bool, tag: str) -> float:
        name = f"{storage_kind}_{actors}{'_resume' if resume else ''}"
        remote = storage_kind == "s3"
        out = f"s3://{BUCKET}/out/{name}{tag}" if remote else str(work / f"out_{name}{tag}")
        options = JobOptions(out=out, actors=ActorSettings(actors), batch_size=args.batch_size, progress=False,
                             rows_per_file=args.rows_per_file, resume=resume)
        source = PipelineSource(checkpoint=s3_checkpoint if remote else str(checkpoint), scope="doc")
        summary = run_notes_job(NotesJob(inputs=[s3_notes if remote else str(notes)], source=source, options=options))
        assert summary["documents"] == args.notes
        return summary["throughput"]["pipeline_s"]

    seconds: dict[str, list[float]] = {}
    try:
        run("local", 1, False, "_warmup")
        for round_number in range(args.repeat):
            for storage_kind, actors, resume in runs:
                name = f"{storage_kind}_{actors}{'_resume' if resume else ''}"
                seconds.setdefault(name, []).append(run(storage_kind, actors, resume, f"_{round_number}"))
    finally:
        ray.shutdown()
        server.stop()
    import statistics

    results = [{"run": name, "seconds": statistics.median(times), "all_seconds": times,
                "notes_per_s": args.notes / statistics.median(times)} for name, times in seconds.items()]
    by = {r["run"]: r for r in results}
    print(f"\nNotes job, {args.notes} notes, batch {args.batch_size}, {platform.machine()} "
          f"({os.cpu_count()} cores, shared), checkpoint {'tiny random BERT' if not args.checkpoint else checkpoint}")
    print(f"{'run':16} {'seconds':>8} {'notes/s':>8}  all seconds")
    for r in results:
        print(f"{r['run']:16} {r['seconds']:>8.1f} {r['notes_per_s']:>8.1f}  {[round(t, 1) for t in r['all_seconds']]}")
    for kind in ("local", "s3"):
        print(f"{kind}: 2 actors / 1 actor notes/s x{by[f'{kind}_2']['notes_per_s'] / by[f'{kind}_1']['notes_per_s']:.2f}")
    for actors in (1, 2):
        print(f"{actors} actor(s): s3 / local notes/s x{by[f's3_{actors}']['notes_per_s'] / by[f'local_{actors}']['notes_per_s']:.2f}")
    for kind in ("local", "s3"):
        print(f"{kind}: --resume bookkeeping, time ratio resume / plain x"
              f"{by[f'{kind}_1_resume']['seconds'] / by[f'{kind}_1']['seconds']:.2f}")
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
