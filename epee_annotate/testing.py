"""Tiny randomly initialised backbones and checkpoints, for tests and offline demos.

No weights are downloaded: configs are built in code, tokenizers are trained on a few
sentences, and everything is written with ``save_pretrained`` so the real loading code runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import (
    AlbertConfig,
    AutoModel,
    BertConfig,
    BertTokenizerFast,
    DistilBertConfig,
    GPT2Config,
    GPT2TokenizerFast,
    PreTrainedTokenizerFast,
    RobertaConfig,
    ViTConfig,
)

from .backbones import quiet_transformers
from .model import MultiExitModel

TINY_TEXT_TYPES = ("bert", "roberta", "albert", "distilbert", "gpt2")

_CORPUS = [
    "the patient takes fish oil and vitamin e daily for joint pain",
    "aspirin increases the anticoagulant effect of warfarin",
    "she stopped taking ginkgo biloba before surgery",
    "no history of adverse reaction to penicillin or amoxicillin",
    "melatonin was started for insomnia two weeks ago",
    "rash and nausea developed after the first dose of the drug",
    "coenzyme q10 coq10 turmeric garlic ginger ginseng echinacea valerian",
    "0 1 2 3 4 5 6 7 8 9 . , ; : ( ) - / % ' \" ? ! mg daily twice",
]


def _wordpiece_vocab() -> list[str]:
    words = sorted({w for line in _CORPUS for w in line.split()})
    chars = sorted({c for line in _CORPUS for c in line if not c.isspace()} | set("abcdefghijklmnopqrstuvwxyz"))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + [c for c in chars if c not in words] + [
        f"##{c}" for c in chars
    ]


def tiny_tokenizer(model_type: str, directory: Path) -> PreTrainedTokenizerFast:
    """A small WordPiece (encoders) or byte-level BPE (GPT-2) tokenizer saved in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    if model_type == "gpt2":
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(_CORPUS * 3, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"],
                                show_progress=False)
        tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                      bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    else:
        vocab_file = directory / "vocab.txt"
        vocab_file.write_text("\n".join(_wordpiece_vocab()) + "\n")
        tokenizer = BertTokenizerFast(vocab=str(vocab_file), model_max_length=64)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_config(model_type: str, vocab_size: int = 512, num_layers: int = 4):
    """A few-kilobyte config of each supported architecture."""
    # A wide init makes random layers mix tokens strongly, so different inputs get different answers.
    common = dict(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=48,
                  initializer_range=0.3)
    if model_type == "bert":
        return BertConfig(vocab_size=vocab_size, max_position_embeddings=80, **common)
    if model_type == "roberta":
        return RobertaConfig(vocab_size=vocab_size, max_position_embeddings=80, pad_token_id=0, **common)
    if model_type == "albert":
        return AlbertConfig(vocab_size=vocab_size, embedding_size=16, max_position_embeddings=80, **common)
    if model_type == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=num_layers, n_heads=2, hidden_dim=48,
                                max_position_embeddings=80, initializer_range=0.3)
    if model_type == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=num_layers, n_head=2, n_positions=80,
                          initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    if model_type == "vit":
        return ViTConfig(image_size=32, patch_size=8, num_channels=3, **common)
    raise ValueError(f"no tiny config for {model_type!r}")


def tiny_backbone_dir(model_type: str, directory: str | Path, num_layers: int = 4, seed: int = 0) -> Path:
    """Write a random tiny backbone (weights + tokenizer or image processor) like a hub checkpoint."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if model_type == "vit":
        config = tiny_config("vit", num_layers=num_layers)
        with quiet_transformers():
            from transformers import ViTImageProcessor
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    else:
        tokenizer = tiny_tokenizer(model_type, path)
        config = tiny_config(model_type, vocab_size=len(tokenizer) + 8, num_layers=num_layers)
    with quiet_transformers():
        AutoModel.from_config(config).save_pretrained(path)
    return path


def tiny_model(
    model_type: str,
    directory: str | Path,
    task: str = "text",
    labels: Sequence[str] = ("neg", "pos", "other"),
    num_layers: int = 4,
    head_scale: float = 4.0,
    seed: int = 0,
) -> MultiExitModel:
    """A tiny multi-exit model whose heads give varied, confident-enough answers (for exit tests)."""
    base = tiny_backbone_dir(model_type, directory, num_layers=num_layers, seed=seed)
    torch.manual_seed(seed)
    model = MultiExitModel.from_base(base, task=task, labels=list(labels), dropout=0.0)
    with torch.no_grad():
        for head in model.heads:
            head.classifier.weight.mul_(head_scale)
    return model.eval()


def loopback_s3_server():
    """A context manager: an S3-compatible server (moto) on 127.0.0.1 with the AWS_* environment
    pointing at it (restored on exit); yields that environment. For tests and benchmarks only."""
    import os
    from contextlib import contextmanager

    @contextmanager
    def serve():
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            server.stop()

    return serve()
