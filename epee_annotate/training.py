"""Joint training of every exit of a multi-exit model.

The loss averages the exits' cross-entropies with weights ``w_m``:
``L = sum_m w_m * CE_m / sum_m w_m``, with ``w_m = m`` ("linear", deeper exits count more,
as in PABEE), 1 ("uniform"), or given weights. With ``distill``,
every earlier exit also learns from the last exit's softened output:
``loss_m = (1 - alpha) * CE_m + alpha * T^2 * KL(p_M^T || p_m^T)`` (teacher detached).

Each epoch ends with an evaluation of every exit on the dev set. The best epoch by the dev
metric of the LAST exit is saved as a checkpoint in ``out_dir`` (``save_pretrained``, with
the run recorded in ``config.training``); while the run goes on, the last epoch's weights,
optimizer and scheduler are kept in ``out_dir/training_state/`` (safetensors for tensors, JSON
for the rest; never pickle) so ``train(..., resume=True)`` continues an interrupted run after
its last finished epoch. A finished run deletes that state (it is ~3x the weights) unless
``keep_state=True``, which lets a later ``resume`` extend it to more epochs. Every epoch
re-seeds torch, numpy and random with ``seed + epoch``, so an interrupted and resumed run
sees the same batches and dropout as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file, save_model
from transformers import get_linear_schedule_with_warmup

from .calibration.data import dev_fingerprint
from .checkpoint import CONFIG_NAME, read_config, read_weights, verify_weights, write_config
from .data.examples import Example
from .inputs import EncodedRow, InputError
from .metrics import classification_metrics
from .model import MultiExitModel
from .progress import progress
from .vocab import METRICS

logger = logging.getLogger(__name__)

STATE_DIR = "training_state"
# Settings that may change when resuming; any other change would make the resumed run a different run.
_RESUMABLE_CHANGES = {"epochs", "device", "eval_batch_size", "progress"}
_CHUNK_BATCHES = 50  # length buckets are formed inside shuffled chunks of this many batches


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    exit_weights: str | list[float] = "linear"  # "linear" (w_m = m), "uniform", or one weight per exit
    class_weights: str | list[float] | None = None  # None, "balanced" (n / (K * n_c), as scikit-learn), or per label
    distill: bool = False
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    metric: str = "macro_f1"  # dev metric of the last exit that picks the best epoch
    early_stopping: int | None = None  # stop after this many epochs without a better dev metric (None: never)
    negative_label: str = "none"  # the negative class for micro_f1_positive (DDI)
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    eval_batch_size: int = 64
    progress: bool = True  # tqdm bars; False: a log line per epoch and every ~30 s inside one

    def check(self) -> None:
        """Clear errors for out-of-range settings."""
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError("lr and max_grad_norm must be > 0 and weight_decay >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ValueError(f"early_stopping must be >= 1 epochs (or None), got {self.early_stopping}")
        if self.distill and (self.distill_temperature <= 0 or not 0 <= self.distill_alpha <= 1):
            raise ValueError("distill_temperature must be > 0 and distill_alpha in [0, 1]")


@dataclass
class TrainResult:
    """What a run produced: the best epoch and every epoch's metrics."""

    out_dir: Path
    metric: str
    best_epoch: int
    best_score: float
    epochs: int
    dev_metrics: list[dict[str, float]]  # per exit, at the best epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False  # early stopping ended the run before ``epochs``


