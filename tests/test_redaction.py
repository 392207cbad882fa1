"""Logs name customers by a stable pseudonym, unless debug logging is explicitly on."""

from __future__ import annotations

import doctest
import hashlib
import logging
import re

import pytest

import app.privacy
from app.privacy import redact


def test_a_customer_is_named_by_a_short_stable_hash() -> None:
    name = redact("cust-000257")
    assert re.fullmatch(r"c#[0-9a-f]{8}", name)
    assert name == "c#" + hashlib.sha256(b"cust-000257").hexdigest()[:8]
    assert redact("cust-000257") == name, "stable: one customer's lines can be followed"
    assert redact("cust-000258") != name
    assert "cust" not in name


def test_debug_logging_shows_the_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="app")
    assert redact("cust-000257") == "cust-000257"
    caplog.set_level(logging.INFO, logger="app")
    assert redact("cust-000257").startswith("c#")


def test_only_the_apps_own_logger_at_debug_shows_ids(caplog: pytest.LogCaptureFixture) -> None:
    # Debugging a library (the root logger at DEBUG) does not reveal customers.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="app")
    assert redact("cust-000257").startswith("c#")


def test_a_log_line_made_with_it_has_no_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app")
    logging.getLogger("app.worker.agent").info("customer %s forgotten", redact("cust-000257"))
    assert "cust-000257" not in caplog.text
    assert redact("cust-000257") in caplog.text


def test_docstring_examples() -> None:
    result = doctest.testmod(app.privacy)
    assert result.attempted > 0
    assert result.failed == 0
