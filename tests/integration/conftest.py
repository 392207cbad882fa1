"""Fixtures of the streaming integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Workers


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Worker processes a test starts; each is stopped afterwards, and its log shown on failure."""
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.close()
