"""Topic checks at start-up (app.worker.kafka), with a broker whose metadata lags behind its creations."""

from __future__ import annotations

from typing import Any

from app.worker.kafka import _partitions


class LaggingAdmin:
    """Says "unknown topic" for topics it created until asked ``lag`` times."""

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.asked = 0

    async def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        self.asked += 1
        if self.asked <= self.lag:
            return [{"topic": t, "error_code": 3, "partitions": []} for t in topics]
        return [
            {"topic": t, "error_code": 0, "partitions": [{"partition": 0}, {"partition": 1}]} for t in topics
        ]


async def test_topics_just_created_are_waited_for_until_the_broker_knows_them() -> None:
    admin = LaggingAdmin(lag=3)
    assert await _partitions(admin, ["a", "b"], created=True) == {"a": 2, "b": 2}  # type: ignore[arg-type]
    assert admin.asked == 4


async def test_topics_not_created_here_are_asked_about_once() -> None:
    admin = LaggingAdmin(lag=3)
    assert await _partitions(admin, ["a"], created=False) == {}  # type: ignore[arg-type]
    assert admin.asked == 1
