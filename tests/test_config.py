"""The moment catalogue: defaults, user files merged over them, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, load_catalogue


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "moments.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    catalogue = load_catalogue()
    assert catalogue.window.allowed_lateness == 120_000
    assert catalogue.moments.price_comparison.window == 600_000
    assert catalogue.moments.post_purchase_howto.within == 7 * 86_400_000
    assert catalogue.moments.cart_abandonment.timeout == 30 * 60_000


def test_a_user_file_is_merged_key_by_key_over_the_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [window]
        allowed_lateness = "5m"

        [moments.local_intent]
        threshold = 0.9
        cooldown = 90          # seconds
        keywords = ["curbside"]

        [moments.local_intent.weights]
        local_words = 0.2
        """,
    )
    catalogue = load_catalogue(path)
    local = catalogue.moments.local_intent
    assert (local.threshold, local.cooldown, local.keywords) == (0.9, 90_000, ["curbside"])  # lists replaced
    assert local.weights == {"store_locator_view": 0.7, "local_words": 0.2}
    assert local.ttl == 2 * 3_600_000  # untouched
    assert catalogue.window.allowed_lateness == 300_000
    assert catalogue.window.max_events == 200
    assert catalogue.moments.frustration == load_catalogue().moments.frustration


def test_overrides_apply_after_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[moments.frustration]\nmin_errors = 5\n")
    catalogue = load_catalogue(path, overrides={"moments": {"frustration": {"min_errors": 4}}})
    assert catalogue.moments.frustration.min_errors == 4


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[moments.local_intent]\ntreshold = 0.9\n", "treshold"),
        ("[windows]\nmax_events = 10\n", "windows"),
        ('[moments.frustration]\nwindow = "10 minutes"\n', "$.moments.frustration.window"),
        ("[window]\nallowed_lateness = -5\n", "$.window.allowed_lateness"),
        ("[moments.review_seeking]\nthreshold = 1.5\n", "$.moments.review_seeking.threshold"),
        ("[window]\nmax_events = 0\n", "$.window.max_events"),
        ("[moments.local_intent.weights]\nnearby = 0.3\n", "moments.local_intent.weights"),
        ("[moments.local_intent\n", "moments.toml"),
    ],
    ids=[
        "unknown-key",
        "unknown-table",
        "bad-duration",
        "negative-duration",
        "threshold",
        "cap",
        "weight",
        "toml",
    ],
)
def test_errors_name_the_offending_key(tmp_path: Path, text: str, named: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_catalogue(path)
    assert named in str(raised.value)
    assert str(path) in str(raised.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalogue(tmp_path / "nope.toml")
