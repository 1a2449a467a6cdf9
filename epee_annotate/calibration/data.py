"""Where calibration data came from, without its content: fingerprints, splits, overlap checks.

Calibration and reporting must not share data, and calibration data must be independent of the
dev set that chose the checkpoint's epoch: ``check_split`` refuses an evaluation on the
calibration data, ``dev_overlap`` counts calibration examples that training's dev set held.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np

log = logging.getLogger(__name__)
T = TypeVar("T")
ITEM_HASH_BYTES = 6  # 48-bit salted digests: a chance overlap among 10^5 x 10^5 items is ~4e-5


class SameSplitError(ValueError):
    """Evaluation data overlaps the data the checkpoint was calibrated on; ``part`` describes its calibration part."""

    def __init__(self, message: str, part: dict[str, Any] | None = None):
        super().__init__(message)
        self.part = part or {}


def split_examples(examples: Sequence[T], fraction: float, seed: int = 0) -> tuple[list[T], list[T]]:
    """Deterministic (calibration part, report part); each keeps the original order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"calibration fraction must be in (0, 1), got {fraction}")
    count = len(examples)
    size = int(round(fraction * count))
    if count and not 0 < size < count:
        raise ValueError(f"a fraction of {fraction} leaves one part of {count} examples empty")
    chosen = np.zeros(count, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(count)[:size]] = True
    first = [e for e, c in zip(examples, chosen) if c]
    rest = [e for e, c in zip(examples, chosen) if not c]
    return first, rest


def _item_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return b"s" + item.encode("utf-8")
    if isinstance(item, bytes):
        return b"b" + item
    if hasattr(item, "detach"):  # torch tensor
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        return b"a" + f"{item.dtype}{item.shape}".encode() + np.ascontiguousarray(item).tobytes()
    if hasattr(item, "tobytes") and hasattr(item, "mode") and hasattr(item, "size"):  # PIL image
        return b"i" + f"{item.mode}{item.size}".encode() + item.tobytes()
    if isinstance(item, Path):
        return b"p" + str(item).encode("utf-8")
    return b"j" + json.dumps(item, sort_keys=True, default=str).encode("utf-8")


def inputs_sha256(inputs: Sequence[Any]) -> str:
    """A hash of the ordered inputs (no text is stored, only the digest)."""
    digest = hashlib.sha256()
    for item in inputs:
        data = _item_bytes(item)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _item_digests(inputs: Sequence[Any], salt: bytes) -> set[bytes]:
    return {hashlib.sha256(salt + _item_bytes(item)).digest()[:ITEM_HASH_BYTES] for item in inputs}


def dev_fingerprint(inputs: Sequence[Any]) -> dict[str, Any]:
    """Salted short digests of each dev input, so later calibration data can be checked against it.

    Salted per checkpoint: the digests cannot be matched against another checkpoint's or a
    precomputed table. No input content is stored.
    """
    salt = secrets.token_bytes(8)
    digests = b"".join(sorted(_item_digests(inputs, salt)))
    return {"n": len(inputs), "inputs_sha256": inputs_sha256(inputs), "salt": salt.hex(),
            "item_digests": base64.b64encode(digests).decode("ascii")}


def dev_overlap(fingerprint: dict[str, Any] | None, inputs: Sequence[Any]) -> int | None:
    """How many of ``inputs`` were in the fingerprinted dev set (None: no fingerprint to check)."""
    if not fingerprint or "salt" not in fingerprint:
        return None
    raw = base64.b64decode(fingerprint["item_digests"])
    stored = {raw[i:i + ITEM_HASH_BYTES] for i in range(0, len(raw), ITEM_HASH_BYTES)}
    salt = bytes.fromhex(fingerprint["salt"])
    return sum(hashlib.sha256(salt + _item_bytes(item)).digest()[:ITEM_HASH_BYTES] in stored for item in inputs)


def path_sha256(path: str | Path) -> str:
    """SHA-256 of a file, or of a directory's relative paths and file contents."""
    from ..checkpoint import file_sha256

    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data path {str(path)!r} does not exist")
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode("utf-8") + b"\0" + file_sha256(child).encode())
    return digest.hexdigest()


def data_fingerprint(
    inputs: Sequence[Any],
    *,
    path: str | Path | None = None,
    format: str | None = None,
    split: str | None = None,
    fraction: float | None = None,
    seed: int | None = None,
    part: str = "all",
    holdout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Where a set of examples came from, without any of its content.

    ``holdout`` describes a selection made before the calibration/report split (e.g. the dev
    documents that training held out of the same file); it is part of the data's identity.
    """
    if part not in ("all", "calibration", "report"):
        raise ValueError(f"part must be all, calibration or report, got {part!r}")
    return {
        "path": str(Path(path).resolve()) if path is not None else None,
        "file_sha256": path_sha256(path) if path is not None else None,
        "format": format,
        "split": split,
        "holdout": holdout,
        "fraction": fraction if part != "all" else None,
        "seed": seed if part != "all" else None,
        "part": part,
        "n": len(inputs),
        "inputs_sha256": inputs_sha256(inputs),
    }


def check_split(
    calibration: dict[str, Any] | None, fingerprint: dict[str, Any], allow_same_split: bool = False
) -> str | None:
    """Refuse (or, when allowed, return a warning for) evaluation on the checkpoint's calibration data."""
    cal = (calibration or {}).get("data") or {}
    problem, part = None, None
    if cal.get("inputs_sha256") and cal["inputs_sha256"] == fingerprint.get("inputs_sha256"):
        problem = "the evaluation examples are exactly the examples this checkpoint was calibrated on"
    elif cal.get("file_sha256") and cal.get("file_sha256") == fingerprint.get("file_sha256") \
            and cal.get("split") == fingerprint.get("split"):
        complementary = (
            {cal.get("part"), fingerprint.get("part")} == {"calibration", "report"}
            and all(cal.get(key) == fingerprint.get(key) for key in ("fraction", "seed", "holdout"))
        )
        if not complementary:
            problem = "this checkpoint was calibrated on the same data file"
            if cal.get("part") == "calibration":
                part = {"fraction": cal.get("fraction"), "seed": cal.get("seed"), **(cal.get("holdout") or {})}
                problem += (f" (its calibration part: fraction {part['fraction']}, seed {part['seed']}"
                            + (f", dev fraction {part['dev_fraction']}, dev seed {part['dev_seed']}"
                               if cal.get("holdout") else "") + "); evaluate on the other part of that split")
    if problem is None:
        return None
    if not allow_same_split:
        raise SameSplitError(f"{problem}. Numbers on calibration data are optimistic; use held-out data "
                             "(or allow the same split explicitly)", part)
    message = f"WARNING: {problem}; the reported numbers are optimistic (calibration data reused)"
    log.warning(message)
    return message
