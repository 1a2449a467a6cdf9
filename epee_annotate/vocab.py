"""Every fixed vocabulary of the package, defined once (no heavy imports: the CLI reads these for --help)."""

from __future__ import annotations

# Classification metrics (epee_annotate.metrics computes them; training selects on one, evaluation reports all).
METRICS = ("accuracy", "macro_f1", "micro_f1_positive")
# Mixed-precision modes for inference on CUDA (MultiExitModel.use_autocast).
AUTOCAST_MODES = ("bf16", "fp16")
# Multi-frame DICOM: middle frame, every frame, or maximum-intensity projection.
FRAME_MODES = ("middle", "all", "mip")
# DICOM keyword read with every image -> output column of the images job.
DICOM_COLUMNS = {
    "SOPInstanceUID": "sop_instance_uid",
    "StudyInstanceUID": "study_instance_uid",
    "SeriesInstanceUID": "series_instance_uid",
    "Modality": "modality",
    "BodyPartExamined": "body_part_examined",
}

# Clinical label lists, in the order the data loaders and the clinical components use.
PV_EVENT_LABELS = ["Adverse_event", "Potential_therapeutic_event"]  # PHEE
DDI_NEGATIVE = "none"
DDI_LABELS = [DDI_NEGATIVE, "mechanism", "effect", "advise", "int"]  # DDI 2013
DDI_ENTITY_LABELS = ["DRUG", "BRAND", "GROUP", "DRUG_N"]
SUPPLEMENT_STATUS_LABELS = ["Continuing", "Discontinued", "Started", "Uncertain"]

# Input reading (``formats``, ``pipelines.sources``), here so the command line can offer them cheaply.
BAD_RECORD_MODES = ("permissive", "failfast")  # what a malformed record does: an error record, or stop
DEFAULT_MAX_FIELD_LINES = 1000  # CSV/TSV: a quoted field spanning more lines is taken for a quote left open
NOTE_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "txt", "phee", "ddi")  # what a notes job reads
