"""app.worker.faust_batch.QuietWorker: the root logger keeps the level it is given."""

from __future__ import annotations

import logging
from pathlib import Path

import faust
import pytest

from app.worker.faust_batch import BatchApp, QuietWorker


@pytest.mark.parametrize("level", [logging.WARNING, logging.ERROR, logging.INFO])
def test_the_root_logger_keeps_its_level(level: int, tmp_path: Path) -> None:
    app = BatchApp("quiet", broker="kafka://127.0.0.1:9", web_enabled=False, datadir=str(tmp_path))
    logger = logging.Logger("a-root")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(level)
    QuietWorker(app, loglevel=level, quiet=True, redirect_stdouts=False).on_setup_root_logger(logger, level)
    assert logger.level == level
    assert not logger.isEnabledFor(logging.DEBUG), "a library's debug records are not even built"
    assert len(logger.handlers) == 1


def test_faust_s_own_worker_would_lower_it(tmp_path: Path) -> None:
    # What QuietWorker leaves out, so that this test fails should Faust stop doing it.
    app = BatchApp("loud", broker="kafka://127.0.0.1:9", web_enabled=False, datadir=str(tmp_path))
    logger = logging.Logger("a-root")
    logger.addHandler(logging.NullHandler())
    faust.Worker(app, loglevel=logging.WARNING, quiet=True, redirect_stdouts=False).on_setup_root_logger(
        logger, logging.WARNING
    )
    assert logger.isEnabledFor(logging.DEBUG)
