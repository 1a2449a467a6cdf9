import logging

import numpy as np
import pytest
import torch

# Tiny models gain nothing from intra-op threads, and threads thrash when the cores are shared.
torch.set_num_threads(1)

from epee_annotate.testing import tiny_model

SENTENCES = [
    "the patient takes fish oil and vitamin e daily",
    "aspirin increases the anticoagulant effect of warfarin",
    "she stopped taking ginkgo biloba before surgery",
    "no history of adverse reaction to penicillin",
    "melatonin was started for insomnia two weeks ago",
    "rash and nausea developed after the first dose",
    "coq10 turmeric garlic",
    "pain",
]


def make_texts(count: int, seed: int = 0) -> list[str]:
    """Varied sentences of varied length built from the tiny vocabulary."""
    rng = np.random.default_rng(seed)
    words = " ".join(SENTENCES).split()
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(count)]


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """Cached tiny multi-exit models keyed by (model_type, task, labels)."""
    cache = {}

    def build(model_type: str, task: str = "text", labels=("neg", "pos", "other"), num_layers: int = 4):
        key = (model_type, task, tuple(labels), num_layers)
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"tiny_{model_type}_{task}")
            cache[key] = tiny_model(model_type, directory, task=task, labels=labels, num_layers=num_layers)
        return cache[key]

    return build


@pytest.fixture(scope="session")
def clinical_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Tiny random checkpoints for the three clinical tasks: keys pv, sup (text) and ddi (relation)."""
    from epee_annotate.components import DDI_LABELS, PV_EVENT_LABELS, SUPPLEMENT_STATUS_LABELS

    root = tmp_path_factory.mktemp("clinical_ckpts")
    out = {}
    for key, task, labels in (("pv", "text", PV_EVENT_LABELS), ("sup", "text", SUPPLEMENT_STATUS_LABELS),
                              ("ddi", "relation", DDI_LABELS)):
        tiny_model("bert", root / key, task=task, labels=labels).save_pretrained(root / key)
        out[key] = str(root / key)
    return out


@pytest.fixture(scope="session")
def text_checkpoint(tmp_path_factory):
    """A saved tiny 4-layer BERT text checkpoint (labels neg, pos, other)."""
    path = tmp_path_factory.mktemp("text_ckpt")
    tiny_model("bert", path, labels=("neg", "pos", "other")).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def image_checkpoint(tmp_path_factory):
    """A saved tiny 4-layer ViT image checkpoint (labels normal, pneumonia)."""
    path = tmp_path_factory.mktemp("image_ckpt")
    tiny_model("vit", path, task="image", labels=("normal", "pneumonia")).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread_and_package_log_level():
    """CLI commands set torch's threads (--threads) and, without --verbose, quiet the package's logger
    for the rest of their process; tests run many commands in one process, so each gets them back."""
    package_logger = logging.getLogger("epee_annotate")
    level = package_logger.level
    yield
    torch.set_num_threads(1)
    package_logger.setLevel(level)


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on 127.0.0.1, with the AWS_* environment pointing at it.

    pyarrow (and so Ray Data) and boto3 read AWS_ENDPOINT_URL and the dummy credentials from the
    environment, exactly as they would read real ones; nothing leaves the loopback interface.
    Yields a boto3 S3 client.
    """
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    from epee_annotate.testing import loopback_s3_server

    with loopback_s3_server():
        yield boto3.client("s3")


@pytest.fixture
def progress_shown(monkeypatch) -> dict:
    """(total, units, records) of every update of a job's progress bar, by bar name, as the driver draws them."""
    from epee_annotate.pipelines.progress import Display

    shown: dict = {}
    monkeypatch.setattr(Display, "show", lambda self, units, records: shown.setdefault(self.desc, []).append(
        (self.total, units, records)))
    return shown
