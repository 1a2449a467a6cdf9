"""The images job's worker: decode DICOM/raster bytes or npz rows, run the multi-exit ViT, one row per image.

Each file is decoded on its own (``imaging.classify``, on the bytes), so a corrupt, unsupported,
too large or non-image (SEG/RT/SR) file becomes one ``status="error"`` row naming the reason
(never patient tags); the decoded images of a batch, downscaled at decode time towards the
model's input side, then go through one batched early-exit run.
``frames="all"`` gives one row per frame (``kind="frame"``, ``frame`` set); single-frame files,
``"middle"`` and ``"mip"`` give ``kind="image"`` with ``frame`` set only when a multi-frame file
was reduced to its middle frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..image_decoding import MAX_PIXELS, DecodedImage
from ..imaging.classify import DECODE_ERROR_PREFIX, ImagePrediction, classify_decoded, classify_images
from ..policies import ExitPolicy, resolve_policy
from ..prediction import Prediction
from ..vocab import DICOM_COLUMNS
from .progress import report
from .schema import STATUS_ERROR, STATUS_OK, safe_rows_to_table
from .sources import READ_ERROR, SOURCE_FILE


def job_policy(knobs: dict[str, Any] | None, default: ExitPolicy) -> ExitPolicy:
    """The job's policy settings as a policy (``policies.resolve_policy``), else ``default``."""
    policy = resolve_policy(knobs)
    return default if policy is None else policy


def load_image_model(checkpoint: str, device: str = "cpu", autocast: str | None = None, runtime: str | None = None,
                     trust_unhashed_weights: bool = False):
    """A multi-exit image checkpoint, checked to be one, inferring with ``runtime`` (runtimes.RUNTIMES).

    ``trust_unhashed_weights``: see ``MultiExitModel.from_pretrained``.
    """
    from ..model import MultiExitModel

    model = MultiExitModel.from_pretrained(checkpoint, device=device, trust_unhashed_weights=trust_unhashed_weights)
    if model.task != "image":
        raise ValueError(f"{checkpoint!r} is a {model.task!r} checkpoint; the images job needs an image one")
    model.use_autocast(autocast)
    return model.use_runtime(runtime)


class ImageAnnotator:
    """Callable class for ``map_batches``: loads the model once per actor, annotates pyarrow batches.

    Decoding, prediction and the join are ``imaging.classify``'s; this class only maps its
    ``ImagePrediction``s to output rows.
    """

    def __init__(
        self,
        checkpoint: str,
        schema: pa.Schema,
        task_name: str = "image",
        policy_knobs: dict[str, Any] | None = None,
        device: str = "cpu",
        autocast: str | None = None,
        runtime: str | None = None,
        frames: str = "middle",
        model_batch_size: int = 32,
        threads: int | None = None,
        max_pixels: int | None = MAX_PIXELS,
        path_prefix: str = "",
        trust_unhashed_weights: bool = False,
        progress: Any = None,
    ):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = load_image_model(checkpoint, device, autocast, runtime, trust_unhashed_weights)
        self.policy = job_policy(policy_knobs, self.model.default_policy)
        self.policy_text = self.policy.describe()
        self.schema = schema
        self.task_name = task_name
        self.frames = frames
        self.model_batch_size = model_batch_size
        self.max_pixels = max_pixels
        self.path_prefix = path_prefix  # "s3://" etc.: Ray's paths on object storage lack the scheme
        self.progress = progress  # the job's progress counter (``progress.job_progress``) or None

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "bytes" in batch.column_names:
            paths = [self.path_prefix + path for path in batch.column(SOURCE_FILE).to_pylist()]
            errors = batch.column(READ_ERROR).to_pylist()
            read = [i for i, error in enumerate(errors) if error is None]
            data = batch.column("bytes").to_pylist()
            results = classify_images(self.model, [data[i] for i in read], self.policy, self.model_batch_size,
                                      self.frames, names=[paths[i] for i in read], max_pixels=self.max_pixels,
                                      prefetch_chunk=self.model_batch_size)
            results += [ImagePrediction(paths[i], None, Prediction.failed(f"{DECODE_ERROR_PREFIX}{errors[i]}",
                                                                          self.model.num_layers))
                        for i, error in enumerate(errors) if error is not None]
            rows = [{"doc_id": r.source, "path": r.source, **self._row(r)} for r in results]
        else:
            columns = batch.to_pydict()
            decoded = [(doc_id, DecodedImage(np.frombuffer(pixels, dtype=np.uint8).reshape(shape), None, {}))
                       for doc_id, pixels, shape in zip(columns["doc_id"], columns["pixels"], columns["shape"])]
            results = classify_decoded(self.model, decoded, self.policy, self.model_batch_size)
            rows = [{"doc_id": doc_id, "reference_label": label, "path": source, **self._row(r)}
                    for r, doc_id, label, source in zip(results, columns["doc_id"], columns["reference_label"],
                                                        columns["path"])]
        table = safe_rows_to_table(rows, self.schema)
        report(self.progress, batch)
        return table

    def _row(self, result: ImagePrediction) -> dict[str, Any]:
        """Output columns of one image or frame (or of a file that could not be decoded)."""
        prediction = result.prediction
        row: dict[str, Any] = {
            "task": self.task_name, "kind": "frame" if self.frames == "all" and result.frame is not None else "image",
            "frame": result.frame,
            **{column: result.metadata.get(keyword) or None for keyword, column in DICOM_COLUMNS.items()},
        }
        if not prediction.ok:
            return {**row, "status": STATUS_ERROR, "error": prediction.error}
        return {
            **row, "label": prediction.label, "exit_layer": prediction.exit_layer,
            "num_layers": prediction.num_layers, "confidence": prediction.confidence,
            "entropy": prediction.entropy, "probs": prediction.probs, "policy": self.policy_text,
            "status": STATUS_OK,
        }
