"""The shared machinery of every EPEE spaCy component.

A component says which items of a doc it classifies (``collect``: sentences, the doc, mentions
or mention pairs, each with its model input). Everything else lives here: lazy checkpoint
loading, the exit policy, batching over many docs (one ``model.predict`` call per spaCy batch,
so the core's compaction and length bucketing see every item at once), writing results back,
and saving/loading with ``nlp.to_disk`` / ``spacy.load``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from spacy.language import Language
from spacy.tokens import Doc, Span
from spacy.util import minibatch

from ..checkpoint import CheckpointError, read_config
from ..model import MultiExitModel
from ..policies import ExitPolicy, make_policy, policy_from_dict
from ..prediction import Prediction
from .extensions import register_extensions, replace_task_records, set_result
from .medspacy_support import quiet_medspacy
from .records import make_record

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
SETTINGS_FILE = "epee_component.json"
AUTOCAST = (None, "bf16", "fp16")


@dataclass
class Item:
    """One thing to classify: its model input and where the answer goes."""

    input: Any
    kind: str  # "mention" | "pair" | "sentence" | "doc"
    start: int
    end: int
    span: Span | None = None  # mention or sentence that receives span._.epee_* values
    head: tuple[int, int] | None = None
    tail: tuple[int, int] | None = None
    clipped: bool = False  # the component cut the input before encoding


def resolve_policy(policy: dict[str, Any] | None) -> ExitPolicy | None:
    """Config ``policy`` -> ExitPolicy; None keeps the checkpoint's default.

    Accepts ``{"entropy": .., "patience": .., "budget": .., "beem": ..}`` (``make_policy`` knobs) or a saved
    policy dict with ``"name"`` (``policy_from_dict``).
    """
    if policy is None:
        return None
    if not isinstance(policy, dict):
        raise ValueError(f"policy must be null or a mapping, got {type(policy).__name__}")
    if "name" in policy:
        return policy_from_dict(policy)
    unknown = set(policy) - {"entropy", "patience", "budget", "beem"}
    if unknown:
        raise ValueError(f"unknown policy settings {sorted(unknown)}; use entropy, patience, budget, beem or name")
    return make_policy(policy.get("entropy"), policy.get("patience"), policy.get("budget"), policy.get("beem"))


def sentences(doc: Doc) -> list[Span]:
    """The doc's sentences, or the whole doc as one when nothing set sentence boundaries."""
    if len(doc) and not doc.has_annotation("SENT_START"):
        return [doc[:]]
    return list(doc.sents)


def has_content(text: str) -> bool:
    """Whether text has anything to classify (empty, blank and punctuation-only text has not)."""
    return any(ch.isalnum() for ch in text)


