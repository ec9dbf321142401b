"""daskseg's version, from the installed package's metadata (one place, not copied by hand)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("daskseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
