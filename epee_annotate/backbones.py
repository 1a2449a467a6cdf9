"""Backbones: drive a Hugging Face transformer one layer at a time.

Each adapter exposes the same four steps, so the early-exit engine never needs to know
which architecture it runs: ``embed`` (inputs -> hidden states and masks), ``run_layer``
(one transformer layer), ``features`` (pooled representation for the exit head at that
layer) and ``LayerState.select`` (drop the rows that exited). Layers are reached through the
documented module attributes of each model class (``encoder.layer``, ``h``, ``layers``...),
never through private helpers that change between transformers releases.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' warnings for the duration (restores the previous level)."""
    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


class UnsupportedArchitectureError(ValueError):
    """The backbone's ``model_type`` has no multi-exit adapter."""


class WeightMismatchError(ValueError):
    """Pretrained weights do not fit the backbone (missing, unexpected or mis-shaped keys)."""


@dataclass
class LayerState:
    """Hidden states of the rows still running, plus what pooling and attention need."""

    hidden: torch.Tensor  # (B, T, H)
    attention_mask: torch.Tensor | None  # 4D mask in the model's attention format, or None
    token_mask: torch.Tensor | None  # (B, T) 1 for real tokens; None for images
    pool_index: torch.Tensor  # (B, P): token positions pooled for the exit heads
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-row tensors (position ids)

    def select(self, rows: torch.Tensor) -> "LayerState":
        """Keep only ``rows`` (a LongTensor of batch indices)."""
        mask = self.attention_mask[rows] if self.attention_mask is not None else None
        token_mask = self.token_mask[rows] if self.token_mask is not None else None
        extras = {k: v[rows] for k, v in self.extras.items()}
        return replace(
            self,
            hidden=self.hidden[rows],
            attention_mask=mask,
            token_mask=token_mask,
            pool_index=self.pool_index[rows],
            extras=extras,
        )


