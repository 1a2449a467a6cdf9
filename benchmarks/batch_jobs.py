"""End-to-end throughput of the Ray Data batch jobs: EPEE vs full depth, notes and images, one run.

Notes: PHEE dev sentences (one note each, written to a JSONL with ids and the gold event type
as a pass-through column) through ``annotate-notes --checkpoint runs/phee_minilm --scope doc``.
Images: PneumoniaMNIST val (``--npz``) through ``annotate-images --checkpoint runs/pneumonia_vit``.
Each is run twice, with the checkpoint's calibrated policy (EPEE; or ``--notes-policy`` /
``--images-policy ENTROPY,PATIENCE``, e.g. from ``epee-annotate calibrate --dry-run``) and with
``--budget 0`` (full depth), in one local Ray session; times cover read + annotate (actor start-up and model
loading included) + write. Accuracy against the gold/pass-through label is a sanity check.

    python -m benchmarks.batch_jobs [--repeat 1] [--image-repeat 1] [--num-actors 2] [--work /tmp/epee_bench]
        [--notes-policy 0.5,4] [--images-policy 0.0,1]

Without runs/phee_minilm or an image checkpoint under runs/, a tiny random model stands in and
the output says so loudly (its numbers then measure plumbing, not a real model).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PHEE_DEV = SHARED / "phee" / "dev.json"
PNEUMONIA = SHARED / "pneumoniamnist" / "pneumoniamnist_train_val.npz"
TEXT_CHECKPOINT = ROOT / "runs" / "phee_minilm"
IMAGE_CHECKPOINTS = (ROOT / "runs" / "pneumonia_vit",)


def write_phee_jsonl(path: Path, repeat: int) -> int:
    """PHEE dev sentences as notes: {"id", "text", "gold"} per line; returns the count."""
    from epee_annotate.data.phee import load_phee

    examples = load_phee(PHEE_DEV)
    with open(path, "w") as handle:
        for copy in range(repeat):
            for number, example in enumerate(examples):
                ident = example.id or f"phee-{number}"
                ident = ident if repeat == 1 else f"{ident}#{copy}"
                handle.write(json.dumps({"id": ident, "text": example.input, "gold": example.label}) + "\n")
    return len(examples) * repeat


def write_npz(path: Path, repeat: int) -> int:
    """PneumoniaMNIST val (tiled ``repeat`` times) as an npz with a "val" split; returns the count."""
    import numpy as np

    from epee_annotate.imaging import load_npz_split

    images, labels = load_npz_split(PNEUMONIA, "val")
    np.savez(path, val_images=np.tile(images, (repeat, 1, 1)), val_labels=np.tile(labels, repeat))
    return len(images) * repeat


def image_checkpoint(work: Path) -> tuple[Path, bool]:
    """A trained ViT under runs/, else a tiny random one (flagged)."""
    for path in IMAGE_CHECKPOINTS:
        if (path / "epee_config.json").is_file():
            return path, True
    candidates = sorted(p.parent for p in (ROOT / "runs").glob("*/epee_config.json")
                        if json.loads(p.read_text()).get("task") == "image")
    if candidates:
        return candidates[0], True
    from epee_annotate.testing import tiny_model

    path = work / "tiny_vit"
    tiny_model("vit", path, task="image", labels=("normal", "pneumonia")).save_pretrained(path)
    return path, False


def text_checkpoint(work: Path) -> tuple[Path, bool]:
    if (TEXT_CHECKPOINT / "epee_config.json").is_file():
        return TEXT_CHECKPOINT, True
    from epee_annotate.testing import tiny_model

    path = work / "tiny_bert"
    tiny_model("bert", path, labels=("Adverse_event", "Potential_therapeutic_event")).save_pretrained(path)
    return path, False


def calibrated(checkpoint: Path) -> dict | None:
    return json.loads((checkpoint / "epee_config.json").read_text()).get("default_policy")


def accuracy(out: Path, gold_column: str, label_names: list[str] | None = None) -> float | None:
    """Share of ok rows whose label equals the pass-through gold label."""
    import pyarrow.dataset as pads

    from epee_annotate.pipelines.publish import dataset_location

    table = pads.dataset(dataset_location(str(out))).to_table(columns=["label", "status", gold_column]).to_pandas()
    table = table[table["status"] == "ok"]
    if not len(table):
        return None
    gold = table[gold_column]
    if label_names is not None:
        gold = gold.map(lambda i: label_names[int(i)])
    return float((table["label"] == gold).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/epee_bench")
    parser.add_argument("--repeat", type=int, default=1, help="copies of PHEE dev (more docs amortise start-up)")
    parser.add_argument("--image-repeat", type=int, default=1, help="copies of PneumoniaMNIST val")
    parser.add_argument("--num-actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--notes-policy", default=None, metavar="ENTROPY,PATIENCE",
                        help="EPEE setting for the notes model (default: its calibrated policy)")
    parser.add_argument("--images-policy", default=None, metavar="ENTROPY,PATIENCE",
                        help="EPEE setting for the image model (default: its calibrated policy)")
    args = parser.parse_args()

    import ray

    from epee_annotate.pipelines.jobs import ImagesJob, JobOptions, NotesJob, run_images_job, run_notes_job
    from epee_annotate.pipelines.notes import PipelineSource
    from epee_annotate.pipelines.runtime import ActorSettings, local_cpus
    from epee_annotate.pipelines.publish import dataset_location
    from epee_annotate.pipelines.schema import read_job_metadata

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    notes_file = work / "phee_dev.jsonl"
    num_notes = write_phee_jsonl(notes_file, args.repeat)
    npz_file = work / "pneumoniamnist_val.npz"
    num_images = write_npz(npz_file, args.image_repeat)
    text_ckpt, text_real = text_checkpoint(work)
    image_ckpt, image_real = image_checkpoint(work)
    for name, path, real in (("text", text_ckpt, text_real), ("image", image_ckpt, image_real)):
        if not real:
            print(f"!!! NOTE: no trained {name} checkpoint found; using a TINY RANDOM model at {path}: "
                  f"these {name} numbers measure the plumbing only !!!")
    actors = ActorSettings(args.num_actors, args.cpus_per_actor)
    ray.init(num_cpus=local_cpus(actors), include_dashboard=False, log_to_driver=False)
    results = []
    try:
        for job_kind, checkpoint, given in (("notes", text_ckpt, args.notes_policy),
                                            ("images", image_ckpt, args.images_policy)):
            epee_knobs = {}
            if given:
                entropy, patience = given.split(",")
                epee_knobs = {"entropy": float(entropy), "patience": int(patience)}
            elif calibrated(checkpoint) is None:
                epee_knobs = {"entropy": 0.3, "patience": 2}
                print(f"!!! NOTE: {checkpoint} has no calibrated default policy and no --{job_kind}-policy "
                      f"was given; the EPEE run uses an UNCALIBRATED {epee_knobs} !!!")
            for setting, knobs in (("epee", epee_knobs), ("full", {"budget": 0})):
                out = work / f"out_{job_kind}_{setting}"
                options = JobOptions(out=str(out), actors=actors, batch_size=args.batch_size, progress=False, **knobs)
                if job_kind == "notes":
                    summary = run_notes_job(NotesJob(
                        inputs=[str(notes_file)], source=PipelineSource(checkpoint=str(checkpoint), scope="doc"),
                        options=options, keep_columns=["gold"]))
                    acc = accuracy(out, "gold")
                else:
                    summary = run_images_job(ImagesJob(checkpoint=str(checkpoint), options=options,
                                                       npz=str(npz_file), split="val"))
                    labels = read_job_metadata(dataset_location(str(out)))["components"][0]["labels"]
                    acc = accuracy(out, "reference_label", labels)
                (task_info,) = summary["tasks"].values()
                results.append({
                    "job": job_kind, "setting": setting, "checkpoint": str(checkpoint),
                    "real_model": text_real if job_kind == "notes" else image_real,
                    "policy": _policy(out),
                    "inputs": summary["documents"], "rows": summary["rows"],
                    "seconds": summary["throughput"]["pipeline_s"],
                    "inputs_per_s": summary["throughput"]["docs_per_s"],
                    "mean_exit_layer": task_info["mean_exit_layer"], "num_layers": task_info["num_layers"],
                    "layer_speedup": task_info["layer_speedup"], "accuracy": acc,
                    "errors": summary["rows_per_status"]["error"],
                })
    finally:
        ray.shutdown()
    print(f"\nBatch jobs, end to end (read + annotate + write, actor start-up included); "
          f"{args.num_actors} actor(s) x {args.cpus_per_actor} CPU, {platform.machine()}, "
          f"{num_notes} notes (PHEE dev x{args.repeat}), {num_images} images (PneumoniaMNIST val "
          f"x{args.image_repeat})")
    print(f"{'job':7} {'setting':6} {'inputs':>6} {'seconds':>8} {'inputs/s':>9} {'exit layer':>11} "
          f"{'layer x':>8} {'accuracy':>8}  policy")
    by_key = {(r["job"], r["setting"]): r for r in results}
    for r in results:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        print(f"{r['job']:7} {r['setting']:6} {r['inputs']:>6} {r['seconds']:>8.1f} {r['inputs_per_s']:>9.1f} "
              f"{r['mean_exit_layer']:>6.2f}/{r['num_layers']:<4} {r['layer_speedup']:>8.2f} {acc:>8}  {r['policy']}")
    for job in ("notes", "images"):
        epee, full = by_key.get((job, "epee")), by_key.get((job, "full"))
        if epee and full:
            print(f"{job}: EPEE end-to-end speed-up x{full['seconds'] / epee['seconds']:.2f} "
                  f"(layer speed-up x{epee['layer_speedup']:.2f})")
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {work / 'results.json'}")


def _policy(out: Path) -> str:
    from epee_annotate.pipelines.publish import dataset_location
    from epee_annotate.pipelines.schema import read_job_metadata

    return read_job_metadata(dataset_location(str(out)))["components"][0]["policy"]


if __name__ == "__main__":
    main()
