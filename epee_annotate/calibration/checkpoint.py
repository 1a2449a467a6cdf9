"""Calibrate a saved checkpoint and store the chosen policy as its default."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from ..evaluation import ExitTable, checkpoint_metric, find_negative_label
from .choose import calibrate
from .data import dev_overlap, inputs_sha256
from .goal import CalibrationGoal, DevOverlapError
from .result import CalibrationResult

log = logging.getLogger(__name__)


def checkpoint_exit_accuracies(model) -> tuple[float, ...] | None:
    """Each exit's accuracy on training's dev set, as recorded by ``train`` (None without a record)."""
    dev = (model.config.training or {}).get("dev_metrics")
    return tuple(float(m["accuracy"]) for m in dev) if dev else None


def check_dev_overlap(model, inputs: Sequence[Any], goal: CalibrationGoal, allow: bool) -> str | None:
    """Refuse calibration data that training's dev set held (it chose the epoch); a note when allowed."""
    overlap = dev_overlap((model.config.training or {}).get("dev_fingerprint"), inputs)
    if not overlap:
        return None
    message = (f"{overlap} of the {len(inputs)} calibration examples were in the dev set that chose this "
               "checkpoint's best epoch; calibration data must be independent of model selection, or the "
               "guarantee does not hold")
    if not (allow or goal.in_sample):
        raise DevOverlapError(message + ". Calibrate on data training never saw")
    note = f"WARNING: {message} (overlap allowed; the result is recorded as such)"
    log.warning("%s", note)
    return note


def calibrate_checkpoint(
    directory: str | Path,
    inputs: Sequence[Any],
    gold: Sequence[Any],
    goal: CalibrationGoal,
    *,
    data: dict[str, Any] | None = None,
    taus: Sequence[float] | None = None,
    patiences: Sequence[int] | None = None,
    negative_label: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
    model=None,
    save: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    family: str = "epee",
    allow_dev_overlap: bool = False,
) -> CalibrationResult:
    """Calibrate the checkpoint in ``directory`` and store the policy as its default.

    With ``out``, the checkpoint is copied there (without any training state) and the copy is
    calibrated; ``directory`` is left as it was.
    """
    from ..model import MultiExitModel

    if model is None:
        model = MultiExitModel.from_pretrained(directory)
    overlap_note = check_dev_overlap(model, inputs, goal, allow_dev_overlap)
    if negative_label is None and model.task == "relation":
        negative_label = find_negative_label(model.labels)
    table = ExitTable.from_model(model, inputs, gold, negative_label=negative_label, batch_size=batch_size,
                                 progress=progress)
    result = calibrate(table, goal, taus, patiences, family, training_metric=checkpoint_metric(model),
                       exit_accuracies=checkpoint_exit_accuracies(model))
    if overlap_note:
        result.notes.insert(0, overlap_note)
    result.data = dict(data or {})
    result.data.setdefault("inputs_sha256", inputs_sha256(inputs))
    result.data.setdefault("n", len(inputs))
    if save:
        target = Path(directory) if out is None else copy_checkpoint(directory, out, overwrite)
        model.set_default_policy(result.policy, calibration=result.to_dict())
        model.save_config(target)
    return result


def copy_checkpoint(source: str | Path, target: str | Path, overwrite: bool = False) -> Path:
    """Copy a checkpoint directory (weights, configs, preprocessor; never ``training_state/``)."""
    import shutil

    from ..training import STATE_DIR

    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        return target
    if target.exists():
        if not overwrite and any(target.iterdir()):
            raise FileExistsError(f"{str(target)!r} already exists and is not empty; pick another folder")
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(STATE_DIR))
    return target
