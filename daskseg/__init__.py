"""daskseg: DICOM Segmentation objects from masks larger than memory, on a Dask cluster."""

from __future__ import annotations

from daskseg.errors import (
    ClusterError,
    DaskSegError,
    DICOMwebError,
    DestinationExistsError,
    MissingDependencyError,
    SegmentationFileError,
    SegmentationInputError,
    SegmentationTypeError,
)
from daskseg._client import local_cluster
from daskseg._codecs import ALLOWED_TRANSFER_SYNTAXES
from daskseg._version import __version__
from daskseg.executor import DaskExecutor
from daskseg.pyramid import write_segmentation_pyramid
from daskseg.omezarr import segment_descriptions_from_ome_zarr, segmentation_to_ome_zarr
from daskseg.read import SegmentationReader, open_segmentation, read_segmentation
from daskseg._volread import VolumeSegmentationReader
from daskseg.render import show_segmentation
from daskseg.write import write_segmentation

__all__ = [
    "SegmentationReader",
    "VolumeSegmentationReader",
    "open_segmentation",
    "read_segmentation",
    "DaskExecutor",
    "ALLOWED_TRANSFER_SYNTAXES",
    "DestinationExistsError",
    "MissingDependencyError",
    "local_cluster",
    "write_segmentation",
    "write_segmentation_pyramid",
    "segmentation_to_ome_zarr",
    "segment_descriptions_from_ome_zarr",
    "show_segmentation",
    "ClusterError",
    "DICOMwebError",
    "DaskSegError",
    "SegmentationFileError",
    "SegmentationInputError",
    "SegmentationTypeError",
    "__version__",
]
