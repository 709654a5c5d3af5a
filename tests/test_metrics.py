"""The Prometheus text format as syncd writes it, and the HTTP endpoint that serves it."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import httpx
import pytest

from syncd.config import MetricsConfig
from syncd.daemon.metrics import Metrics, MetricsServer
from syncd.errors import MetricsError
from syncd.run.report import PairReport, RunReport

from conftest import free_port, samples


def _report(outcome_ok: bool) -> RunReport:
    report = RunReport(run_id=1, snapshot_at=datetime(2026, 11, 22, 9, 0, tzinfo=UTC))
    report.pairs = [
        PairReport("buyers", "nat", sent=3, acknowledged=2, failed=1, skipped=4,
                   outcome="ok" if outcome_ok else "undelivered"),
        PairReport("buyers", "usercom", sent=3, acknowledged=3),
    ]
    return report


def test_run_counters_and_last_success() -> None:
    metrics = Metrics(clock=lambda: 1_800_000_000.0)
    metrics.record_run(_report(outcome_ok=False))
    metrics.record_run(_report(outcome_ok=True))
    metrics.count_run("skipped")
    got = samples(metrics.render())
    assert got['syncd_runs_total{outcome="undelivered"}'] == 1
    assert got['syncd_runs_total{outcome="ok"}'] == 1
    assert got['syncd_runs_total{outcome="skipped"}'] == 1
    assert got['syncd_changes_sent_total{audience="buyers",destination="nat"}'] == 6
    assert got['syncd_changes_acknowledged_total{audience="buyers",destination="nat"}'] == 4
    assert got['syncd_changes_failed_total{audience="buyers",destination="nat"}'] == 2
    assert got['syncd_changes_skipped_total{audience="buyers",destination="nat"}'] == 8
    assert got['syncd_last_success_timestamp_seconds{audience="buyers",destination="nat"}'] == 1.8e9


def test_every_run_outcome_is_declared_from_the_start() -> None:
    got = samples(Metrics().render())
    reports = [_report(outcome_ok=True), _report(outcome_ok=False)]
    held = _report(outcome_ok=True)
    held.pairs[0].outcome = "held"
    interrupted = _report(outcome_ok=True)
    interrupted.interrupted = True
    outcomes = {r.outcome for r in (*reports, held, interrupted)} | {"skipped", "error"}  # scheduler's
    assert outcomes == {"ok", "undelivered", "held", "interrupted", "skipped", "error"}
    for outcome in outcomes:
        assert got[f'syncd_runs_total{{outcome="{outcome}"}}'] == 0


def test_latency_histogram_buckets_are_cumulative() -> None:
    metrics = Metrics()
    for seconds in (0.01, 0.2, 0.2, 3.0, 100.0):
        metrics.observe_latency("nat", seconds)
    got = samples(metrics.render())
    bucket = 'syncd_delivery_latency_seconds_bucket{destination="nat",le="%s"}'
    assert got[bucket % "0.025"] == 1
    assert got[bucket % "0.25"] == 3
    assert got[bucket % "5"] == 4
    assert got[bucket % "30"] == 4
    assert got[bucket % "+Inf"] == 5
    assert got['syncd_delivery_latency_seconds_count{destination="nat"}'] == 5
    assert got['syncd_delivery_latency_seconds_sum{destination="nat"}'] == pytest.approx(103.41)


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.count_run('we"ird\\')
    assert 'syncd_runs_total{outcome="we\\"ird\\\\"} 1' in metrics.render()


def test_server_serves_metrics_and_404_elsewhere() -> None:
    metrics = Metrics()
    metrics.count_run("ok")
    server = MetricsServer(metrics, MetricsConfig("127.0.0.1", free_port()))
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        response = httpx.get(f"{base}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert 'syncd_runs_total{outcome="ok"} 1' in response.text
        assert httpx.get(f"{base}/metric").status_code == 404
    finally:
        server.stop()


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}: "
                                               "Address already in use"):
            MetricsServer(Metrics(), MetricsConfig("127.0.0.1", port))
