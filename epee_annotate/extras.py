"""Optional dependencies, installed as extras: a missing one is a one-line error naming its extra.

``pip install epee-annotate`` gives the model and the spaCy components on text;
``[ray]`` adds the batch jobs, ``[imaging]`` DICOM decoding and image classification of files,
``[clinical]`` medSpaCy (mention rules, ConText), ``[all]`` all three (what scripts/setup.sh installs).
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA_OF = {"ray": "ray", "pydicom": "imaging", "medspacy": "clinical"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def missing(package: str, purpose: str) -> MissingExtraError:
    """The error for ``purpose`` needing ``package`` (a key of ``EXTRA_OF``)."""
    extra = EXTRA_OF[package]
    return MissingExtraError(f"{purpose} needs {package}, which is not installed: "
                             f"pip install 'epee-annotate[{extra}]' (or [all])")


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"ray.data"``), or raise ``MissingExtraError`` naming its extra."""
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if (error.name or "").split(".")[0] != package:  # the package is there; something it needs is not
            raise
        raise missing(package, purpose) from None
