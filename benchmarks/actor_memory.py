"""Peak resident memory of one batch-job actor at the default batch size.

Each measurement runs in a fresh process that does what a Ray actor does: build the annotator
(loading the pipeline or model once) and annotate one default-size batch. ``ru_maxrss`` of that
process is the actor's peak (Ray's own worker overhead, ~100-200 MB, comes on top).

    python -m benchmarks.actor_memory [--notes-checkpoint runs/phee_minilm] [--image-checkpoint runs/pneumonia_vit]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHEE_DEV = ROOT.parent / "shared" / "data" / "phee" / "dev.json"


def notes_actor(checkpoint: str) -> None:
    import pyarrow as pa

    from epee_annotate.pipelines.jobs import JobOptions
    from epee_annotate.pipelines.notes import NoteAnnotator, NoteColumns, PipelineSource
    from epee_annotate.pipelines.schema import output_schema

    size = JobOptions.batch_size
    lines = PHEE_DEV.read_text().splitlines()[:size] if PHEE_DEV.is_file() else []
    texts = [json.loads(line)["context"] for line in lines] or ["Rash developed after carbamazepine."] * size
    source = PipelineSource(config=str(ROOT / "configs" / "pv_event.cfg"), overrides={"paths.pv_checkpoint": checkpoint})
    annotator = NoteAnnotator(source, NoteColumns("parquet"), {"policy": None, "batch_size": JobOptions.model_batch_size,
                                                            "device": "cpu", "autocast": None}, output_schema("notes"))
    annotator(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}))


def images_actor(checkpoint: str) -> None:
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from epee_annotate.pipelines.images import ImageAnnotator
    from epee_annotate.pipelines.jobs import JobOptions
    from epee_annotate.pipelines.schema import output_schema

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(JobOptions.batch_size):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((256, 256)) * 255).astype(np.uint8)).save(buffer, format="PNG")
        blobs.append(buffer.getvalue())
    annotator = ImageAnnotator(checkpoint, output_schema("images"))
    annotator(pa.table({"bytes": blobs, "path": [f"img{i}.png" for i in range(len(blobs))]}))


def measure(kind: str, checkpoint: str) -> float:
    """Peak RSS in MiB of a fresh process running one actor batch."""
    code = (f"import resource, benchmarks.actor_memory as m; m.{kind}_actor({checkpoint!r}); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes-checkpoint", default=str(ROOT / "runs" / "phee_minilm"))
    parser.add_argument("--image-checkpoint", default=str(ROOT / "runs" / "pneumonia_vit"))
    args = parser.parse_args()
    results = {}
    if Path(args.notes_checkpoint, "epee_config.json").is_file():
        results["notes actor (MiniLM PV pipeline, batch 64)"] = measure("notes", args.notes_checkpoint)
    if Path(args.image_checkpoint, "epee_config.json").is_file():
        results["images actor (ViT, batch 64 PNG 256x256)"] = measure("images", args.image_checkpoint)
    print("; ".join(f"{name}: {mib:.0f} MiB" for name, mib in results.items()))


if __name__ == "__main__":
    main()
