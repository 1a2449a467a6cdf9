"""Prediction on DICOM and raster files through a tiny random ViT checkpoint."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from epee_annotate import EntropyExit, MultiExitModel
from epee_annotate.cli import main
from epee_annotate.imaging.classify import classify_images, find_image_files


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    from epee_annotate.testing import tiny_model

    directory = tmp_path_factory.mktemp("vit")
    tiny_model("vit", directory / "base", task="image", labels=("normal", "pneumonia")).save_pretrained(directory / "ckpt")
    return directory / "ckpt"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("archive")
    for name in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((40, 30)) * 255).astype(np.uint8)).save(folder / f"image{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.dcm").write_bytes(open(get_testdata_file("CT_small.dcm"), "rb").read()[:300])
    return folder


def test_folder_classification_with_metadata_and_errors(vit_checkpoint, archive):
    model = MultiExitModel.from_pretrained(vit_checkpoint)
    files = find_image_files([archive])
    assert len(files) == 9
    results = classify_images(model, files, policy=EntropyExit(0.6), batch_size=4)
    by_name = {r.source.rsplit("/", 1)[-1]: r for r in results}
    assert len(results) == len(files)
    assert by_name["notes.txt"].prediction.error and by_name["broken.dcm"].prediction.error
    ct = by_name["CT_small.dcm"]
    assert ct.prediction.ok and ct.prediction.label in ("normal", "pneumonia")
    assert ct.metadata["Modality"] == "CT" and ct.metadata["SOPInstanceUID"]
    assert "PatientName" not in ct.metadata and "PatientID" not in ct.metadata
    assert by_name["image0.png"].prediction.ok and by_name["image0.png"].metadata == {}


def test_batched_equals_one_by_one(vit_checkpoint, archive):
    model = MultiExitModel.from_pretrained(vit_checkpoint)
    files = find_image_files([archive])
    policy = EntropyExit(0.6)
    batched = classify_images(model, files, policy=policy, batch_size=8)
    single = [classify_images(model, [f], policy=policy, batch_size=1)[0] for f in files]
    key = lambda r: (r.source, r.prediction.label, r.prediction.exit_layer, r.prediction.error)  # noqa: E731
    assert [key(r) for r in batched] == [key(r) for r in single]


def test_prefetched_chunks_equal_one_decode_of_everything(vit_checkpoint, archive, monkeypatch):
    """Decoding chunk k+1 beside the model on chunk k changes nothing: order, names, errors, frames, answers."""
    import threading

    from epee_annotate.imaging import classify

    model = MultiExitModel.from_pretrained(vit_checkpoint)
    files = find_image_files([archive])
    sources = [*files[:3], (archive / "image1.png").read_bytes(), b"not an image", *files[3:]]
    decoded_on = []
    decode = classify.decode_sources
    monkeypatch.setattr(classify, "decode_sources",
                        lambda *a, **k: decoded_on.append(threading.current_thread().name) or decode(*a, **k))
    whole = classify_images(model, sources, policy=EntropyExit(0.6), batch_size=4, frames="all", prefetch=False)
    assert decoded_on == ["MainThread"]
    chunked = classify_images(model, sources, policy=EntropyExit(0.6), batch_size=4, frames="all", prefetch_chunk=2,
                              prefetch=True)
    assert len(decoded_on) == 1 + 6 and all(name.startswith("epee-decode") for name in decoded_on[1:])
    key = lambda r: (r.source, r.frame, r.prediction.label, r.prediction.exit_layer, r.prediction.error)  # noqa: E731
    assert [key(r) for r in chunked] == [key(r) for r in whole]
    # The default prefetches only with a core to spare beside torch's threads.
    monkeypatch.setattr(classify, "usable_cores", lambda: torch.get_num_threads())
    classify_images(model, sources[:3], prefetch_chunk=1)
    assert decoded_on[-3:] == ["MainThread"] * 3
    monkeypatch.setattr(classify, "usable_cores", lambda: torch.get_num_threads() + 1)
    classify_images(model, sources[:3], prefetch_chunk=1)
    assert all(name.startswith("epee-decode") for name in decoded_on[-3:])
    assert [r.source for r in whole if r.source.startswith("item-")] == ["item-3", "item-4"]
    assert whole[4].prediction.error and not whole[3].prediction.error
    with pytest.raises(ValueError, match="prefetch_chunk must be >= 1"):
        classify_images(model, sources, prefetch_chunk=0)


def test_all_frames_give_one_row_per_frame(vit_checkpoint, archive):
    model = MultiExitModel.from_pretrained(vit_checkpoint)
    results = classify_images(model, [archive / "rtdose.dcm"], frames="all")
    assert [r.frame for r in results] == list(range(len(results))) and len(results) > 1
    assert all(r.prediction.ok for r in results)


def test_cli_classify_images(vit_checkpoint, archive, tmp_path, capsys):
    out = tmp_path / "new" / "out.jsonl"  # a missing parent directory is created
    code = main(["classify-images", str(vit_checkpoint), str(archive), "--budget", "2", "--output", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9
    assert {r["exit_layer"] for r in rows if r["error"] is None} == {2}
    assert sum(r["error"] is not None for r in rows) == 2


def test_text_checkpoint_is_refused(model_factory):
    with pytest.raises(ValueError, match="image checkpoint"):
        classify_images(model_factory("bert"), [])
