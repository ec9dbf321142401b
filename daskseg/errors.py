"""Exceptions raised by daskseg.

Each class is also a builtin exception, so callers can catch either::

    DaskSegError
     ├── SegmentationInputError (ValueError)   bad mask, source, segments or options
     │    └── SegmentationFileError            a file to read is damaged, not a SEG, or unsupported
     ├── SegmentationTypeError (TypeError)     an argument of the wrong kind
     ├── ClusterError (concurrent.futures.BrokenExecutor, a RuntimeError)
     │                                         the Dask cluster could not finish the work
     ├── DestinationExistsError (FileExistsError)  the output exists and overwrite is False
     ├── MissingDependencyError (ImportError)  an optional feature's extra is not installed
     └── DICOMwebError (OSError)               a DICOMweb server down, too slow, or refusing
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

__all__ = [
    "ClusterError",
    "DICOMwebError",
    "DaskSegError",
    "DestinationExistsError",
    "MissingDependencyError",
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


class ClusterError(DaskSegError, BrokenExecutor):
    """The cluster lost the work and could not recover it (no workers, scheduler gone).

    A ``concurrent.futures.BrokenExecutor`` (so a ``RuntimeError``), as a process pool's
    ``BrokenProcessPool``: code written for executors catches a :class:`DaskExecutor`'s too.
    """


class DestinationExistsError(DaskSegError, FileExistsError):
    """The output file exists and ``overwrite`` was not asked for."""


class MissingDependencyError(DaskSegError, ImportError):
    """An optional feature needs a package that is not installed; the message names the extra."""


class DICOMwebError(DaskSegError, OSError):
    """A DICOMweb server could not be reached, did not answer in time, or refused a request.

    ``url`` is the request's URL without credentials; ``status`` the HTTP status, if any.
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