def run_environment(device: torch.device) -> dict[str, Any]:
    """What a rerun needs to match: torch threads, device and library versions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("epee-annotate", "torch", "transformers", "tokenizers", "numpy", "safetensors"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "device": str(device), "versions": versions}


# ----- loss ---------------------------------------------------------------------------------
def exit_weight_vector(spec: str | Sequence[float], num_layers: int) -> torch.Tensor:
    """The per-exit loss weights w_1..w_M."""
    if spec == "linear":
        return torch.arange(1, num_layers + 1, dtype=torch.float32)
    if spec == "uniform":
        return torch.ones(num_layers)
    if isinstance(spec, str):
        raise ValueError(f"exit_weights must be 'linear', 'uniform' or a list of numbers, got {spec!r}")
    weights = torch.tensor([float(w) for w in spec], dtype=torch.float32)
    if weights.numel() != num_layers:
        raise ValueError(f"exit_weights has {weights.numel()} values but the model has {num_layers} exits")
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("exit_weights must be >= 0 with a positive sum")
    return weights


def class_weight_vector(spec: str | Sequence[float] | None, label_ids: Sequence[int], num_labels: int) -> torch.Tensor | None:
    """Cross-entropy class weights: None, "balanced" (n / (K * n_c), K = classes present; absent ones get 0), or given."""
    if spec is None:
        return None
    if spec == "balanced":
        counts = torch.bincount(torch.as_tensor(list(label_ids), dtype=torch.long), minlength=num_labels).float()
        weights = torch.zeros(num_labels)
        present = counts > 0
        weights[present] = counts.sum() / (int(present.sum()) * counts[present])
        return weights
    if isinstance(spec, str):
        raise ValueError(f"class_weights must be None, 'balanced' or a list of numbers, got {spec!r}")
    weights = torch.tensor([float(w) for w in spec], dtype=torch.float32)
    if weights.numel() != num_labels or (weights < 0).any():
        raise ValueError(f"class_weights needs {num_labels} non-negative values, got {list(spec)}")
    return weights


def multi_exit_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    exit_weights: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    distill_alpha: float = 0.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Weighted mean over exits of each exit's loss; ``logits`` is (M, B, K), ``targets`` (B,)."""
    weights = exit_weights.to(logits.device)
    cw = class_weights.to(logits.device) if class_weights is not None else None
    per_exit = torch.stack([F.cross_entropy(z, targets, weight=cw) for z in logits])
    if distill_alpha > 0 and logits.size(0) > 1:
        teacher = F.softmax(logits[-1].detach() / temperature, dim=-1)
        kl = torch.stack([
            F.kl_div(F.log_softmax(z / temperature, dim=-1), teacher, reduction="batchmean") for z in logits[:-1]
        ]) * temperature**2
        per_exit = torch.cat([(1 - distill_alpha) * per_exit[:-1] + distill_alpha * kl, per_exit[-1:]])
    return (weights * per_exit).sum() / weights.sum()


