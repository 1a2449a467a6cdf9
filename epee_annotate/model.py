"""MultiExitModel: a pretrained backbone with an exit head after every layer."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

from .backbones import Backbone, backbone_class, backbone_from_config, load_backbone, quiet_transformers
from .checkpoint import (
    MultiExitConfig, local_checkpoint, read_config, read_weights, verify_weights, write_config, write_weights,
)
from .engine import length_buckets, run_all_exits, run_early_exit
from .heads import make_exit_heads
from .inputs import TASK_MARKERS, TASKS, EncodedRow, ImageEncoder, InputError, TextEncoder, pooling_width
from .policies import ExitPolicy, normalized_entropy, policy_from_dict
from .prediction import Prediction
from .vocab import AUTOCAST_MODES

_AUTOCAST = dict(zip(AUTOCAST_MODES, (torch.bfloat16, torch.float16)))


class MultiExitModel(nn.Module):
    """Backbone + one exit head per layer, with EPEE-style early-exit prediction."""

    def __init__(self, backbone: Backbone, config: MultiExitConfig, preprocessor: Any):
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.heads = make_exit_heads(
            config.num_layers, config.pool_width * backbone.hidden_size, config.head_hidden_size,
            config.num_labels, config.dropout,
        )
        self.preprocessor = preprocessor  # tokenizer or image processor
        self.encoder = _make_encoder(config, backbone, preprocessor)
        self.autocast_dtype: torch.dtype | None = None
        self.checkpoint_dir: Path | None = None  # where it was loaded from or last saved to
        self.weights_sha256 = ""  # of the weights as loaded (checked) or saved: computed, never just read
        self.unhashed_weights = False  # loaded from a checkpoint without a hash, trusted by the caller
        self.int8 = False  # backbone Linear layers replaced by dynamically quantized ones
        self.runtime_engine: Any = None  # an ONNX Runtime engine (runtimes.apply_runtime); None = torch

    # ----- construction and persistence -------------------------------------------------
    @classmethod
    def from_base(
        cls,
        name_or_path: str | Path,
        task: str = "text",
        labels: Sequence[str] = (),
        *,
        max_length: int = 256,
        head_hidden_size: int | None = None,
        dropout: float = 0.1,
        image_size: int | None = None,
        pooling: str = "auto",
        **hub_kwargs: Any,
    ) -> "MultiExitModel":
        """A new multi-exit model on a pretrained backbone (hub name or local directory), fresh exit heads.

        ``pooling`` (text task, encoders): "cls", "mean", or "auto" = mean when the base was
        pretrained with mean pooling (a sentence-transformers ``1_Pooling`` config), else CLS.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        labels = [str(label) for label in labels]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"need at least two distinct labels, got {labels}")
        hub_kwargs.pop("trust_remote_code", None)  # never executed: only built-in architectures are supported
        name = str(name_or_path)
        cls_of_base = backbone_class(AutoConfig.from_pretrained(name, **hub_kwargs).model_type)
        chosen_pooling = _choose_pooling(pooling, name, task, cls_of_base)
        backbone = load_backbone(name, pooling=chosen_pooling, **hub_kwargs)
        if (backbone.modality == "image") != (task == "image"):
            raise ValueError(f"a {backbone.config.model_type} backbone cannot do the {task!r} task")
        preprocessor = _load_preprocessor(name, backbone, task, image_size, hub_kwargs)
        if task in TASK_MARKERS:
            preprocessor.add_tokens(list(TASK_MARKERS[task]), special_tokens=True)
            backbone.model.resize_token_embeddings(len(preprocessor), mean_resizing=False)
        config = MultiExitConfig(
            task=task,
            labels=labels,
            model_type=backbone.config.model_type,
            num_layers=backbone.num_layers,
            base_model=name,
            max_length=max_length,
            head_hidden_size=head_hidden_size or backbone.hidden_size,
            dropout=dropout,
            pool_width=pooling_width(task, backbone.is_causal),
            pooling=chosen_pooling,
        )
        return cls(backbone, config, preprocessor)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        trust_unhashed_weights: bool = False) -> "MultiExitModel":
        """Load a checkpoint written by ``save_pretrained`` (safetensors only); a URI is downloaded first.

        The weights are checked against the hash the checkpoint records; one without a hash loads only
        with ``trust_unhashed_weights`` (then ``unhashed_weights`` is True).
        """
        path = local_checkpoint(directory)
        config = read_config(path)
        digest = verify_weights(path, config, trust_unhashed_weights, source=directory)
        backbone_class(config.model_type)  # clear error for unknown architectures
        backbone = backbone_from_config(AutoConfig.from_pretrained(path), config.pooling)
        if config.task == "image":
            with quiet_transformers():
                preprocessor = AutoImageProcessor.from_pretrained(path)
        else:
            preprocessor = AutoTokenizer.from_pretrained(path)
            _ensure_pad_token(preprocessor)
        model = cls(backbone, config, preprocessor)
        read_weights(model, path)
        model.checkpoint_dir = path.resolve()
        model.weights_sha256, model.unhashed_weights = digest, not config.weights_sha256
        return model.eval().to(device)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the checkpoint directory (config JSON, safetensors weights, preprocessor files)."""
        if self.int8:
            raise ValueError("an int8-quantized model cannot be saved; save the fp32 model and quantize after loading")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.config.save_pretrained(path)
        self.preprocessor.save_pretrained(path)
        write_weights(self, self.config, path)
        self.checkpoint_dir = path.resolve()
        self.weights_sha256, self.unhashed_weights = self.config.weights_sha256, False

    def save_config(self, directory: str | Path) -> None:
        """Rewrite only ``epee_config.json`` (e.g. after calibration), keeping the weights."""
        write_config(self.config, Path(directory))

    # ----- properties ------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return self.config.labels

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def default_policy(self) -> ExitPolicy:
        return policy_from_dict(self.config.default_policy)

    @property
    def checkpoint_id(self) -> str:
        """This fine-tuned checkpoint: its directory name + the hash of the weights it loaded or saved ("@unsaved" before)."""
        digest = self.weights_sha256[:12] or "unsaved"
        name = self.checkpoint_dir.name if self.checkpoint_dir is not None else self.config.base_model
        return f"{name}@{digest}"

    @property
    def runtime(self) -> str:
        """The runtime answering ``predict`` and ``exit_probs`` (one of ``runtimes.RUNTIMES``)."""
        if self.runtime_engine is not None:
            return self.runtime_engine.name
        return "torch-int8" if self.int8 else "torch"

    def use_runtime(self, runtime: str | None, threads: int | None = None) -> "MultiExitModel":
        """Infer with ``runtime`` ("torch", "torch-int8", "onnx", "onnx-int8"), in place; see ``epee_annotate.runtimes``."""
        from .runtimes import apply_runtime

        return apply_runtime(self, runtime, threads)

    def set_default_policy(self, policy: ExitPolicy, calibration: dict[str, Any] | None = None) -> None:
        self.config.default_policy = policy.to_dict()
        self.config.calibration = calibration

    def use_autocast(self, dtype: str | None) -> None:
        """Use bf16/fp16 autocast for inference on CUDA (ignored on CPU)."""
        if dtype is not None and dtype not in _AUTOCAST:
            raise ValueError(f"autocast must be None or one of {AUTOCAST_MODES}, got {dtype!r}")
        self.autocast_dtype = _AUTOCAST[dtype] if dtype else None

    def quantize_dynamic(self) -> "MultiExitModel":
        """int8 dynamic quantization of the backbone's Linear layers, in place (CPU inference only).

        Weights become int8 with per-tensor scales and activations are quantized on the fly, so every
        layer of the early-exit loop gets faster; the exit heads stay fp32. Measure the accuracy cost
        with ``evaluate --int8``.
        """
        if self.device.type != "cpu":
            raise ValueError("int8 dynamic quantization runs on CPU; load the model with device='cpu'")
        if self.runtime_engine is not None:
            raise ValueError(f"this model runs {self.runtime!r}; load it again for runtime 'torch-int8'")
        if not self.int8:
            with warnings.catch_warnings():
                # torch.ao's quantized-tensor deprecation notice; the kernels are what we measure.
                warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
                torch.ao.quantization.quantize_dynamic(self.backbone, {nn.Linear}, dtype=torch.qint8, inplace=True)
            self.int8 = True
        return self.eval()

    # ----- training forward --------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of every exit, (M, B, K)."""
        if self.runtime_engine is not None:  # its graphs hold the weights as exported: training would not reach them
            raise ValueError(f"this model answers through runtime {self.runtime!r}; train a model loaded without it")
        features = self.backbone(batch)
        return torch.stack([head(f) for head, f in zip(self.heads, features)])

    # ----- inference --------------------------------------------------------------------
    def encode(self, inputs: Sequence[Any]) -> list[EncodedRow | InputError]:
        """Encode each input, keeping per-item errors in place."""
        rows: list[EncodedRow | InputError] = []
        for item in inputs:
            try:
                rows.append(self.encoder.encode(item))
            except InputError as error:
                rows.append(error)
            except Exception as error:  # e.g. an unreadable image file: one item, not the batch
                rows.append(InputError(f"{type(error).__name__}: {error}"))
        return rows

    def batches(self, rows: Sequence[EncodedRow | InputError], batch_size: int,
                max_tokens: int | None = None) -> list[list[int]]:
        """Index groups for valid rows: length buckets for text, input order for images.

        ``max_tokens``: text only, a budget of padded tokens per batch (``engine.length_buckets``).
        """
        if max_tokens is not None and self.task == "image":
            raise ValueError("a token budget applies to text; images are all one size: set the batch size")
        valid = [i for i, row in enumerate(rows) if isinstance(row, EncodedRow)]
        lengths = [rows[i].length for i in valid]
        return [[valid[j] for j in group] for group in length_buckets(lengths, batch_size, max_tokens)]

    def collate(self, rows: Sequence[EncodedRow], padding_side: str = "right") -> dict[str, torch.Tensor]:
        batch = self.encoder.collate(rows, padding_side)
        return {k: v.to(self.device) for k, v in batch.items()}

    def predict(
        self,
        inputs: Sequence[Any],
        policy: ExitPolicy | None = None,
        batch_size: int = 32,
        progress: bool = False,
        max_tokens: int | None = None,
        audit: Sequence[bool] | None = None,
    ) -> list[Prediction]:
        """Early-exit predictions in input order; bad items get ``error`` set, the rest are answered.

        ``max_tokens``: batches by a budget of padded tokens (text), ``batch_size`` capping their rows.
        ``audit[i]``: input i also runs to the last layer (continuing its forward pass) and its
        ``full_label`` is set, for checking the early answer against full depth.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if isinstance(inputs, (str, dict)):
            raise TypeError("predict takes a list of inputs; wrap a single input in a list")
        policy = policy or self.default_policy
        if self.training:
            self.eval()
        rows = self.encode(inputs)
        results: list[Prediction | None] = [
            Prediction.failed(str(row), self.num_layers) if isinstance(row, InputError) else None for row in rows
        ]
        for group in tqdm(self.batches(rows, batch_size, max_tokens), desc="predict", unit="batch",
                          disable=not progress):
            batch = self.collate([rows[i] for i in group])
            audited = [bool(audit[i]) for i in group] if audit is not None else []
            flags = torch.tensor(audited) if any(audited) else None
            if self.runtime_engine is not None:
                outcome = self.runtime_engine.run_early_exit(batch, policy, flags)
            else:
                outcome = run_early_exit(self.backbone, self.heads, batch, policy, self.autocast_dtype, flags)
            full = outcome.full_probs.argmax(-1).tolist() if outcome.full_probs is not None else None
            probs = outcome.probs.cpu()
            confidence, label_id = probs.max(-1)
            # Python lists once per batch: indexing tensors row by row cost ~15 us a row, a share of small models' time.
            columns = zip(label_id.tolist(), outcome.exit_layer.tolist(), confidence.tolist(),
                          normalized_entropy(probs).tolist(), probs.tolist())
            for j, (i, (label, exit_layer, conf, entropy, row_probs)) in enumerate(zip(group, columns)):
                results[i] = Prediction(
                    label=self.labels[label],
                    label_id=label,
                    exit_layer=exit_layer,
                    num_layers=self.num_layers,
                    confidence=conf,
                    entropy=entropy,
                    probs=row_probs,
                    truncated=rows[i].truncated,
                    full_label=self.labels[full[j]] if full is not None and audited[j] else None,
                )
        return results  # type: ignore[return-value]

    def exit_probs(self, inputs: Sequence[Any], batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """Probabilities of every exit for every input, (N, M, K); raises on the first bad input.

        ``progress``: a bar; otherwise a log line every ~30 s on long runs.
        """
        from .progress import progress as progress_iter

        rows = self.encode(inputs)
        for index, row in enumerate(rows):
            if isinstance(row, InputError):
                raise InputError(f"input {index}: {row}")
        if self.training:
            self.eval()
        out = torch.empty(len(rows), self.num_layers, self.config.num_labels)
        groups = self.batches(rows, batch_size)
        for group in progress_iter(groups, "all exits", "batch", bar=progress):
            batch = self.collate([rows[i] for i in group])
            if self.runtime_engine is not None:
                out[group] = self.runtime_engine.run_all_exits(batch)
            else:
                out[group] = run_all_exits(self.backbone, self.heads, batch, self.autocast_dtype).cpu()
        return out


def _choose_pooling(pooling: str, name: str, task: str, backbone: type[Backbone]) -> str:
    """The stored pooling (``backbones.POOLINGS``) for a ``from_base`` request: "auto", "cls" or "mean"."""
    if pooling not in ("auto", "cls", "mean"):
        raise ValueError(f"pooling must be 'auto', 'cls' or 'mean', got {pooling!r}")
    if task != "text" or backbone.is_causal or backbone.modality != "text":
        if pooling != "auto":
            raise ValueError(f"{pooling} pooling is for the text task on encoder backbones")
        return "positions"
    if pooling == "auto":
        # Sentence-transformers checkpoints say how they were trained to pool; their CLS state is weak early on.
        settings = Path(name) / "1_Pooling" / "config.json"
        mean = settings.is_file() and json.loads(settings.read_text()).get("pooling_mode_mean_tokens", False)
        return "mean" if mean else "cls"
    return pooling


def _make_encoder(config: MultiExitConfig, backbone: Backbone, preprocessor: Any):
    if config.task == "image":
        return ImageEncoder.from_processor(preprocessor, backbone.config.num_channels)
    return TextEncoder(preprocessor, config.task, config.max_length, backbone.is_causal)


def _ensure_pad_token(tokenizer) -> None:
    # GPT-2 has no pad token; padding positions are masked, so any id will do.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def _load_preprocessor(name: str, backbone: Backbone, task: str, image_size: int | None, hub_kwargs: dict):
    if task != "image":
        tokenizer = AutoTokenizer.from_pretrained(name, **hub_kwargs)
        _ensure_pad_token(tokenizer)
        return tokenizer
    with quiet_transformers():
        try:
            return AutoImageProcessor.from_pretrained(name, **hub_kwargs)
        except (OSError, ValueError):
            # Backbones saved without a processor (e.g. trained from scratch): ViT defaults at the model's size.
            from transformers import ViTImageProcessor

            side = image_size or backbone.config.image_size
            return ViTImageProcessor(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
