"""The Grafana dashboard queries only metrics the worker exports, in valid PromQL, and is provisioned."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql import DEPLOY, check_expressions, grafana_to_promql, metric_names

from app.metrics import WorkerMetrics, exported_series

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "micromoments.json"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)  # panels of collapsed rows


def queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every query, Grafana variables substituted."""
    return [
        (panel["title"], grafana_to_promql(target["expr"]))
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
    ]


def variable_queries() -> list[str]:
    """The PromQL inside the dashboard's ``label_values(...)`` variables."""
    found = []
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, f"variable {variable['name']}: {query}"
            found.append(match.group(1))
    return found


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_series(WorkerMetrics().registry)


def test_metric_names_are_found_in_promql() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, operation) (rate(a_seconds_bucket{job="x", le="+Inf"}[5m])))'
    ) == {"a_seconds_bucket"}
    assert metric_names("sum(rate(a_total[1m])) / on (instance) group_left (version) b_info > 1e3") == {
        "a_total",
        "b_info",
    }
    assert metric_names('topk(10, sum without (pod) (c{x=~"a|b"} offset 5m)) unless d') == {"c", "d"}
    assert metric_names("count(a) - 2 * max by (instance) (b)") == {"a", "b"}


def test_every_query_selects_exported_metrics(exported: set[str]) -> None:
    found = [(title, expr) for title, expr in queries()]
    assert len(found) >= 30
    unknown = {
        (title, name)
        for title, expr in [*found, *(("variable", q) for q in variable_queries())]
        for name in metric_names(expr)
        if name not in exported
    }
    assert not unknown, f"queries select metrics the worker does not export: {sorted(unknown)}"
    selected = {name for _, expr in found for name in metric_names(expr)}
    assert all(metric_names(expr) for _, expr in found), "a query that selects no metric"
    # What the issue asks the dashboard to show.
    for wanted in (
        "micromoments_events_consumed_total",  # throughput
        "micromoments_processing_latency_seconds_bucket",  # latency percentiles
        "micromoments_consumer_lag_records",  # lag
        "micromoments_triggers_published_total",  # triggers by moment
        "micromoments_suppressed_total",  # suppression
        "micromoments_dead_letters_total",  # dead letters
        "micromoments_redis_request_duration_seconds_bucket",  # Redis health
        "micromoments_redis_errors_total",
    ):
        assert wanted in selected, f"the dashboard does not show {wanted}"


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    exprs = [expr for _, expr in queries()] + variable_queries()
    assert not check_expressions(exprs, tmp_path)


def test_promtool_rejects_bad_promql(tmp_path: Path) -> None:
    # The check above can fail: a missing parenthesis, an unknown function.
    assert len(check_expressions(["sum(rate(a_total[5m])", "rates(a_total[5m])", "up"], tmp_path)) == 2


def test_panels_are_laid_out_and_unique() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert board["uid"]
    assert board["title"]


def test_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "micromoments.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # docker-compose.yml mounts deploy/grafana/dashboards there (checked in test_compose.py).
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    data_source_variable = next(v for v in dashboard()["templating"]["list"] if v["type"] == "datasource")
    assert data_source_variable["query"] == source["type"]
