"""Imaging path: image files in, predictions out (``classify``).

Decoding one file into pixels is core (``epee_annotate.image_decoding``: the model's image
encoder uses it too); its public names are re-exported here.
"""

from epee_annotate.image_decoding import DecodedImage, ImageReadError, is_dicom, load_npz_split, read_image

__all__ = ["DecodedImage", "ImageReadError", "is_dicom", "load_npz_split", "read_image"]
