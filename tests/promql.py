"""Helpers for the operations files' tests: the real ``promtool``, and the metrics a PromQL query selects."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml
from servers import _missing

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES: Mapping[str, str] = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$instance": ".*",
}

_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"})
_KEYWORDS |= {"bool", "offset", "atan2", "inf", "nan", "Inf", "NaN"}
_AGGREGATORS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile"}
)


def binary(name: str) -> str:
    """The path of ``name`` (promtool, prometheus); skips the test (fails on CI) when missing."""
    found = shutil.which(name)
    if found is None:
        _missing(f"{name} is not on PATH (Debian: apt-get install prometheus)")
        raise AssertionError("unreachable")
    return found


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects: identifiers that are not functions, keywords or labels."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", text)
    text = re.sub(r"(?<![\w:.])\d+(?:\.\d+)?(?:[eE][+-]?\d+|ms|[smhdwy])?\b", " ", text)  # numbers, durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        name = match.group()
        if text[match.end() :].lstrip().startswith("(") or name in _KEYWORDS or name in _AGGREGATORS:
            continue  # a function or aggregation call, or a keyword
        names.add(name)
    return names


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def check_expressions(exprs: Sequence[str], directory: Path) -> list[str]:
    """Parse the expressions with ``promtool check rules``; the complaints, one per bad expression.

    All at once as recording rules of one file; when that fails, one by one to name the culprits.
    """

    def check(batch: Sequence[tuple[int, str]], name: str) -> subprocess.CompletedProcess[str]:
        rules = [{"record": f"parse:query_{index}", "expr": expr} for index, expr in batch]
        path = directory / f"{name}.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "parse", "rules": rules}]}))
        return promtool("check", "rules", str(path))

    numbered = list(enumerate(exprs))
    if check(numbered, "all").returncode == 0:
        return []
    complaints = []
    for index, expr in numbered:
        result = check([(index, expr)], f"query-{index}")
        if result.returncode != 0:
            complaints.append(f"{expr!r}: {result.stdout.strip()} {result.stderr.strip()}")
    return complaints or ["promtool rejects the expressions together but none alone"]
