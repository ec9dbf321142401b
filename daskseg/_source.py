"""Reading and checking the source image's metadata (never its pixel data)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from highdicom.spatial import is_tiled_image
from pydicom.dataset import Dataset

from daskseg._series import read_source_header
from daskseg.dicomweb import fetch_instance_metadata, is_dicomweb_url
from daskseg.errors import DICOMwebError, SegmentationInputError, SegmentationTypeError

__all__ = ["load_source_image"]


def load_source_image(source_image: Dataset | str | os.PathLike) -> Dataset:
    """Return the source image's header, reading a file without its pixel data.

    ``source_image`` may also be a DICOMweb instance URL; its metadata is fetched (WADO-RS).

    Raises
    ------
    SegmentationTypeError
        If ``source_image`` is neither a Dataset, a path nor a DICOMweb instance URL.
    SegmentationInputError
        If the file cannot be read, or the image is not a tiled image (a total pixel matrix cut
        into frames, such as a VL Whole Slide Microscopy Image).
    """
    dataset: Dataset
    if is_dicomweb_url(source_image):
        # WADO-RS metadata: the header alone, one request (credentials in the URL, or fetch the
        # Dataset with daskseg.dicomweb.fetch_instance_metadata(url, headers=...) and pass it).
        try:
            dataset = fetch_instance_metadata(str(source_image))
        except DICOMwebError as error:
            if error.status not in (401, 403) or _has_user(str(source_image)):
                raise  # the URL's own credentials were refused: the message says so
            raise DICOMwebError(
                f"{error.url} refused access ({error.status}) while fetching the source "
                "image's metadata: put user:password@ in the URL, or fetch it with "
                "daskseg.dicomweb.fetch_instance_metadata(url, headers=...) or session=, and "
                "pass the Dataset.", url=error.url, status=error.status,
            ) from None
    elif isinstance(source_image, (str, os.PathLike)):
        # A slide file can be many GB: its header is all the SEG needs.
        dataset = read_source_header(source_image)
    elif isinstance(source_image, Dataset):
        dataset = source_image
    elif isinstance(source_image, (list, tuple)) and not source_image:
        raise SegmentationInputError(
            "source_images is empty: give the slide's Dataset or path, or a series' images "
            "(Datasets or paths) or folder."
        )
    else:
        kind = type(source_image).__name__
        raise SegmentationTypeError(
            "source_image must be a pydicom Dataset or the path of a DICOM file as a str or "
            "pathlib.Path (or a DICOMweb instance URL), or a sequence of them or a folder for "
            f"a series, not {kind}" + (f" ({source_image!r}: decode it to a str)."
                                       if isinstance(source_image, bytes) else ".")
        )
    missing = [
        keyword
        for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns")
        if keyword not in dataset
    ]
    if missing:
        raise SegmentationInputError(
            f"The source image lacks {', '.join(missing)}; pass the DICOM header of the slide."
        )
    if not is_tiled_image(dataset):
        raise SegmentationInputError(
            "The source image is not a tiled image (it has no TotalPixelMatrixRows/Columns; "
            f"SOP class {dataset.SOPClassUID.name}). daskseg writes SEGs of tiled images such "
            "as VL Whole Slide Microscopy Images; use highdicom for other images."
        )
    size = (dataset.TotalPixelMatrixRows, dataset.TotalPixelMatrixColumns)
    if not all(isinstance(n, int) and n >= 1 for n in size):
        raise SegmentationInputError(
            f"The source image's total pixel matrix is {size[0]} x {size[1]}: a slide has at "
            "least one pixel (PS3.3 C.8.12.4, TotalPixelMatrixRows and Columns)."
        )
    return dataset


def _has_user(url: str) -> bool:
    """Whether ``url`` carries ``user:password@``."""
    try:
        return urlsplit(url).username is not None
    except ValueError:
        return False
