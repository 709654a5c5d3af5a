"""deploy/: the Prometheus alert rules and the Grafana dashboard are valid, and use only
metrics the daemon really serves.

promtool (Debian package `prometheus`) checks the rules and runs their unit tests; the
dashboard's queries are checked by promtool too, as recording rules. Without promtool
these skip, except under CI (CI=true), where `.ci/run` installs it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from syncd.daemon.metrics import Metrics
from syncd.run.pipeline import Options, open_state, run_once

from conftest import Env, required_tool

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "syncd-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "syncd-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "syncd-dashboard.json"
METRIC = re.compile(r"\bsyncd_[a-z_]+\b")
# Grafana's variables, as a scrape-time query would see them
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1d", "$instance": ".*"}


@pytest.fixture
def promtool() -> str:
    return required_tool("promtool", purpose="the alert rule checks (apt-get install prometheus)")


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False,
                          cwd=cwd)


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_alert_rules_pass_promtool_check_and_their_unit_tests(promtool: str) -> None:
    checked = _promtool(promtool, "check", "rules", str(RULES), cwd=RULES.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_check_catches_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(RULES.read_text().replace("syncd_held_exits > 0", "syncd_held_exits >", 1))
    assert _promtool(promtool, "check", "rules", str(broken), cwd=tmp_path).returncode != 0


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    queries = _dashboard_queries()
    assert queries
    rules = []
    for i, query in enumerate(queries):
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    checked = _promtool(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_is_importable_json() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}


def served_metric_names(env: Env) -> set[str]:
    """Every sample name a live Metrics renders after a real run (histogram suffixes included)."""
    env.shop.members("u1", "u2", "u3")
    config = env.config()
    metrics = Metrics()
    engine = open_state(config)
    try:
        metrics.refresh(config, engine)
        metrics.record_run(run_once(config, Options(latency=metrics.observe_latency), engine=engine))
        metrics.refresh(config, engine)
    finally:
        engine.dispose()
    names = set()
    for line in metrics.render().splitlines():
        if not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_rules_and_dashboard_use_only_metrics_syncd_serves(sqlite_env: Env) -> None:
    served = served_metric_names(sqlite_env)
    assert {"syncd_delivery_latency_seconds_bucket", "syncd_last_run_timestamp_seconds",
            "syncd_held_exits", "syncd_destination_key_refused"} <= served
    rules_text = RULES.read_text()
    dashboard_text = DASHBOARD.read_text()
    used_in_rules = set(METRIC.findall(rules_text))
    used_in_dashboard = set(METRIC.findall(dashboard_text))
    assert used_in_rules and used_in_dashboard
    assert used_in_rules - served == set()
    assert used_in_dashboard - served == set()
    # the rules cover what the brief asks: stale backlog, refused keys, held exits, daemon down
    for needed in ("syncd_oldest_pending_age_seconds", "syncd_destination_key_refused", "syncd_held_exits",
                   "syncd_last_run_timestamp_seconds", "syncd_runs_total"):
        assert needed in used_in_rules
    assert 'up{job="syncd"} == 0' in rules_text
