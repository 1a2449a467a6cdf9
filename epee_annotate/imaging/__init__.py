"""Imaging path: decoding medical and raster images into float arrays."""

from epee_annotate.imaging.reading import DecodedImage, ImageReadError, is_dicom, load_npz_split, read_image

__all__ = ["DecodedImage", "ImageReadError", "is_dicom", "load_npz_split", "read_image"]
