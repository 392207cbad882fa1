"""The alert rules and scrape configuration, checked and unit-tested with the real ``promtool``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from promql import DEPLOY, metric_names, promtool

from app.metrics import WorkerMetrics, exported_series

PROMETHEUS = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
# Series Prometheus makes itself for every scrape target.
SCRAPE_SERIES = {"up"}


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def test_rule_files_are_valid() -> None:
    assert RULE_FILES
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_unit_tests() -> None:
    assert TEST_FILES
    result = promtool("test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_fail_on_a_broken_rule(tmp_path: Path) -> None:
    # The same tests against rules with one threshold changed: promtool must notice.
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    for path in RULE_FILES:
        text = path.read_text()
        assert "> 0.025" in text
        (tmp_path / "rules" / path.name).write_text(text.replace("> 0.025", "> 0.02"))
    for path in TEST_FILES:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    result = promtool("test", "rules", *(str(tmp_path / "tests" / p.name) for p in TEST_FILES))
    assert result.returncode != 0
    assert "MicromomentsLatencyOverObjective" in result.stdout + result.stderr


def test_every_alert_has_a_runbook_and_is_tested() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    # What the issue asks for, at least.
    for wanted in (
        "MicromomentsConsumerLagGrowing",
        "MicromomentsDeadLetterRate",
        "MicromomentsLatencyOverObjective",
        "MicromomentsRedisErrors",
        "MicromomentsNoTriggers",
        "MicromomentsWorkerDown",
    ):
        assert wanted in names
    firing: dict[str, int] = {}
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    firing[check["alertname"]] = firing.get(check["alertname"], 0) + 1
    for rule in alerts():
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= annotations.keys(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert firing.get(rule["alert"]), f"no unit test makes {rule['alert']} fire"


def test_rules_select_exported_metrics() -> None:
    exported = exported_series(WorkerMetrics().registry) | SCRAPE_SERIES
    for rule in alerts():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']}: {names - exported}"


def test_scrape_config_is_valid_and_loads_the_rules() -> None:
    path = PROMETHEUS / "prometheus.yml"
    result = promtool("check", "config", "--syntax-only", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "micromoments"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # The rules select job="micromoments".
    assert all('job="micromoments"' in rule["expr"] for rule in alerts() if "up{" in rule["expr"])
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_readme_documents_every_alert() -> None:
    readme = (DEPLOY.parent / "README.md").read_text()
    for rule in alerts():
        assert f"| `{rule['alert']}` |" in readme, f"the README's alerts table lacks {rule['alert']}"
