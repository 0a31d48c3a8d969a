"""The runnable examples in the alerts docstrings are tests: they must keep working."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["finsent.alerts.ewma_z", "finsent.alerts.cusum", "finsent.alerts.detector"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
