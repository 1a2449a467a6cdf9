"""Training data: JSONL/CSV/TSV/Parquet, spans, PHEE, DDI 2013 and MedMNIST loaders giving ``Example`` lists.

Every file is read by the format registry (``epee_annotate.formats``), as the batch jobs read theirs.
"""

from .ddi import DDI_LABELS, ddi_drug_lexicon, filter_negatives, load_ddi, load_ddi_entities, subsample_negatives
from .examples import DataError, Example, label_counts, sorted_labels, split_by_group
from .generic import load_records
from .load import FORMATS, check_format, labels_for, load_examples
from .medmnist import PNEUMONIAMNIST_LABELS, load_medmnist
from .phee import PHEE_LABELS, load_phee, phee_labels
from .spans import load_docbin, load_span_records

__all__ = [
    "DDI_LABELS", "PHEE_LABELS", "PNEUMONIAMNIST_LABELS", "FORMATS", "DataError", "Example", "check_format",
    "ddi_drug_lexicon", "filter_negatives", "label_counts", "labels_for", "load_ddi", "load_ddi_entities",
    "load_docbin", "load_examples", "load_span_records", "load_medmnist", "load_phee",
    "load_records", "phee_labels", "sorted_labels", "split_by_group", "subsample_negatives",
]
