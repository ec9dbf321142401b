"""Progress bars for long work: tqdm's auto bar (terminal or Jupyter), or nothing when asked."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


class _Silent:
    """A stand-in for a tqdm bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


# The dashboard links printed so far: each once, not again before each bar of one job (a
# pyramid's levels, a folder of cases on one cluster).
_shown_links: set[str] = set()


def progress_bar(total: int, desc: str, *, enabled: bool, client: Any = None, unit: str = "frame"):
    """Return a context-managed bar counting ``total`` units, or a silent one.

    When enabled and a distributed ``client`` is given, the Dask dashboard's address is printed
    first (once in a process), so a user can watch the workers while the bar runs.
    """
    if not enabled:
        return _Silent()
    link = getattr(client, "dashboard_link", None) if client is not None else None
    if link and link not in _shown_links:
        _shown_links.add(link)
        print(f"Dask dashboard: {link}", file=sys.stderr)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
