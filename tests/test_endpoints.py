"""/healthz, /readyz and the status page at / (syncd.probes, syncd.page, MetricsServer)."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from test_daemon import start_daemon, stop_daemon, wait_for

from syncd.config import MetricsConfig
from syncd.daemon.metrics import Endpoints, Metrics, MetricsServer
from syncd.daemon.page import render
from syncd.daemon.probes import Cached, Liveness, readiness
from syncd.daemon.scheduler import _start_scheduler
from syncd.run.pipeline import open_state
from syncd.state.engine import create_state_engine, migrate
from syncd.state.operator import RunSummary
from syncd.state.readings import PairReading, Reading

from conftest import Env, audience_toml, free_port, samples
from conftest import wait_for as wait_for_condition

Serve = Callable[..., str]


@pytest.fixture
def serve() -> Iterator[Serve]:
    servers: list[MetricsServer] = []

    def start(endpoints: Endpoints, metrics: Metrics | None = None) -> str:
        server = MetricsServer(metrics or Metrics(), MetricsConfig("127.0.0.1", free_port()), endpoints)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


def test_probes_say_503_with_a_reason_until_the_daemon_fills_them_in(serve: Serve) -> None:
    endpoints = Endpoints()
    base = serve(endpoints)
    assert httpx.get(f"{base}/healthz").status_code == 503
    assert (httpx.get(f"{base}/readyz").status_code, httpx.get(f"{base}/readyz").text) == (
        503, "not ready: starting\n")
    assert httpx.get(f"{base}/").status_code == 503

    endpoints.alive, endpoints.ready = (lambda: True), (lambda: "")
    endpoints.page = lambda: "<!DOCTYPE html><p>hi</p>"
    health, ready, page = (httpx.get(f"{base}{p}") for p in ("/healthz", "/readyz", "/"))
    assert (health.status_code, health.text) == (200, "ok\n")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in page.headers["content-security-policy"]

    endpoints.alive = lambda: False
    assert httpx.get(f"{base}/healthz").status_code == 503


def test_only_get_and_head_on_known_paths(serve: Serve) -> None:
    base = serve(Endpoints(alive=lambda: True))
    head = httpx.head(f"{base}/metrics")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    assert httpx.get(f"{base}/metrics?x=1").status_code == 200
    assert httpx.get(f"{base}/admin").status_code == 404
    assert httpx.get(f"{base}/healthz/").status_code == 404
    post = httpx.post(f"{base}/healthz")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


def test_liveness_goes_stale_when_the_scheduler_stops_ticking() -> None:
    now = [100.0]
    pulse = Liveness(clock=lambda: now[0], stale_after=60)
    assert not pulse()  # never ticked: starting
    pulse.tick()
    now[0] += 59
    assert pulse()
    now[0] += 2
    assert not pulse()


def test_the_scheduler_ticks_the_pulse_once_it_runs(sqlite_env: Env) -> None:
    now = [0.0]
    pulse = Liveness(clock=lambda: now[0], stale_after=60)
    config = sqlite_env.config()
    engine = open_state(config)
    scheduler, _ = _start_scheduler(config, engine, lambda: None, pulse)
    try:
        assert not pulse()  # paused: READY is not sent yet, nothing ticks
        scheduler.resume()
        wait_for_condition(lambda: pulse.last_tick is not None, what="the first tick")
        assert pulse()
    finally:
        scheduler.shutdown(wait=True)
        engine.dispose()
    now[0] = 61.0  # a minute without a tick (the scheduler is gone): not alive
    assert not pulse()


def test_cached_answers_are_reused_for_their_ttl() -> None:
    now, calls = [0.0], []
    cached = Cached(lambda: calls.append(1) or len(calls), ttl=5, clock=lambda: now[0])
    assert (cached(), cached()) == (1, 1)
    now[0] = 5.0
    assert cached() == 2


def test_readiness_of_a_migrated_and_an_unmigrated_state(state_url: str) -> None:
    engine = create_state_engine(state_url)
    try:
        reason = readiness(engine)()
        assert reason.startswith("state database not migrated: at revision none, this syncd needs ")
        migrate(engine)
        assert readiness(engine)() == ""
    finally:
        engine.dispose()


def test_readiness_of_an_unreachable_state() -> None:
    engine = create_state_engine(f"postgresql+psycopg://syncd:pw-SECRET@127.0.0.1:{free_port()}/nothere")
    try:
        reason = readiness(engine)()
    finally:
        engine.dispose()
    assert reason.startswith("state database unreachable: ") and "\n" not in reason
    assert "pw-SECRET" not in reason


def test_readyz_is_503_on_an_unmigrated_state_over_http(tmp_path: Path, serve: Serve) -> None:
    sqlite3.connect(tmp_path / "old.db").close()
    engine = create_state_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        response = httpx.get(f"{serve(Endpoints(ready=readiness(engine)))}/readyz")
    finally:
        engine.dispose()
    assert response.status_code == 503
    assert response.text.startswith("not ready: state database not migrated: at revision none")
    assert response.text.count("\n") == 1


def _data() -> Reading:
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    pairs = [PairReading("buyers", "nat", members=120, acknowledged=100, pending=20, failed=3, skipped=0,
                         oldest_pending_at=now - timedelta(hours=7, minutes=5),
                         oldest_pending_age_seconds=7 * 3600 + 5 * 60, last_outcome="undelivered"),
             PairReading("buyers", "<b>&co", members=5, acknowledged=5, pending=0, failed=0, skipped=0,
                         held_exits=12, last_outcome="held")]
    started = [now - timedelta(hours=3 * i) for i in range(4)]
    runs = [RunSummary(id=i, started_at=started[i], snapshot_at=started[i], finished_at=None, outcome="ok",
                       host="h", pid=1, entered=0, left=0, sent=10 * i, acknowledged=9 * i, skipped=0,
                       failed=i, pending=0, pairs=1, held=0, source_errors=0)
            for i in range(3, 0, -1)]
    return Reading(now, pairs, runs, {})


def test_render_is_escaped_self_contained_and_phone_ready() -> None:
    html = render(_data())
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert '<meta http-equiv="refresh" content="30">' in html
    assert '<td data-label="Destination" class="l">&lt;b&gt;&amp;co</td>' in html and "<b>&co" not in html
    assert "7h05m" in html  # the oldest pending change's age
    assert html.count("<rect ") == 9  # 3 runs x sent/acknowledged/failed
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_the_chart_stays_readable_after_a_large_initial_send() -> None:
    """An initial send of 5,165, then runs of 3 and 1 changes: on a linear scale those were
    0.1-pixel bars; on the log scale they are about a sixth and a twelfth of the chart's
    height, and the gridlines and the peak say what a height means."""
    now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    runs = [RunSummary(id=i, started_at=now, snapshot_at=now, finished_at=now, outcome="ok", host="h", pid=1,
                       entered=sent, left=0, sent=sent, acknowledged=sent, skipped=0, failed=0, pending=0,
                       pairs=1, held=0, source_errors=0)
            for i, sent in ((3, 1), (2, 3), (1, 5165))]
    html = render(Reading(now, [], runs, {}))
    sent = [float(h) for h in re.findall(r'<rect class="sent" [^>]*height="([\d.]+)"', html)]
    assert sent[0] == 160  # oldest first: the initial send fills the chart
    assert sent[1] > 20 and sent[2] > 10, sent
    assert "log scale" in html and ">5165<" in html and ">1k<" in html and ">10<" in html


def test_a_page_that_cannot_read_the_state_says_why_in_one_whole_line(
        serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The warning is the database's own message: SQLAlchemy's statement and documentation
    link are left out, not cut off in the middle ("(Background on this error at:")."""
    engine = create_engine(f"sqlite:///{tmp_path / 'state.db'}")

    def broken_page() -> str:
        with engine.connect() as conn:
            conn.execute(text("SELECT " + ", ".join(f"column_{i}" for i in range(40)) + " FROM nowhere"))
        return ""

    endpoints = Endpoints()
    endpoints.page = broken_page
    try:
        response = httpx.get(serve(endpoints) + "/", timeout=5)
    finally:
        engine.dispose()
    assert response.status_code == 503 and response.text == "the state database cannot be read now\n"
    warning = next(r.getMessage() for r in caplog.records if "status page" in r.getMessage())
    assert warning == "status page: cannot read the state database: no such table: nowhere"


