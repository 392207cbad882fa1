"""Human-readable durations in configuration files: ``"90s"``, ``"30m"``, ``"7d"``."""

from __future__ import annotations

import re
from typing import Any, Final

_UNITS_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


class Duration(int):
    """A span of time in whole milliseconds.

    >>> Duration.parse("1h30m")
    Duration('90m')
    >>> Duration.parse("250ms") == 250
    True
    """

    @classmethod
    def parse(cls, text: str) -> Duration:
        compact = text.replace(" ", "").lower()
        parts = _PART.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise ValueError(f"invalid duration {text!r}; use e.g. '500ms', '90s', '30m', '2h', '7d'")
        return cls(round(sum(float(n) * _UNITS_MS[u] for n, u in parts)))

    def __repr__(self) -> str:
        return f"Duration({format_duration(self)!r})"


def format_duration(ms: int) -> str:
    """The shortest exact spelling of ``ms``: ``format_duration(5_400_000) == '90m'``."""
    for unit in ("d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def decode_hook(type_: type, value: Any) -> Any:
    """msgspec ``dec_hook``: durations may be written as strings or as seconds."""
    if type_ is Duration:
        if isinstance(value, str):
            return Duration.parse(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return Duration(round(value * 1000))
        raise ValueError(f"expected a duration like '30m' or a number of seconds, got {value!r}")
    raise NotImplementedError(f"no decoder for {type_!r}")