class EpeeComponent:
    """Base class: subclasses set ``task`` and implement ``collect``."""

    task: str = "text"  # the checkpoint task the component needs

    def __init__(
        self,
        nlp: Language,
        name: str,
        checkpoint: str | None,
        policy: dict[str, Any] | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        autocast: str | None = None,
        min_confidence: float | None = None,
        none_label: str = "none",
        expected_labels: Sequence[str] | None = None,
    ):
        if checkpoint is None:
            raise ValueError(f"component {name!r} needs a checkpoint directory (set its 'checkpoint' setting)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if autocast not in AUTOCAST:
            raise ValueError(f"autocast must be one of {AUTOCAST}, got {autocast!r}")
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        register_extensions()
        quiet_medspacy()
        self.nlp = nlp
        self.name = name
        self.checkpoint = str(checkpoint)
        self.policy_config = policy
        self._policy = resolve_policy(policy)  # validate now, not at the first doc
        self.batch_size = int(batch_size)
        self.device = device
        self.autocast = autocast
        self.min_confidence = min_confidence
        self.none_label = none_label
        self.expected_labels = list(expected_labels) if expected_labels else None
        # Loaded on first use: spacy.load builds components from the saved config (the original
        # checkpoint path) and then calls from_disk, which points them at the saved copy.
        self._model: MultiExitModel | None = None

    # ----- model ---------------------------------------------------------------------------
    @property
    def model(self) -> MultiExitModel:
        """The multi-exit model, loaded on first use."""
        if self._model is None:
            self._model = self._load(self.checkpoint)
        return self._model

    def _load(self, checkpoint: str) -> MultiExitModel:
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"component {self.name!r}: device {self.device!r} asked for but CUDA is not available")
        model = MultiExitModel.from_pretrained(checkpoint, device=self.device)
        if model.task != self.task:
            raise ValueError(
                f"component {self.name!r} needs a {self.task!r} checkpoint; {checkpoint!r} is a {model.task!r} one"
            )
        if self.expected_labels and sorted(model.labels) != sorted(self.expected_labels):
            logger.warning("component %r: checkpoint labels %s differ from the expected %s",
                           self.name, model.labels, self.expected_labels)
        model.use_autocast(self.autocast)
        return model

    @property
    def policy(self) -> ExitPolicy:
        """The exit policy in use: the configured one, else the checkpoint's default."""
        return self._policy if self._policy is not None else self.model.default_policy

    @property
    def labels(self) -> list[str]:
        """The checkpoint's labels; read from its config without loading weights (spaCy asks early)."""
        if self._model is not None:
            return list(self._model.labels)
        try:
            return list(read_config(self.checkpoint).labels)
        except (CheckpointError, OSError, ValueError):
            return []  # spacy.load asks before from_disk has pointed us at the saved copy

    # ----- spaCy API -------------------------------------------------------------------------
    def __call__(self, doc: Doc) -> Doc:
        self._process([doc])
        return doc

    def pipe(self, docs: Iterable[Doc], batch_size: int = 128) -> Iterator[Doc]:
        """Classify the items of ``batch_size`` docs at a time in one model call; yields every doc."""
        for batch in minibatch(docs, size=batch_size):
            self._process(batch)
            yield from batch

    def collect(self, doc: Doc) -> list[Item]:
        """The items of ``doc`` to classify, in output order."""
        raise NotImplementedError

    def _process(self, docs: Sequence[Doc]) -> None:
        per_doc = [self.collect(doc) for doc in docs]
        inputs = [item.input for items in per_doc for item in items]
        predictions = self.model.predict(inputs, self.policy, batch_size=self.batch_size) if inputs else []
        failed = sum(not p.ok for p in predictions)
        if failed:
            logger.warning("component %r: %d of %d inputs could not be classified", self.name, failed, len(inputs))
        position = 0
        for doc, items in zip(docs, per_doc):
            self._write(doc, items, predictions[position : position + len(items)])
            position += len(items)

    def _write(self, doc: Doc, items: Sequence[Item], predictions: Sequence[Prediction]) -> None:
        records = []
        for item, prediction in zip(items, predictions):
            record = make_record(self.name, item.kind, item.start, item.end, prediction, item.clipped, item.head,
                                 item.tail, self._label(prediction))
            records.append(record)
            if item.kind == "doc":
                set_result(doc, record)
                if prediction.ok:
                    doc.cats.update(zip(self.model.labels, record["probs"]))
            elif item.span is not None:
                set_result(item.span, record)
        replace_task_records(doc, self.name, records)

    def _label(self, prediction: Prediction) -> str | None:
        if prediction.ok and self.min_confidence is not None and prediction.confidence < self.min_confidence:
            return self.none_label
        return prediction.label

    # ----- serialization -----------------------------------------------------------------------
    # Settings (policy, batch_size, device, ...) live in the pipeline's config.cfg, which spaCy
    # writes and reads itself, so they can be overridden at spacy.load time. Only the checkpoint
    # needs copying: from_disk points the component at the copy, so loading works offline.
    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> None:
        """Write a full copy of the checkpoint into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path / CHECKPOINT_DIR)
        info = {"checkpoint_id": self.model.checkpoint_id, "task": self.model.task, "labels": self.model.labels}
        (path / SETTINGS_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> "EpeeComponent":
        """Use the checkpoint copy saved in ``path`` instead of the configured one."""
        path = Path(path) / CHECKPOINT_DIR
        if not path.is_dir():
            raise ValueError(f"component {self.name!r}: no saved checkpoint at {str(path)!r}")
        self.checkpoint = str(path)
        self._model = None
        return self
