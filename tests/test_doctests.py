"""The examples in the docstrings run as written (those marked +SKIP need files or a cluster)."""

from __future__ import annotations

import doctest
import importlib

import pytest

# The modules whose examples run without files; the others' examples need a SEG or a cluster.
MODULES = ["daskseg._codecs", "daskseg._dcmqi", "daskseg.plan", "daskseg.write"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
