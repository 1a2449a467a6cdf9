"""The images job's worker: decode DICOM/raster bytes or npz rows, run the multi-exit ViT, one row per image.

Each file is decoded on its own (``imaging.read_image`` on the bytes), so a corrupt or
unsupported file becomes one ``status="error"`` row naming the reason (never patient tags);
the decoded images of a batch then go through one ``MultiExitModel.predict`` call.
``frames="all"`` gives one row per frame (``kind="frame"``, ``frame`` set); single-frame files,
``"middle"`` and ``"mip"`` give ``kind="image"`` with ``frame`` set only when a multi-frame file
was reduced to its middle frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from ..policies import ExitPolicy, make_policy
from .notes import CrashSwitch
from .schema import DICOM_COLUMNS, STATUS_ERROR, STATUS_OK, safe_rows_to_table


def job_policy(knobs: dict[str, Any] | None, default: ExitPolicy) -> ExitPolicy:
    """``--entropy/--patience/--budget`` as a policy (``make_policy`` rules), else ``default``."""
    knobs = {k: v for k, v in (knobs or {}).items() if v is not None}
    return make_policy(knobs.get("entropy"), knobs.get("patience"), knobs.get("budget")) if knobs else default


def load_image_model(checkpoint: str, device: str = "cpu", autocast: str | None = None):
    """A multi-exit image checkpoint, checked to be one."""
    from ..model import MultiExitModel

    model = MultiExitModel.from_pretrained(checkpoint, device=device)
    if model.task != "image":
        raise ValueError(f"{checkpoint!r} is a {model.task!r} checkpoint; the images job needs an image one")
    model.use_autocast(autocast)
    return model


class ImageAnnotator:
    """Callable class for ``map_batches``: loads the model once per actor, annotates pyarrow batches."""

    def __init__(
        self,
        checkpoint: str,
        schema: pa.Schema,
        task_name: str = "image",
        policy_knobs: dict[str, Any] | None = None,
        device: str = "cpu",
        autocast: str | None = None,
        frames: str = "middle",
        model_batch_size: int = 32,
        threads: int | None = None,
        crash: CrashSwitch | None = None,
        path_prefix: str = "",
    ):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.model = load_image_model(checkpoint, device, autocast)
        self.policy = job_policy(policy_knobs, self.model.default_policy)
        self.policy_text = self.policy.describe()
        self.schema = schema
        self.task_name = task_name
        self.frames = frames
        self.model_batch_size = model_batch_size
        self.crash = crash
        self.path_prefix = path_prefix  # "s3://" etc.: Ray's paths on object storage lack the scheme

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "bytes" in batch.column_names:
            items = self._decode_files(batch)
        else:
            items = self._decode_npz(batch)
        if self.crash is not None:
            self.crash.maybe_crash([row["doc_id"] for row, _ in items])
        todo = [i for i, (_, pixels) in enumerate(items) if pixels is not None]
        predictions = self.model.predict([items[i][1] for i in todo], self.policy, batch_size=self.model_batch_size)
        answers = dict(zip(todo, predictions))
        rows = []
        for index, (row, _) in enumerate(items):
            prediction = answers.get(index)
            if prediction is not None and prediction.ok:
                row.update(
                    task=self.task_name, label=prediction.label, exit_layer=prediction.exit_layer,
                    num_layers=prediction.num_layers, confidence=prediction.confidence, entropy=prediction.entropy,
                    probs=prediction.probs, policy=self.policy_text, status=STATUS_OK,
                )
            elif prediction is not None:
                row.update(task=self.task_name, status=STATUS_ERROR, error=prediction.error)
            rows.append(row)
        return safe_rows_to_table(rows, self.schema)

    def _decode_files(self, batch: pa.Table) -> list[tuple[dict[str, Any], np.ndarray | None]]:
        """(row, pixels) per decoded image; undecodable files give (error row, None)."""
        from ..imaging.classify import decode_sources
        from ..imaging.reading import ImageReadError

        paths = [self.path_prefix + path for path in batch.column("path").to_pylist()]
        items = []
        for path, image in decode_sources(batch.column("bytes").to_pylist(), self.frames, names=paths):
            base = {"doc_id": path, "path": path}
            if isinstance(image, ImageReadError):  # corrupt, truncated, unsupported: this file only
                items.append(({**base, "task": self.task_name, "kind": "image", "status": STATUS_ERROR,
                               "error": f"cannot decode image: {image}"}, None))
                continue
            row = {**base, "kind": "frame" if self.frames == "all" and image.frame is not None else "image",
                   "frame": image.frame}
            for keyword, column in DICOM_COLUMNS.items():
                row[column] = image.metadata.get(keyword) or None
            items.append((row, image.pixels))
        return items

    def _decode_npz(self, batch: pa.Table) -> list[tuple[dict[str, Any], np.ndarray | None]]:
        """(row, uint8 pixels) per npz row (the archive was validated when it was opened)."""
        items = []
        columns = batch.to_pydict()
        for doc_id, label, pixels, shape, source in zip(
            columns["doc_id"], columns["reference_label"], columns["pixels"], columns["shape"], columns["path"]
        ):
            array = np.frombuffer(pixels, dtype=np.uint8).reshape(shape)
            items.append(({"doc_id": doc_id, "reference_label": label, "kind": "image", "path": source}, array))
        return items