# ----- data ---------------------------------------------------------------------------------
def label_ids(labels: Sequence[str], examples: Sequence[Example], name: str) -> list[int]:
    """Map example labels to the model's ids; unknown labels are one clear error."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = Counter(e.label for e in examples if e.label not in index)
    if unknown:
        raise ValueError(f"{name} data has label(s) the model does not know: {dict(unknown)}; model labels: {list(labels)}")
    return [index[e.label] for e in examples]


def encode_examples(model: MultiExitModel, examples: Sequence[Example], name: str) -> list[EncodedRow]:
    """Encode every input, failing on the first bad one by position and id (never by content)."""
    rows = model.encode([e.input for e in examples])
    for i, row in enumerate(rows):
        if isinstance(row, InputError):
            ident = f" (id {examples[i].id})" if examples[i].id is not None else ""
            raise ValueError(f"{name} example {i}{ident} cannot be encoded: {row}")
    return rows  # type: ignore[return-value]


def epoch_batches(model: MultiExitModel, rows: Sequence[Any], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: length buckets inside shuffled chunks, batch order shuffled."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    chunk = batch_size * _CHUNK_BATCHES
    groups = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        groups += [[part[j] for j in group] for group in model.batches([rows[i] for i in part], batch_size)]
    rng.shuffle(groups)
    return groups


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ----- evaluation -------------------------------------------------------------------------
def evaluate_exits(
    model: MultiExitModel,
    examples: Sequence[Example],
    batch_size: int = 64,
    negative_label: str | None = "none",
    progress: bool = False,
) -> list[dict[str, float]]:
    """accuracy, macro-F1 (and positive micro-F1 when the negative label exists) of every exit."""
    targets = torch.tensor(label_ids(model.labels, examples, "dev"))
    probs = model.exit_probs([e.input for e in examples], batch_size=batch_size, progress=progress)
    negative = model.labels.index(negative_label) if negative_label in model.labels else None
    return [classification_metrics(targets, probs[:, m].argmax(-1), negative, num_labels=len(model.labels))
            for m in range(model.num_layers)]


# ----- state on disk (no pickle) ------------------------------------------------------------
def _to_json(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Tensors go to ``tensors`` (saved with safetensors); the rest becomes tagged JSON."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _to_json(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        tag = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {tag: [_to_json(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in the training state")


def _from_json(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _from_json(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_from_json(v, tensors) for v in obj["__tuple__"])
        if "__list__" in obj:
            return [_from_json(v, tensors) for v in obj["__list__"]]
    return obj


def save_state(directory: Path, model: MultiExitModel, optimizer, scheduler, info: dict[str, Any]) -> None:
    """Write weights, optimizer and scheduler state and run info; state.json last marks it complete."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "state.json").unlink(missing_ok=True)
    save_model(model, str(directory / "model.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    rest = {"optimizer": _to_json(optimizer.state_dict(), "optimizer", tensors),
            "scheduler": _to_json(scheduler.state_dict(), "scheduler", tensors)}
    save_file(tensors, str(directory / "optimizer.safetensors"))
    (directory / "optimizer.json").write_text(json.dumps(rest))
    (directory / "state.json").write_text(json.dumps(info, indent=2))


def load_state(directory: Path, model: MultiExitModel, optimizer, scheduler) -> dict[str, Any]:
    """Restore what ``save_state`` wrote; returns the run info."""
    info_file = directory / "state.json"
    if not info_file.is_file():
        raise ValueError(f"nothing to resume: {str(directory)!r} holds no complete training state (a finished "
                         "run keeps it only when trained with keep_state / --keep-state)")
    read_weights(model, directory)
    tensors = load_file(str(directory / "optimizer.safetensors"))
    rest = {k: _from_json(v, tensors) for k, v in json.loads((directory / "optimizer.json").read_text()).items()}
    optimizer.load_state_dict(rest["optimizer"])
    scheduler.load_state_dict(rest["scheduler"])
    return json.loads(info_file.read_text())


def _check_resume(info: dict[str, Any], model: MultiExitModel, config: TrainConfig, sizes: dict[str, int]) -> None:
    if info["labels"] != model.labels or info["task"] != model.task:
        raise ValueError(f"cannot resume: the saved run has task {info['task']!r} and labels {info['labels']}")
    now = json.loads(json.dumps(asdict(config)))  # as stored: tuples become lists
    changed = sorted(k for k, v in now.items() if k not in _RESUMABLE_CHANGES and info["config"].get(k) != v)
    if changed:
        raise ValueError(f"cannot resume with different settings: {changed} differ from the saved run")
    if info["sizes"] != sizes:
        raise ValueError(f"cannot resume on different data: saved sizes {info['sizes']}, now {sizes}")


# ----- training loop ------------------------------------------------------------------------
def _optimizer(model: MultiExitModel, config: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on biases and LayerNorm weights (the 1-D parameters), as usual for transformers.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def train(
    model: MultiExitModel,
    train_examples: Sequence[Example],
    dev_examples: Sequence[Example],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    keep_state: bool = False,
) -> TrainResult:
    """Train all exits jointly; keep the best epoch (dev metric of the last exit) in ``out_dir``.

    On return ``model`` holds the best epoch's weights. ``keep_state`` keeps ``training_state/``
    (optimizer state for a later ``resume``) after the run; by default it is deleted.
    """
    config = config or TrainConfig()
    config.check()
    out = Path(out_dir)
    state_dir = out / STATE_DIR
    if not train_examples or not dev_examples:
        raise ValueError("training needs non-empty train and dev examples")
    if not resume and not overwrite and ((out / CONFIG_NAME).exists() or state_dir.exists()):
        raise ValueError(f"{str(out)!r} already holds a training run; resume it, overwrite it, or pick another folder")
    if config.metric == "micro_f1_positive" and config.negative_label not in model.labels:
        raise ValueError(f"metric micro_f1_positive needs the negative label {config.negative_label!r} among the labels")
    train_y = label_ids(model.labels, train_examples, "training")
    label_ids(model.labels, dev_examples, "dev")
    exit_weights = exit_weight_vector(config.exit_weights, model.num_layers)
    class_weights = class_weight_vector(config.class_weights, train_y, len(model.labels))
    device = resolve_device(config.device)
    model.to(device)
    lazy_images = model.task == "image"  # images are decoded per batch: all pixels at once may not fit in memory
    # Images: length-0 placeholders so model.batches can group them; pixels are made per batch.
    rows = [EncodedRow(0, False)] * len(train_examples) if lazy_images else encode_examples(
        model, train_examples, "training")
    if not lazy_images:
        encode_examples(model, dev_examples, "dev")  # fail before the first epoch, not after it
    sizes = {"train": len(train_examples), "dev": len(dev_examples)}
    steps_per_epoch = math.ceil(len(train_examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = _optimizer(model, config)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    history: list[dict[str, Any]] = []
    best_epoch, best_score, start = 0, -math.inf, 1
    if resume:
        info = load_state(state_dir, model, optimizer, scheduler)
        _check_resume(info, model, config, sizes)
        history, best_epoch, best_score = info["history"], info["best_epoch"], info["best_score"]
        start = info["epoch"] + 1
        # The scheduler keeps this run's schedule (a longer run re-plans the decay over the new
        # total) and the saved step count; put the optimizer's rate on that schedule.
        for group, base_lr, schedule in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * schedule(scheduler.last_epoch)
        logger.info("resuming after epoch %d of %d", start - 1, config.epochs)
    base_training = {
        "config": asdict(config), "seed": config.seed, "sizes": sizes,
        "train_label_counts": dict(sorted(Counter(e.label for e in train_examples).items())),
        "dev_label_counts": dict(sorted(Counter(e.label for e in dev_examples).items())),
        "exit_weights": exit_weights.tolist(), "environment": run_environment(device),
        # Calibration refuses data that overlaps this dev set: it chose the best epoch.
        "dev_fingerprint": dev_fingerprint([e.input for e in dev_examples]),
    }

    run_start = time.monotonic()
    stopped_early = False
    for epoch in range(start, config.epochs + 1):
        if config.early_stopping is not None and history and epoch - 1 - best_epoch >= config.early_stopping:
            stopped_early = True
            logger.info("early stopping: no better dev %s of the last exit for %d epochs (best: epoch %d)",
                        config.metric, config.early_stopping, best_epoch)
            break
        epoch_start = time.monotonic()
        seed_everything(config.seed + epoch)
        model.train()
        batches = epoch_batches(model, rows, config.batch_size, random.Random(config.seed + epoch))
        total_loss, correct, seen = 0.0, 0, 0
        for group in progress(batches, f"epoch {epoch}/{config.epochs}", "batch", config.progress, logger=logger):
            batch_rows = encode_examples(model, [train_examples[i] for i in group], "training") if lazy_images else [
                rows[i] for i in group
            ]
            targets = torch.tensor([train_y[i] for i in group], device=device)
            logits = model(model.collate(batch_rows))
            loss = multi_exit_loss(logits, targets, exit_weights, class_weights,
                                   config.distill_alpha if config.distill else 0.0, config.distill_temperature)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total_loss += float(loss.detach()) * len(group)
            correct += int((logits[-1].argmax(-1) == targets).sum())
            seen += len(group)
        dev = evaluate_exits(model, dev_examples, config.eval_batch_size, config.negative_label, config.progress)
        score = dev[-1][config.metric]
        history.append({"epoch": epoch, "train_loss": total_loss / seen, "train_accuracy": correct / seen,
                        "lr": scheduler.get_last_lr()[0], "dev": dev})
        now = time.monotonic()
        logger.info("epoch %d/%d: train loss %.4f, dev %s of the last exit %.4f (%.0f s; %.0f s in all)", epoch,
                    config.epochs, total_loss / seen, config.metric, score, now - epoch_start, now - run_start)
        if score > best_score:
            best_epoch, best_score = epoch, score
            model.config.training = {**base_training, "epochs": epoch, "best_epoch": epoch, "metric": config.metric,
                                     "best_score": score, "dev_metrics": dev, "history": history}
            model.save_pretrained(out)
        save_state(state_dir, model, optimizer, scheduler, {
            "epoch": epoch, "task": model.task, "labels": model.labels, "config": asdict(config), "sizes": sizes,
            "history": history, "best_epoch": best_epoch, "best_score": best_score,
        })

    # Record the finished run in the best checkpoint's config, then hand back the best weights.
    saved = read_config(out)
    dev_best = history[best_epoch - 1]["dev"]
    saved.training = {**base_training, "epochs": len(history), "planned_epochs": config.epochs,
                      "stopped_early": stopped_early, "best_epoch": best_epoch, "metric": config.metric,
                      "best_score": best_score, "dev_metrics": dev_best, "history": history}
    write_config(saved, out)
    read_weights(model, out)
    model.config.training, model.config.weights_sha256 = saved.training, saved.weights_sha256
    model.weights_sha256 = verify_weights(out, saved)
    if not keep_state:  # optimizer state is ~2x the weights; only a later --resume needs it
        shutil.rmtree(state_dir, ignore_errors=True)
    model.eval()
    return TrainResult(out, config.metric, best_epoch, best_score, len(history), dev_best, history, stopped_early)
