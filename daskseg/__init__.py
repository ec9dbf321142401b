"""daskseg: DICOM Segmentation objects from masks larger than memory, on a Dask cluster."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from daskseg._version import __version__
from daskseg.errors import (
    ClusterError,
    DaskSegError,
    DestinationExistsError,
    DICOMwebError,
    MissingDependencyError,
    SegmentationFileError,
    SegmentationInputError,
    SegmentationTypeError,
)

if TYPE_CHECKING:
    from daskseg._client import local_cluster
    from daskseg._codecs import ALLOWED_TRANSFER_SYNTAXES
    from daskseg._volread import VolumeSegmentationReader
    from daskseg.executor import DaskExecutor
    from daskseg.omezarr import segment_descriptions_from_ome_zarr, segmentation_to_ome_zarr
    from daskseg.pyramid import write_segmentation_pyramid
    from daskseg.read import SegmentationReader, open_segmentation, read_segmentation
    from daskseg.render import show_segmentation
    from daskseg.write import write_segmentation

# The public API, imported when first used: a worker process unpickling an encode task imports
# daskseg.encode, and with it this package, which must not pull highdicom, zarr and the rest
# into every worker (PEP 562 module __getattr__, as scikit-image and SciPy load lazily).
_LAZY = {
    "ALLOWED_TRANSFER_SYNTAXES": "daskseg._codecs",
    "DaskExecutor": "daskseg.executor",
    "SegmentationReader": "daskseg.read",
    "VolumeSegmentationReader": "daskseg._volread",
    "local_cluster": "daskseg._client",
    "open_segmentation": "daskseg.read",
    "read_segmentation": "daskseg.read",
    "segment_descriptions_from_ome_zarr": "daskseg.omezarr",
    "segmentation_to_ome_zarr": "daskseg.omezarr",
    "show_segmentation": "daskseg.render",
    "write_segmentation": "daskseg.write",
    "write_segmentation_pyramid": "daskseg.pyramid",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once imported, found without this function
        return value
    raise AttributeError(f"module 'daskseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
