"""daskseg: DICOM Segmentation objects from masks larger than memory, on a Dask cluster."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from daskseg.errors import (
    ClusterError,
    DaskSegError,
    DestinationExistsError,
    SegmentationFileError,
    SegmentationInputError,
    SegmentationTypeError,
)
from daskseg._client import local_cluster
from daskseg.executor import DaskExecutor
from daskseg.pyramid import write_segmentation_pyramid
from daskseg.read import SegmentationReader, open_segmentation, read_segmentation
from daskseg.write import ALLOWED_TRANSFER_SYNTAXES, write_segmentation

try:
    __version__ = version("daskseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "SegmentationReader",
    "open_segmentation",
    "read_segmentation",
    "DaskExecutor",
    "ALLOWED_TRANSFER_SYNTAXES",
    "DestinationExistsError",
    "local_cluster",
    "write_segmentation",
    "write_segmentation_pyramid",
    "ClusterError",
    "DaskSegError",
    "SegmentationFileError",
    "SegmentationInputError",
    "SegmentationTypeError",
    "__version__",
]
