"""Job identity: a fingerprint of everything that defines a job's rows, so a resume never mixes two jobs.

The fingerprint has named parts: ``inputs`` (every input file's location, size and modification
time), ``models`` (each checkpoint's identity, its weights hash included, labels and policy) and
``options`` (the settings that change rows: policy, columns, scope, include_text, format,
encoding, partitioning ...). Settings that change only speed or layout (actors, batch sizes,
rows per file, progress) are not part of it. It holds paths and settings, never note text.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

from .. import storage
from .errors import SettingError

IDENTITY_FILE = "job.json"


class JobChangedError(SettingError):
    """A resumed job differs from the interrupted one it would continue."""


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def input_listing(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Location, size and modification time (ns) of each input file; local paths made absolute."""
    listing = []
    for path in paths:
        if not storage.is_uri(path):
            try:
                info = os.stat(path)
                listing.append({"path": os.path.abspath(path), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns})
            except OSError:  # unreadable: its error row is part of the job; its absence is what we record
                listing.append({"path": os.path.abspath(path), "bytes": None, "mtime_ns": None})
            continue
        fs, inner = storage.resolve(path)
        info = fs.get_file_info(inner)
        listing.append({"path": path, "bytes": info.size, "mtime_ns": info.mtime_ns})
    return listing


def listed_bytes(identity: dict[str, Any], paths: Sequence[str]) -> int:
    """The listed size of ``paths`` (the readable inputs) in ``identity``'s listing, for the progress total."""
    wanted = {p if storage.is_uri(p) else os.path.abspath(p) for p in paths}
    return sum(entry["bytes"] or 0 for entry in identity["parts"]["inputs"] if entry["path"] in wanted)


def fingerprint(inputs: Sequence[str], models: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The job's identity: its parts plus one digest of them all."""
    parts = {"inputs": input_listing(inputs), "models": models, "options": options}
    return {"digest": _digest(parts), "parts": parts}


def summary(identity: dict[str, Any]) -> dict[str, Any]:
    """What the manifest records: the digest and one digest per part (the full listing stays out)."""
    return {"digest": identity["digest"], "parts": {k: _digest(v) for k, v in identity["parts"].items()}}


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 5) -> list[str]:
    """What differs between two fingerprints, one short phrase per difference (paths and settings only)."""
    if old.get("digest") == new.get("digest"):
        return []
    before, after = old.get("parts", {}), new.get("parts", {})
    found: list[str] = []
    old_files = {f["path"]: f for f in before.get("inputs", [])}
    new_files = {f["path"]: f for f in after.get("inputs", [])}
    added = sorted(set(new_files) - set(old_files))
    removed = sorted(set(old_files) - set(new_files))
    changed = sorted(p for p in set(old_files) & set(new_files) if old_files[p] != new_files[p])
    for what, paths in (("added", added), ("removed", removed), ("changed (size or time)", changed)):
        if paths:
            shown = ", ".join(os.path.basename(p.rstrip("/")) for p in paths[:limit])
            found.append(f"input files {what}: {len(paths)} ({shown}{', ...' if len(paths) > limit else ''})")
    if _digest(before.get("models")) != _digest(after.get("models")):
        found.append(_models_change(before.get("models"), after.get("models")))
    old_opts, new_opts = before.get("options", {}), after.get("options", {})
    for key in sorted(set(old_opts) | set(new_opts)):
        if _digest(old_opts.get(key)) != _digest(new_opts.get(key)):
            found.append(f"{key}: {_short(old_opts.get(key))} -> {_short(new_opts.get(key))}")
    return found or ["the job's fingerprint"]


def _models_change(old: Any, new: Any) -> str:
    """``models: a@hash -> b@hash``, or (same checkpoints) which of their settings differ."""
    if _describe_models(old) != _describe_models(new) or not (isinstance(old, list) and isinstance(new, list)):
        return f"models: {_describe_models(old)} -> {_describe_models(new)}"
    keys = sorted({k for a, b in zip(old, new) for k in set(a) | set(b) if _digest(a.get(k)) != _digest(b.get(k))})
    return f"models {_describe_models(new)}: {', '.join(keys)} changed"


def _describe_models(models: Any) -> str:
    if isinstance(models, list):
        return ", ".join(str(m.get("checkpoint_id", "?")) if isinstance(m, dict) else str(m) for m in models)
    if isinstance(models, dict):
        return str(models.get("checkpoint_id", "?"))
    return _short(models)


def _short(value: Any, width: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def check_same_job(stored: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """``JobChangedError`` naming what differs when ``stored`` (the interrupted job's) is another job."""
    if stored is None:
        return
    found = differences(stored, current)
    if found:
        raise JobChangedError("the interrupted job had other settings, so resuming would mix two jobs in one "
                              f"output; differs: {'; '.join(found)}. Run it with its own settings, or start "
                              "again", "resume", "overwrite")


def read_identity(location: str) -> dict[str, Any] | None:
    """The fingerprint stored at ``location`` (a file), or None."""
    fs, path = storage.resolve(location)
    try:
        with fs.open_input_stream(path) as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None


def write_identity(location: str, identity: dict[str, Any]) -> None:
    fs, path = storage.resolve(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as handle:
        handle.write((json.dumps(identity, sort_keys=True, default=str) + "\n").encode())
