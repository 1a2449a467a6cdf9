"""The shared machinery of every EPEE spaCy component.

A component says which items of a doc it classifies (``collect``: sentences, the doc, mentions
or mention pairs, each with its model input). Everything else lives here: lazy checkpoint
loading, the exit policy, batching over many docs (one ``model.predict`` call per spaCy batch,
so the core's compaction and length bucketing see every item at once), writing results back,
saving/loading with ``nlp.to_disk`` / ``spacy.load``, and ``score`` for ``nlp.evaluate``.
Components are spaCy ``Pipe`` subclasses, so ``nlp.set_error_handler`` / ``set_error_handler``
reach them (``pipe`` hands each failing doc to the handler and yields the others).

Multiprocessing: ``nlp.pipe(..., n_process=N)`` forks worker processes. Torch's OpenMP thread
pool does not survive a fork once the parent has used it (the child hangs in its first parallel
op), so a component running in a process other than the one that built it first switches torch
to one thread per process; the processes give the parallelism. Pickling a component (spawn)
leaves the weights behind: each process loads the checkpoint itself.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import srsly
from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc, Span
from spacy.util import minibatch, raise_error

from ..calibration.audit import AuditCounter, audited, effective_fraction, promised_bound
from ..checkpoint import CheckpointError, read_config
from ..model import MultiExitModel
from ..policies import ExitPolicy, resolve_policy
from ..prediction import Prediction
from ..runtimes import check_runtime
from ..vocab import AUTOCAST_MODES
from .extensions import register_extensions, replace_task_records, set_result
from .medspacy_support import quiet_medspacy
from .records import make_record
from .scoring import score_component

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
SETTINGS_FILE = "epee_component.json"


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
    rule: str | None = None  # a rule already answered ``none_label`` (e.g. a DDI negative rule): the model skips it


def sentences(doc: Doc) -> list[Span]:
    """The doc's sentences, or the whole doc as one when nothing set sentence boundaries."""
    if len(doc) and not doc.has_annotation("SENT_START"):
        return [doc[:]]
    return list(doc.sents)


def has_content(text: str) -> bool:
    """Whether text has anything to classify (empty, blank and punctuation-only text has not)."""
    return any(ch.isalnum() for ch in text)


def _rebuild(cls: type, name: str, state: dict[str, Any]) -> "EpeeComponent":
    """Unpickle a component (``EpeeComponent.__reduce__``)."""
    component = cls.__new__(cls)
    component.name = name
    component.__dict__.update(state)
    return component


