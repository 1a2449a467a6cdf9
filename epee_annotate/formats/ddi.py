"""DDI Extraction 2013 XML: one record per ``<sentence>``, with its entities and pairs as attribute dicts.

Record: ``{"id", "document", "text", "entities": [{id, charOffset, type, text}], "pairs": [{id, e1,
e2, ddi, type}]}``. A file that is not well-formed XML is one error record naming the line; a
sentence without text is an error record naming the sentence. What offsets and pairs mean (and the
training examples they make) is ``data.ddi``'s. XML declares its own encoding, so the ``encoding``
option does not apply.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import BinaryIO, Iterator

from .records import ReadOptions, Record, bad, select

ENTITY_KEYS = ("id", "charOffset", "type", "text")
PAIR_KEYS = ("id", "e1", "e2", "ddi", "type")


def read_ddi(stream: BinaryIO, source: str, options: ReadOptions) -> Iterator[Record]:
    try:
        root = ET.parse(stream).getroot()
    except ET.ParseError as error:
        line, column = error.position
        yield bad(source, f"line {line}", f"malformed XML at column {column}")
        return
    document = root.get("id") or os.path.splitext(os.path.basename(source))[0]
    for sentence in root.iter("sentence"):
        ident = sentence.get("id")
        text = sentence.get("text")
        if text is None:
            yield bad(source, f"sentence {ident}", "sentence has no text attribute")
            continue
        data = {
            "id": ident, "document": document, "text": text,
            "entities": [{k: e.get(k) for k in ENTITY_KEYS} for e in sentence.iter("entity")],
            "pairs": [{k: p.get(k) for k in PAIR_KEYS} for p in sentence.iter("pair")],
        }
        yield Record(source, f"sentence {ident}", select(data, options.columns))