def gather_positions(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Hidden states at ``positions`` (B, P): a (B, P, H) tensor."""
    index = positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))
    return hidden.gather(1, index)


# How exit heads pool: "cls" (first token of a text encoder), "mean" (mean over real tokens),
# "positions" (the task's positions: entity markers, a decoder's last token, ViT's CLS).
POOLINGS = ("cls", "mean", "positions")


class Backbone(nn.Module):
    """A pretrained transformer driven layer by layer. Subclasses name the modules."""

    model_types: tuple[str, ...] = ()
    is_causal = False
    modality = "text"

    def __init__(self, model: PreTrainedModel, pooling: str = "positions"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.model = model
        self.pooling = pooling

    @property
    def mean_pooling(self) -> bool:
        """Mean over real tokens (text encoders pretrained that way, e.g. MiniLM) instead of pooled positions."""
        return self.pooling == "mean"

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def embed(self, batch: dict[str, torch.Tensor]) -> LayerState:
        raise NotImplementedError

    def run_layer(self, index: int, state: LayerState) -> LayerState:
        """Run layer ``index`` (0-based) on ``state``."""
        hidden = self.layers[index](state.hidden, state.attention_mask)
        return replace(state, hidden=hidden)

    def features(self, index: int, state: LayerState) -> torch.Tensor:
        """Pooled features (B, P * H) for the exit head after layer ``index`` (0-based)."""
        if self.mean_pooling:
            weights = state.token_mask.unsqueeze(-1).to(state.hidden.dtype)
            return (self.final_norm(state.hidden) * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        # Final norms are per token, so normalising only the pooled positions gives the same values.
        return self.final_norm(gather_positions(state.hidden, state.pool_index)).flatten(1)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's last norm, applied before every exit (identity for post-LN encoders)."""
        return hidden

    def forward(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Pooled features after every layer (training and full-depth evaluation)."""
        state = self.embed(batch)
        outputs = []
        for index in range(self.num_layers):
            state = self.run_layer(index, state)
            outputs.append(self.features(index, state))
        return outputs

    def _text_state(self, batch: dict[str, torch.Tensor], hidden: torch.Tensor, causal: bool) -> LayerState:
        token_mask = batch["attention_mask"]
        make_mask = create_causal_mask if causal else create_bidirectional_mask
        kwargs = {"past_key_values": None} if causal else {}
        attention_mask = make_mask(config=self.config, inputs_embeds=hidden, attention_mask=token_mask, **kwargs)
        return LayerState(hidden, attention_mask, token_mask, batch["pool_index"])


class BertBackbone(Backbone):
    """BERT, RoBERTa and other ``embeddings`` + ``encoder.layer`` encoders."""

    model_types = ("bert", "roberta", "xlm-roberta", "camembert")

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def embed(self, batch: dict[str, torch.Tensor]) -> LayerState:
        kwargs = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
        hidden = self.model.embeddings(input_ids=batch["input_ids"], **kwargs)
        return self._text_state(batch, hidden, causal=False)


class DistilBertBackbone(Backbone):
    model_types = ("distilbert",)

    @property
    def num_layers(self) -> int:
        return self.config.n_layers

    @property
    def hidden_size(self) -> int:
        return self.config.dim

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.transformer.layer

    def embed(self, batch: dict[str, torch.Tensor]) -> LayerState:
        hidden = self.model.embeddings(batch["input_ids"])
        return self._text_state(batch, hidden, causal=False)


class AlbertBackbone(BertBackbone):
    """ALBERT shares layer weights: layer ``i`` is an application of its layer group."""

    model_types = ("albert",)

    def embed(self, batch: dict[str, torch.Tensor]) -> LayerState:
        state = super().embed(batch)
        return replace(state, hidden=self.model.encoder.embedding_hidden_mapping_in(state.hidden))

    def run_layer(self, index: int, state: LayerState) -> LayerState:
        groups = self.model.encoder.albert_layer_groups
        group = int(index / (self.num_layers / self.config.num_hidden_groups))
        return replace(state, hidden=groups[group](state.hidden, state.attention_mask))


class GPT2Backbone(Backbone):
    """GPT-2: causal, pooled at the last real token, ``ln_f`` applied before every exit head."""

    model_types = ("gpt2",)
    is_causal = True

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.h

    def embed(self, batch: dict[str, torch.Tensor]) -> LayerState:
        token_mask = batch["attention_mask"]
        # Positions count real tokens only, so left- and right-padded rows see the same positions.
        position_ids = (token_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.model.wte(batch["input_ids"]) + self.model.wpe(position_ids)
        hidden = self.model.drop(hidden)
        state = self._text_state(batch, hidden, causal=True)
        state.extras["position_ids"] = position_ids
        return state

    def run_layer(self, index: int, state: LayerState) -> LayerState:
        hidden = self.layers[index](
            state.hidden, attention_mask=state.attention_mask, position_ids=state.extras["position_ids"]
        )
        return replace(state, hidden=hidden)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.ln_f(hidden)


class ViTBackbone(Backbone):
    """ViT: CLS token through the final ``layernorm`` before every exit head."""

    model_types = ("vit",)
    modality = "image"

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers if hasattr(self.model, "layers") else self.model.encoder.layer

    def embed(self, batch: dict[str, torch.Tensor]) -> LayerState:
        pixels = batch["pixel_values"]
        if pixels.size(1) == 1 and self.config.num_channels == 3:
            pixels = pixels.expand(-1, 3, -1, -1)  # gray -> 3 channels keeps the pretrained patch embedding
        pixels = pixels.to(self.model.embeddings.patch_embeddings.projection.weight.dtype)
        hidden = self.model.embeddings(pixels)
        pool_index = torch.zeros(hidden.size(0), 1, dtype=torch.long, device=hidden.device)
        return LayerState(hidden, None, None, pool_index)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.layernorm(hidden)


BACKBONES: tuple[type[Backbone], ...] = (BertBackbone, DistilBertBackbone, AlbertBackbone, GPT2Backbone, ViTBackbone)


def supported_model_types() -> list[str]:
    return sorted(t for cls in BACKBONES for t in cls.model_types)


def backbone_class(model_type: str) -> type[Backbone]:
    for cls in BACKBONES:
        if model_type in cls.model_types:
            return cls
    raise UnsupportedArchitectureError(
        f"Architecture {model_type!r} is not supported; supported model types: {', '.join(supported_model_types())}"
    )


# Weights a base checkpoint may lack without harm: poolers are never used by the exit heads.
_IGNORABLE_MISSING = ("pooler.",)


def load_backbone(name_or_path: str, pooling: str = "positions", **hub_kwargs) -> Backbone:
    """Load a pretrained backbone and fail loudly if its weights do not fit the architecture."""
    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    cls = backbone_class(config.model_type)
    with quiet_transformers():  # its load report is replaced by the check below
        model, info = AutoModel.from_pretrained(
            name_or_path, config=config, output_loading_info=True, use_safetensors=True, **_no_pooler(config),
            **hub_kwargs,
        )
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(_IGNORABLE_MISSING)]
    mismatched = [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", [])]
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {sorted(missing)[:20]}")
        if mismatched:
            parts.append(f"shape-mismatched keys {sorted(mismatched)[:20]}")
        raise WeightMismatchError(
            f"Pretrained weights in {name_or_path!r} do not match the {config.model_type} backbone: "
            + "; ".join(parts)
            + ". Refusing to train a randomly initialised backbone."
        )
    return cls(model, pooling)


def backbone_from_config(config: PretrainedConfig, pooling: str = "positions") -> Backbone:
    """An uninitialised backbone of the given config (weights come from a checkpoint)."""
    cls = backbone_class(config.model_type)
    return cls(AutoModel.from_config(config, **_no_pooler(config)), pooling)


def _no_pooler(config: PretrainedConfig) -> dict[str, bool]:
    """Skip the pooler layer: exit heads pool for themselves."""
    return {"add_pooling_layer": False} if config.model_type in _HAS_POOLER else {}


_HAS_POOLER = ("bert", "roberta", "xlm-roberta", "camembert", "vit", "albert")