class EpeeComponent(Pipe):
    """Base class: subclasses set ``task`` and implement ``collect``."""

    task: str = "text"  # the checkpoint task the component needs
    older_tasks: tuple[str, ...] = ()  # checkpoint tasks it also reads (kept for checkpoints trained before)
    reports_context = False  # its records carry medSpaCy ConText flags (mentions)

    def __init__(
        self,
        nlp: Language,
        name: str,
        checkpoint: str | None,
        policy: dict[str, Any] | None = None,
        policy_settings: dict[str, Any] | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        autocast: str | None = None,
        runtime: str = "torch",
        batch_tokens: int | None = None,
        min_confidence: float | None = None,
        none_label: str = "none",
        expected_labels: Sequence[str] | None = None,
        trust_unhashed_weights: bool = False,
        audit_fraction: float | None = None,
    ):
        if checkpoint is None:
            raise ValueError(f"component {name!r} needs a checkpoint directory (set its 'checkpoint' setting)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_tokens is not None and batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1 or null, got {batch_tokens}")
        if autocast is not None and autocast not in AUTOCAST_MODES:
            raise ValueError(f"autocast must be null or one of {AUTOCAST_MODES}, got {autocast!r}")
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        self.runtime = check_runtime(runtime, device, autocast)
        if audit_fraction is not None and not 0.0 <= audit_fraction <= 1.0:
            raise ValueError(f"audit_fraction must be in [0, 1], got {audit_fraction}")
        register_extensions()
        quiet_medspacy()
        self.nlp = nlp
        self.name = name
        self.checkpoint = str(checkpoint)
        # Flat settings (spaCy config overrides reach each one; see policies.registry) or a saved
        # policy dict with "name".
        self._policy = resolve_policy(policy_settings, policy)
        self.batch_size = int(batch_size)
        self.batch_tokens = batch_tokens
        self.device = device
        self.autocast = autocast
        self.min_confidence = min_confidence
        self.none_label = none_label
        self.expected_labels = list(expected_labels) if expected_labels else None
        self.trust_unhashed_weights = bool(trust_unhashed_weights)
        # null: audit DEFAULT_AUDIT_FRACTION of the docs when the checkpoint carries a calibration, else none
        self.audit_fraction = audit_fraction
        self._audit: AuditCounter | None = None
        # Loaded on first use: spacy.load builds components from the saved config (the original
        # checkpoint path) and then calls from_disk, which points them at the saved copy.
        self._model: MultiExitModel | None = None
        self._pid = os.getpid()  # the process that built the component (see the module docstring)
        self._order_checked = False

    # ----- model ---------------------------------------------------------------------------
    @property
    def multi_exit_model(self) -> MultiExitModel:
        """The multi-exit model, loaded on first use.

        Not named ``model``: spaCy checks every component against its ``ListenedToComponent``
        protocol with ``hasattr``, which would load (or fail to load) the checkpoint in ``add_pipe``.
        """
        if self._model is None:
            self._model = self._load(self.checkpoint)
        return self._model

    def _load(self, checkpoint: str) -> MultiExitModel:
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"component {self.name!r}: device {self.device!r} asked for but CUDA is not available")
        model = MultiExitModel.from_pretrained(checkpoint, device=self.device,
                                               trust_unhashed_weights=self.trust_unhashed_weights)
        if model.task != self.task and model.task not in self.older_tasks:
            raise ValueError(
                f"component {self.name!r} needs a {self.task!r} checkpoint; {checkpoint!r} is a {model.task!r} one"
            )
        if self.expected_labels and sorted(model.labels) != sorted(self.expected_labels):
            logger.warning("component %r: checkpoint labels %s differ from the expected %s",
                           self.name, model.labels, self.expected_labels)
        model.use_autocast(self.autocast)
        return model.use_runtime(self.runtime)

    @property
    def policy(self) -> ExitPolicy:
        """The exit policy in use: the configured one, else the checkpoint's default."""
        return self._policy if self._policy is not None else self.multi_exit_model.default_policy

    @property
    def audit_fraction_in_use(self) -> float:
        """The share of docs also run to full depth (``calibration.audit``)."""
        return effective_fraction(self.audit_fraction, self.multi_exit_model.config.calibration)

    @property
    def audit(self) -> AuditCounter:
        """Running audit counts and verdict against the checkpoint's promised disagreement bound."""
        if self._audit is None:
            promised, source = promised_bound(self.multi_exit_model.config.calibration, self.policy.to_dict())
            self._audit = AuditCounter(promised, source)
        return self._audit

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

    def pipe(self, stream: Iterable[Doc], batch_size: int = 128) -> Iterator[Doc]:
        """Classify the items of ``batch_size`` docs at a time in one model call; yields every doc.

        A batch that fails is redone doc by doc: each failing doc goes to the error handler
        (``set_error_handler``; spaCy's default re-raises) and the others are yielded, in order.
        """
        handler = self.get_error_handler()
        for batch in minibatch(stream, size=batch_size):
            try:
                self._process(batch)
            except Exception:
                if handler is raise_error:
                    raise
                yield from self._one_by_one(batch, handler)
                continue
            yield from batch

    def _one_by_one(self, batch: Sequence[Doc], handler: Any) -> Iterator[Doc]:
        for doc in batch:
            try:
                self._process([doc])
            except Exception as error:
                handler(self.name, self, [doc], error)
                continue
            yield doc

    def collect(self, doc: Doc) -> list[Item]:
        """The items of ``doc`` to classify, in output order."""
        raise NotImplementedError

    def _process(self, docs: Sequence[Doc]) -> None:
        if os.getpid() != self._pid:
            self._enter_worker_process()
        if not self._order_checked:
            self._check_order()
        per_doc = [self.collect(doc) for doc in docs]
        inputs = [item.input for items in per_doc for item in items if item.rule is None]
        fraction = self.audit_fraction_in_use
        audit = None
        if fraction and inputs:
            chosen = [audited(doc.text, fraction) for doc in docs]  # by document: all its items or none
            audit = [flag for flag, items in zip(chosen, per_doc) for item in items if item.rule is None]
        modelled = iter(self.multi_exit_model.predict(inputs, self.policy, batch_size=self.batch_size,
                                                      max_tokens=self.batch_tokens, audit=audit)
                        if inputs else [])
        predictions = [next(modelled) if item.rule is None else self._by_rule(item.rule)
                       for items in per_doc for item in items]
        for prediction in predictions:
            if prediction.full_label is not None:
                self.audit.add(prediction.label, prediction.full_label, prediction.exit_layer)
        failed = sum(not p.ok for p in predictions)
        if failed:
            logger.warning("component %r: %d of %d inputs could not be classified", self.name, failed, len(predictions))
        position = 0
        for doc, items in zip(docs, per_doc):
            self._write(doc, items, predictions[position : position + len(items)])
            position += len(items)

    def _by_rule(self, rule: str) -> Prediction:
        model = self.multi_exit_model
        return Prediction.by_rule(rule, self.none_label, model.labels.index(self.none_label), model.num_layers)

    def _enter_worker_process(self) -> None:
        """First use in a forked/spawned process: one torch thread (a forked OpenMP pool would hang)."""
        import torch

        torch.set_num_threads(1)
        if self.runtime.startswith("onnx"):
            self._model = None  # ONNX Runtime sessions do not survive a fork: reload (the graphs are cached)
        self._pid = os.getpid()

    def _check_order(self) -> None:
        """Warn once when this component adds mentions after medSpaCy's ConText ran (their flags stay False)."""
        self._order_checked = True
        if not (self.reports_context and self.adds_mentions) or self.name not in self.nlp.pipe_names:
            return
        names = self.nlp.pipe_names
        for earlier in names[: names.index(self.name)]:
            if self.nlp.get_pipe_meta(earlier).factory == "medspacy_context":
                warnings.warn(
                    f"component {self.name!r} runs after medSpaCy ConText ({earlier!r}) and adds mentions "
                    f"ConText never saw: their negated/historical/hypothetical/family flags are all False. "
                    f"Add it before {earlier!r} (nlp.add_pipe(..., before={earlier!r})).", UserWarning, stacklevel=3)
                return

    @property
    def adds_mentions(self) -> bool:
        """Whether the component finds mentions itself (rule matching), so ConText must run after it."""
        mentions = getattr(self, "mentions", None)
        return bool(mentions is not None and mentions.has_rules)

    def score(self, examples: Iterable[Any], **kwargs: Any) -> dict[str, Any]:
        """Scores against gold annotations of ``Example.reference`` (see ``scoring``) for ``nlp.evaluate``."""
        return score_component(examples, self.name, self.labels, self.none_label,
                               doc_level=getattr(self, "scope", None) == "doc")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickling (spawned processes, copies) never carries the weights: each process loads the
        # checkpoint. (``Pipe`` keeps ``name`` in a C slot, outside ``__dict__``.)
        state = dict(self.__dict__)
        state["_model"] = None
        return _rebuild, (type(self), self.name, state)

    def _write(self, doc: Doc, items: Sequence[Item], predictions: Sequence[Prediction]) -> None:
        records = []
        for item, prediction in zip(items, predictions):
            record = make_record(self.name, item.kind, item.start, item.end, prediction, item.clipped, item.head,
                                 item.tail, self._label(prediction))
            records.append(record)
            if item.kind == "doc":
                set_result(doc, record)
                if prediction.ok:
                    doc.cats.update(zip(self.multi_exit_model.labels, record["probs"]))
            elif item.span is not None:
                set_result(item.span, record)
        replace_task_records(doc, self.name, records)

    def _label(self, prediction: Prediction) -> str | None:
        if prediction.ok and self.min_confidence is not None and prediction.confidence < self.min_confidence:
            return self.none_label
        return prediction.label

    # ----- serialization -----------------------------------------------------------------------
    # Settings (policy, batch_size, device, ...) live in the pipeline's config.cfg, which spaCy
    # writes and reads itself, so they can be overridden at spacy.load time. What the component
    # writes, each part skipped when named in ``exclude`` (spaCy's convention): "checkpoint" (a
    # full copy, so loading works offline; from_disk points the component at it) and, for
    # components with mention rules, "rules".
    def to_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> None:
        """Write a full copy of the checkpoint (and the mention rules) into ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if "checkpoint" not in exclude:
            model = self.multi_exit_model
            model.save_pretrained(path / CHECKPOINT_DIR)
            info = {"checkpoint_id": model.checkpoint_id, "task": model.task, "labels": model.labels}
            (path / SETTINGS_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        mentions = getattr(self, "mentions", None)
        if mentions is not None and "rules" not in exclude:
            mentions.to_disk(path)

    def from_disk(self, path: str | Path, *, exclude: Iterable[str] = ()) -> "EpeeComponent":
        """Use the checkpoint copy (and rules) saved in ``path`` instead of the configured ones."""
        path = Path(path)
        if "checkpoint" not in exclude:
            if not (path / CHECKPOINT_DIR).is_dir():
                raise ValueError(f"component {self.name!r}: no saved checkpoint at {str(path / CHECKPOINT_DIR)!r}")
            self.checkpoint = str(path / CHECKPOINT_DIR)
            self._model = None
        mentions = getattr(self, "mentions", None)
        if mentions is not None and "rules" not in exclude:
            mentions.from_disk(path)
        return self

    def to_bytes(self, *, exclude: Iterable[str] = ()) -> bytes:
        """The mention rules as bytes; the checkpoint must be excluded (its weights live on disk)."""
        if "checkpoint" not in exclude:
            raise NotImplementedError(
                f"component {self.name!r} cannot be serialised to bytes: its checkpoint (weights) lives on disk. "
                f"Use nlp.to_disk(path) and spacy.load(path), exclude it (to_bytes(exclude=['checkpoint']): the "
                f"configured checkpoint path is kept), or nlp.to_bytes(exclude=[{self.name!r}]).")
        mentions = getattr(self, "mentions", None)
        data = {"rules": mentions.rules_data()} if mentions is not None and "rules" not in exclude else {}
        return srsly.msgpack_dumps(data)

    def from_bytes(self, data: bytes, *, exclude: Iterable[str] = ()) -> "EpeeComponent":
        """Read what ``to_bytes`` wrote (the checkpoint must be excluded, as there)."""
        if "checkpoint" not in exclude:
            raise NotImplementedError(f"component {self.name!r} cannot load its checkpoint from bytes; use "
                                      "spacy.load(path), or from_bytes(..., exclude=['checkpoint'])")
        loaded = srsly.msgpack_loads(data)
        mentions = getattr(self, "mentions", None)
        if mentions is not None and "rules" not in exclude and "rules" in loaded:
            mentions.set_rules_data(loaded["rules"])
        return self
