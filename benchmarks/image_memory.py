"""Peak memory of decoding and classifying one batch of very large images: full-resolution vs bounded.

Writes ``--images`` PNGs of ``--megapixels`` each (a smooth gradient, so the files stay small),
then in a fresh process per mode decodes them and runs one batched ``predict`` with a tiny ViT:

* ``full``: the old path, every image decoded at full resolution and the batch stacked before
  the model resizes them (``read_image(..., reduce_to=None, max_pixels=None)``);
* ``bounded``: ``imaging.classify.classify_images`` (box-reduced at decode time towards the
  model's input side, pixel cap on).

Each process's peak resident memory (Linux ``VmHWM``, reset at its start through
``/proc/self/clear_refs``: a forked child would otherwise inherit its parent's high-water mark)
is reported; the ratio full/bounded is the figure to quote (the machine is shared, absolute MB
are noisy). Not a test: it writes ~1 GB of temporary PNGs for
the defaults and the full mode needs several GB of memory.

    python -m benchmarks.image_memory [--images 6] [--megapixels 144]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def write_images(directory: Path, count: int, megapixels: float) -> list[str]:
    import numpy as np
    from PIL import Image

    side = int((megapixels * 1e6) ** 0.5)
    ramp = (np.arange(side, dtype=np.uint32) * 255 // max(side - 1, 1)).astype(np.uint8)
    paths = []
    for i in range(count):
        image = np.add.outer(ramp // 2, np.roll(ramp, 97 * i) // 2).astype(np.uint8)
        path = directory / f"large{i}.png"
        Image.fromarray(image).save(path, compress_level=1)
        paths.append(str(path))
        del image
    return paths


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_mode(mode: str, checkpoint: str, paths: list[str]) -> dict:
    """Decode + one batched predict in this process; its peak RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: drop the high-water mark inherited at fork
    from epee_annotate import MultiExitModel
    from epee_annotate.imaging import read_image
    from epee_annotate.imaging.classify import classify_images

    model = MultiExitModel.from_pretrained(checkpoint)
    baseline = peak_rss_mb()
    if mode == "full":
        pixels = [read_image(p, reduce_to=None, max_pixels=None)[0].pixels for p in paths]
        shapes = [list(p.shape) for p in pixels]
        labels = [r.label for r in model.predict(pixels, batch_size=len(pixels))]
    else:
        results = classify_images(model, paths, batch_size=len(paths))
        shapes, labels = [], [r.prediction.label for r in results]
    peak = peak_rss_mb()
    return {"mode": mode, "peak_mb": round(peak), "after_model_load_mb": round(baseline), "labels": labels,
            "decoded_shapes": shapes[:1]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--megapixels", type=float, default=144.0)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "CHECKPOINT", "LIST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, checkpoint, listing = args.child
        print(json.dumps(run_mode(mode, checkpoint, json.loads(Path(listing).read_text()))))
        return
    from epee_annotate.testing import tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny_model("vit", root / "ckpt", task="image", labels=("normal", "pneumonia")).save_pretrained(root / "ckpt")
        listing = root / "files.json"
        listing.write_text(json.dumps(write_images(root, args.images, args.megapixels)))
        rows = []
        for mode in ("bounded", "full"):
            done = subprocess.run([sys.executable, "-m", "benchmarks.image_memory", "--child", mode,
                                   str(root / "ckpt"), str(listing)], capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    bounded, full = rows
    print(f"{args.images} PNGs x {args.megapixels:g} MP, one batch, tiny ViT (32x32 input):")
    for row in rows:
        print(f"  {row['mode']:8s} peak RSS {row['peak_mb']:6d} MB (after model load {row['after_model_load_mb']} MB)")
    print(f"  full / bounded peak: x{full['peak_mb'] / bounded['peak_mb']:.1f}; "
          f"same labels: {full['labels'] == bounded['labels']}")


if __name__ == "__main__":
    main()
