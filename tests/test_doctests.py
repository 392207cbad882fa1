"""The examples in the package's docstrings run as written."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import app

MODULES = sorted(info.name for info in pkgutil.walk_packages(app.__path__, "app."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


CORE = ["clock", "decoding", "detector", "durations", "scorer", "signals", "triggers", "learning.config"]
CORE += ["learning.features", "learning.labels", "learning.model", "learning.segments", "learning.snapshot"]


@pytest.mark.parametrize("name", CORE)
def test_the_core_modules_have_examples(name: str) -> None:
    module = importlib.import_module(f"app.{name}")
    assert sum(len(test.examples) for test in doctest.DocTestFinder().find(module)) > 0
