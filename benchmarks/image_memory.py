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

``--dicom`` instead measures one DICOM decode (``read_image``, reduced to the model side as the
images job does) per process: a single 100 MP 16-bit frame, and a 500-frame 512 x 512 series
(``--frames all``, and ``--frames mip``). It reports the peak minus the process's baseline as bytes per pixel of the
largest frame, with and without the file's own bytes (the job hands each file over whole).

    python -m benchmarks.image_memory --dicom [--megapixels 100] [--series-frames 500]
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


def write_dicom(path: Path, rows: int, columns: int, frames: int) -> None:
    """An uncompressed 16-bit MONOCHROME2 CT-like DICOM (a smooth ramp per frame), written frame by frame."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "CT", "MONOCHROME2", 1
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = \
        rows, columns, 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if frames > 1:
        ds.NumberOfFrames = frames
    ramp = (np.add.outer(np.arange(rows, dtype=np.uint32), np.arange(columns, dtype=np.uint32)) % 4096)
    frame = ramp.astype("<u2").tobytes()
    ds.PixelData = frame * frames  # one frame repeated: the file is written once, memory measured on reading
    ds.save_as(path, enforce_file_format=True)


def run_dicom(path: str, frames: str, reduce_to: int) -> dict:
    """One ``read_image`` of ``path`` in this process; peak RSS above the baseline."""
    Path("/proc/self/clear_refs").write_text("5")
    from epee_annotate.imaging import read_image

    baseline = peak_rss_mb()
    images = read_image(path, frames=frames, reduce_to=reduce_to)
    peak = peak_rss_mb()
    return {"peak_mb": peak, "baseline_mb": baseline, "images": len(images), "shape": list(images[0].pixels.shape),
            "output_bytes": sum(image.pixels.nbytes for image in images)}


def dicom_main(args: argparse.Namespace) -> None:
    side = int((args.megapixels * 1e6) ** 0.5)
    cases = [("single frame", side, side, 1, "middle"), ("series", 512, 512, args.series_frames, "all"),
             ("series MIP", 512, 512, args.series_frames, "mip")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, rows, columns, frames, mode in cases:
            path = Path(tmp) / f"{name.replace(' ', '_')}.dcm"
            write_dicom(path, rows, columns, frames)
            done = subprocess.run([sys.executable, "-m", "benchmarks.image_memory", "--dicom-child", str(path), mode,
                                   str(args.reduce_to)], capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            used = (row["peak_mb"] - row["baseline_mb"]) * 2**20
            pixels = rows * columns
            file_bytes, kept = path.stat().st_size, row["output_bytes"]
            print(f"{name}: {frames} x {rows}x{columns} 16-bit ({file_bytes / 1e6:.0f} MB file), frames={mode}: "
                  f"peak +{used / 1e6:.0f} MB; beyond the file's bytes and the {row['images']} returned "
                  f"{row['shape']} image(s) ({kept / 1e6:.0f} MB): {(used - file_bytes - kept) / 1e6:.0f} MB = "
                  f"{(used - file_bytes - kept) / pixels:.1f} B per pixel of the largest frame")
            path.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--megapixels", type=float, default=144.0)
    parser.add_argument("--dicom", action="store_true", help="measure DICOM decoding (module docstring)")
    parser.add_argument("--series-frames", type=int, default=500)
    parser.add_argument("--reduce-to", type=int, default=224, help="--dicom: the model's input side")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "CHECKPOINT", "LIST"), help=argparse.SUPPRESS)
    parser.add_argument("--dicom-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dicom_child:
        path, mode, reduce_to = args.dicom_child
        print(json.dumps(run_dicom(path, mode, int(reduce_to))))
        return
    if args.dicom:
        dicom_main(args)
        return
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
