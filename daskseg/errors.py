"""Exceptions raised by daskseg.

Each class is also a builtin exception, so callers can catch either::

    DaskSegError
     ├── SegmentationInputError (ValueError)   bad mask, source, segments or options
     ├── SegmentationTypeError (TypeError)     an argument of the wrong kind
     └── ClusterError (RuntimeError)           the Dask cluster could not finish the work
"""

from __future__ import annotations

__all__ = ["DaskSegError", "SegmentationInputError", "SegmentationTypeError", "ClusterError"]


class DaskSegError(Exception):
    """Base class of every exception that daskseg raises on purpose."""


class SegmentationInputError(DaskSegError, ValueError):
    """An input value (mask, source image, segments, option) cannot make a valid SEG."""


class SegmentationTypeError(DaskSegError, TypeError):
    """An input has the wrong type."""


class ClusterError(DaskSegError, RuntimeError):
    """The cluster lost the work and could not recover it (no workers, scheduler gone)."""
