"""Checkpoint directory format.

A checkpoint is a directory:

- ``epee_config.json``: task, label names, number of exits, pooling, default policy,
  calibration record, training metadata, package version, weights hash;
- ``config.json``: the backbone's Hugging Face config;
- ``model.safetensors``: backbone + exit-head weights (safetensors only; never pickle);
- tokenizer files (text) or ``preprocessor_config.json`` (images).

Saving records the SHA-256 of the weights in ``epee_config.json``; every load checks the weights
against it (``verify_weights``, once per load, local checkpoints included). A checkpoint without a
recorded hash is refused unless the caller opts in (``trust_unhashed_weights``).

The directory may also be a URI (``s3://``, ``gs://``, ...): ``local_checkpoint`` downloads it
once per process into a temp dir that a killed process's successor removes (``filesystem.fetch``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn
from safetensors.torch import load_model, save_model

from . import __version__

CONFIG_NAME = "epee_config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or does not fit the model."""


class UnhashedWeightsError(CheckpointError):
    """The checkpoint records no weights hash and the caller did not opt in; ``settings`` names the opt-in."""

    settings = ("trust_unhashed_weights",)


@dataclass
class MultiExitConfig:
    """Everything besides weights that defines a multi-exit model."""

    task: str
    labels: list[str]
    model_type: str
    num_layers: int
    base_model: str = ""
    max_length: int = 256
    head_hidden_size: int = 0
    dropout: float = 0.1
    pool_width: int = 1
    pooling: str = "positions"  # backbones.POOLINGS: "cls" / "mean" (text encoders) or "positions" (task positions)
    default_policy: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    package_version: str = __version__
    weights_sha256: str = ""

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MultiExitConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_weights(module: nn.Module, config: MultiExitConfig, directory: Path) -> None:
    """Write weights, then the config that records their hash."""
    directory.mkdir(parents=True, exist_ok=True)
    save_model(module, str(directory / WEIGHTS_NAME))
    config.weights_sha256 = file_sha256(directory / WEIGHTS_NAME)
    write_config(config, directory)


def write_config(config: MultiExitConfig, directory: Path) -> None:
    (directory / CONFIG_NAME).write_text(config.to_json() + "\n")


def read_config(directory: str | Path) -> MultiExitConfig:
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise CheckpointError(f"{str(path)!r} is not an epee-annotate checkpoint: {CONFIG_NAME} is missing")
    return MultiExitConfig.from_dict(json.loads(config_file.read_text()))


def read_weights(module: nn.Module, directory: Path) -> None:
    """Load safetensors weights strictly; name the keys that do not fit."""
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{WEIGHTS_NAME} is missing from checkpoint {str(directory)!r}")
    try:
        missing, unexpected = load_model(module, str(weights), strict=False)
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"weights in {str(directory)!r} do not fit the model: {error}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {str(directory)!r} do not fit the model: missing keys {sorted(missing)[:20]}, "
            f"unexpected keys {sorted(unexpected)[:20]}"
        )


def verify_weights(directory: Path, config: MultiExitConfig, trust_unhashed_weights: bool = False,
                   source: str | Path | None = None) -> str:
    """The SHA-256 of the weights as read now, checked against the one ``config`` records.

    A recorded hash that differs is refused; no recorded hash is refused unless ``trust_unhashed_weights``.
    ``source``: the location named in messages (a URI the directory was downloaded from).
    """
    weights = directory / WEIGHTS_NAME
    where = str(source if source is not None else directory)
    if not weights.is_file():
        raise CheckpointError(f"{WEIGHTS_NAME} is missing from checkpoint {where!r}")
    actual = file_sha256(weights)
    if not config.weights_sha256:
        if not trust_unhashed_weights:
            raise UnhashedWeightsError(f"checkpoint {where!r} records no weights_sha256 in {CONFIG_NAME}, so its "
                                       "weights cannot be checked; re-save it, or trust these weights explicitly")
    elif actual != config.weights_sha256:
        raise CheckpointError(f"the weights in {where!r} do not match the SHA-256 in {CONFIG_NAME} "
                              "(changed or corrupted since they were saved)")
    return actual


def local_checkpoint(location: str | Path) -> Path:
    """A local checkpoint directory: ``location`` itself, or a download of a URI (checked by the load)."""
    from .filesystem import fetch, is_uri

    if not is_uri(location):
        return Path(location)
    try:
        return Path(fetch(str(location)))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(location)!r} does not exist") from None
