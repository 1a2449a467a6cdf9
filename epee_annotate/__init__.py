"""epee-annotate: batch clinical annotation with early-exit (EPEE) transformers."""

__version__ = "0.1.0"
