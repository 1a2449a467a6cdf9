"""Input formats: one reader per format, yielding records (``Record``) that training and jobs both consume.

``read_file(path_or_uri, fmt, ReadOptions(...))`` reads one file through ``epee_annotate.filesystem``;
``read_stream`` reads an open stream. Per-record faults are error records (file, position, reason;
never the text); ``ReadOptions.on_bad_record`` says what happens to them. ``FORMATS`` lists the
formats; an unknown one is ``UnsupportedFormat`` naming the supported ones.
"""

from .delimited import HeaderError
from .records import BAD_RECORD_MODES, BadRecordError, BadRecordLimit, ReadOptions, Record, TooManyBadRecords
from .registry import (
    FORMATS, UnsupportedFormat, format_of, get, read_csv_header, read_file, read_stream, sniff_json, supported,
)

__all__ = [
    "BAD_RECORD_MODES", "FORMATS", "BadRecordError", "BadRecordLimit", "HeaderError", "ReadOptions", "Record",
    "TooManyBadRecords", "UnsupportedFormat", "format_of", "get", "read_csv_header", "read_file", "read_stream",
    "sniff_json", "supported",
]