def test_render_without_runs_or_audiences() -> None:
    html = render(Reading(datetime(2026, 11, 28, tzinfo=UTC), [], [], {}))
    assert "No runs yet." in html and "No audiences configured." in html and "<svg" not in html


def test_live_daemon_probes_page_and_new_gauges(env: Env) -> None:
    """A real `syncd run`: healthy and ready; the page and the gauges show a held exit and a
    refused key from the ledger."""
    ids = [f"u{i:02d}" for i in range(20)]
    env.shop.members(*ids)
    env.run(env.config(audiences=audience_toml("Buyers", ["nat"])))  # 20 acknowledged at Nat
    env.shop.members()  # everyone leaves: the guard holds the 20 exits
    port = free_port()
    config = env.write_config(extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
                              audiences=audience_toml("Buyers", ["nat"]))
    base = f"http://127.0.0.1:{port}"
    process = start_daemon(env, config)

    def get(path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"{base}{path}", timeout=5)
        except httpx.TransportError:
            return None

    def ran() -> bool:
        response = get("/metrics")
        return response is not None and samples(response.text).get('syncd_runs_total{outcome="undelivered"}',
                                                                   0) + samples(response.text).get(
            'syncd_runs_total{outcome="held"}', 0) >= 1

    try:
        wait_for(ran, process)
        health, ready = get("/healthz"), get("/readyz")
        page, metrics = get("/"), get("/metrics")
    finally:
        if process.poll() is None:
            stop_daemon(process)
    assert health is not None and ready is not None and page is not None and metrics is not None
    assert (health.status_code, ready.status_code, page.status_code) == (200, 200, 200)
    got = samples(metrics.text)
    assert got['syncd_held_exits{audience="buyers",destination="nat"}'] == 20
    assert got['syncd_destination_key_refused{destination="nat"}'] == 0
    assert got["syncd_last_run_timestamp_seconds"] > 1.7e9
    assert "<td>20</td>" in page.text and ">held<" in page.text
    assert "@example.com" not in page.text and "u01" not in page.text


def test_key_refused_gauge_after_a_401(sqlite_env: Env) -> None:
    sqlite_env.shop.members("u1", "u2")
    config = sqlite_env.config(keys={"NAT_API_KEY": "revoked-key"})
    sqlite_env.run(config)
    metrics = Metrics()
    engine = create_state_engine(sqlite_env.state_url)
    try:
        metrics.refresh(config, engine)
    finally:
        engine.dispose()
    got = samples(metrics.render())
    assert got['syncd_destination_key_refused{destination="nat"}'] == 1
    assert got['syncd_destination_key_refused{destination="usercom"}'] == 0
    assert got['syncd_held_exits{audience="buyers",destination="usercom"}'] == 0
