"""medSpaCy interop: quiet logs, DocConsumer attributes, DocBin-safe docs."""

from __future__ import annotations

from typing import Any

import srsly
from spacy.tokens import Doc

from ..extras import require
from .extensions import RESULT_ATTRS


def quiet_medspacy() -> None:
    """Disable PyRuSH's loguru DEBUG output, which prints a line per token with the token text (PHI).

    PyRuSH (medSpaCy's sentencizer) logs through loguru under the module names
    ``PyRuSH.PyRuSHSentencizer``/``PyRuSH.RuSH``; ``logger.disable("PyRuSH")`` silences them all.
    Re-enable with ``loguru.logger.enable("PyRuSH")`` when debugging on synthetic text.
    """
    try:
        from loguru import logger
    except ImportError:  # loguru comes with PyRuSH; without it there is nothing to silence
        return
    logger.disable("PyRuSH")


def doc_consumer_attrs(extra: tuple[str, ...] = RESULT_ATTRS) -> dict[str, list[str]]:
    """``dtype_attrs`` for medSpaCy's DocConsumer: its default entity columns plus the EPEE ones.

    ``nlp.add_pipe("medspacy_doc_consumer", config={"dtype_attrs": doc_consumer_attrs()})``, then
    ``doc._.to_dataframe()`` has ``epee_label``, ``epee_confidence``, ... next to ``is_negated``.
    """
    DEFAULT_ENT_ATTRS = require("medspacy.io.doc_consumer", "doc_consumer_attrs").DEFAULT_ENT_ATTRS

    return {"ents": list(DEFAULT_ENT_ATTRS) + [a for a in extra if a not in DEFAULT_ENT_ATTRS]}


def _serialisable(value: Any) -> bool:
    try:
        srsly.msgpack_dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def make_docbin_safe(doc: Doc) -> list[str]:
    """Remove ``doc.user_data`` values DocBin cannot store; returns the attribute names removed.

    medSpaCy keeps Python objects there (``span._.target_rule``, ``span._.modifiers``,
    ``doc._.context_graph``), which makes ``DocBin(store_user_data=True)`` fail. Plain values,
    ConText booleans (``is_negated``, ...) and every EPEE result are kept.
    """
    dropped = set()
    for key in list(doc.user_data):
        if not _serialisable(doc.user_data[key]):
            dropped.add(key[1] if isinstance(key, tuple) and len(key) > 1 else str(key))
            del doc.user_data[key]
    return sorted(dropped)
