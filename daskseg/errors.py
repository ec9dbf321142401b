"""Exceptions raised by daskseg.

Each class is also a builtin exception, so callers can catch either::

    DaskSegError
     ├── SegmentationInputError (ValueError)   bad mask, source, segments or options
     │    └── SegmentationFileError            a file to read is damaged, not a SEG, or unsupported
     ├── SegmentationTypeError (TypeError)     an argument of the wrong kind
     ├── ClusterError (RuntimeError)           the Dask cluster could not finish the work
     └── DestinationExistsError (FileExistsError)  the output exists and overwrite is False
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "DaskSegError",
    "DestinationExistsError",
    "SegmentationFileError",
    "SegmentationInputError",
    "SegmentationTypeError",
]


class DaskSegError(Exception):
    """Base class of every exception that daskseg raises on purpose."""


class SegmentationInputError(DaskSegError, ValueError):
    """An input value (mask, source image, segments, option) cannot make a valid SEG."""


class SegmentationFileError(SegmentationInputError):
    """A file to read is truncated, inconsistent or hostile, not a SEG, or of an unsupported kind.

    Its message names the file and what is wrong with it.
    """


class SegmentationTypeError(DaskSegError, TypeError):
    """An input has the wrong type."""


class ClusterError(DaskSegError, RuntimeError):
    """The cluster lost the work and could not recover it (no workers, scheduler gone)."""


class DestinationExistsError(DaskSegError, FileExistsError):
    """The output file exists and ``overwrite`` was not asked for."""
