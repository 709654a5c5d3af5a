"""[alerts]: one webhook message per change of state, told to a real HTTP receiver on 127.0.0.1.

Each condition raises its alert once and a `resolved` message once it clears; a failing
webhook is retried after the next run; a restart or a second process never repeats one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from syncd.config import load_config
from syncd.daemon.metrics import Metrics
from syncd.errors import ConfigError
from syncd.run.alerts import ALERT_TIME_LIMIT
from syncd.state.engine import create_state_engine

from conftest import HOOK_SECRET, KEYS_ENV, Env, audience_toml, dump_state, free_port, wait_for

FIELDS = {"event", "severity", "audience", "destination", "message", "run_id", "at"}


class Hook:
    """A webhook receiver: records every JSON body POSTed to its secret path."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # answers for the next calls (then 200)
        self.delay = 0.0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                delay = hook.delay
                time.sleep(delay)
                status = hook.statuses.pop(0) if hook.statuses else 200
                if delay > ALERT_TIME_LIMIT:  # the client gave up: this one never counts
                    status = 504
                if status == 200 and self.path == f"/services/{HOOK_SECRET}":
                    hook.bodies.append(json.loads(raw))
                self.send_response(status if self.path == f"/services/{HOOK_SECRET}" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{HOOK_SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[Any, ...]]:
        return [(b["event"], b["severity"], b["audience"], b["destination"]) for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


def alerts_toml(**options: Any) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n[alerts]\nwebhook_url_env = \"SYNCD_ALERT_WEBHOOK\"\n" + "".join(f"{x}\n" for x in lines)


def _config(env: Env, hook_url: str, keys: dict[str, str] | None = None,
            audiences: str | None = None, **options: Any) -> Any:
    return env.config(keys={"SYNCD_ALERT_WEBHOOK": hook_url, **(keys or {})},
                      audiences=audiences or audience_toml("Buyers", ["nat"]),
                      extra=alerts_toml(**options))


def test_key_refused_then_resolved_in_json(env: Env, hook: Hook) -> None:
    env.shop.members("u1", "u2")
    refused = env.run(_config(env, hook.url, keys={"NAT_API_KEY": "wrong-key"}, after_failed_runs=5))
    assert refused.exit_code == 1
    assert len(hook.bodies) == 1
    alert = hook.bodies[0]
    assert set(alert) == FIELDS
    assert (alert["event"], alert["severity"], alert["audience"], alert["destination"]) == (
        "key_refused", "critical", None, "nat")
    assert alert["run_id"] == refused.run_id
    assert "api_key_env" in alert["message"] and alert["at"].endswith("Z")

    env.run(_config(env, hook.url, keys={"NAT_API_KEY": "wrong-key"}, after_failed_runs=5))  # no repeat
    assert hook.events() == [("key_refused", "critical", None, "nat")]

    fixed = env.run(_config(env, hook.url))
    assert fixed.exit_code == 0 and len(env.nat.accepted()) == 2
    assert hook.events() == [("key_refused", "critical", None, "nat"),
                             ("key_refused", "resolved", None, "nat")]
    assert "accepts the API key again" in hook.bodies[1]["message"]
    assert "wrong-key" not in json.dumps(hook.bodies)
    assert HOOK_SECRET not in dump_state(env.state_url)


def test_slack_format_is_short_text_naming_the_destination(sqlite_env: Env, hook: Hook) -> None:
    sqlite_env.shop.members("u1")
    sqlite_env.run(_config(sqlite_env, hook.url, keys={"NAT_API_KEY": "wrong-key"}, format="slack"))
    assert len(hook.bodies) == 1 and set(hook.bodies[0]) == {"text"}
    text = hook.bodies[0]["text"]
    assert text.startswith("[CRITICAL] syncd: API key refused (destination nat)\n")
    assert "[destinations.nat]" in text and len(text) < 400


def test_held_exits_alert_then_resolved_after_approve(env: Env, hook: Hook) -> None:
    ids = [f"u{i:02d}" for i in range(20)]
    env.shop.members(*ids)
    config = _config(env, hook.url)
    env.run(config)
    env.shop.members(*ids[:5])  # 15 of 20 leave: held
    env.run(config)
    assert hook.events() == [("exits_held", "warning", "buyers", "nat")]
    assert "syncd approve" in hook.bodies[0]["message"]

    path = str(env.tmp_path / "config.toml")
    approve = env.cli("approve", "--audience", "buyers", "--config", path,
                      env={"SYNCD_ALERT_WEBHOOK": hook.url})
    assert approve.returncode == 0, approve.stderr
    env.run(config)
    assert hook.events()[1:] == [("exits_held", "resolved", "buyers", "nat")]


def test_stale_backlog_alert_then_resolved(env: Env, hook: Hook) -> None:
    config = _config(env, hook.url, pending_older_than="6h", after_failed_runs=10)
    env.shop.members("u1", "u2")
    env.nat.down = True
    with freeze_time("2026-11-20 09:00:00", real_asyncio=True):
        env.run(config)
    with freeze_time("2026-11-20 14:00:00", real_asyncio=True):  # 5 h: not yet
        env.run(config)
    assert hook.bodies == []
    with freeze_time("2026-11-20 15:30:00", real_asyncio=True):
        env.run(config)
    assert hook.events() == [("backlog_stale", "warning", "buyers", "nat")]
    assert "2 changes" in hook.bodies[0]["message"]
    assert "2026-11-20 09:00Z" in hook.bodies[0]["message"]

    env.nat.down = False
    env.run(config)
    assert hook.events()[1:] == [("backlog_stale", "resolved", "buyers", "nat")]


def test_runs_undelivered_in_a_row(env: Env, hook: Hook) -> None:
    config = _config(env, hook.url, after_failed_runs=3)
    env.shop.members("u1")
    env.nat.down = True
    env.run(config)
    env.run(config)
    assert hook.bodies == []
    env.run(config)
    assert hook.events() == [("runs_undelivered", "critical", None, None)]
    assert "last 3 runs" in hook.bodies[0]["message"]
    env.run(config)  # a fourth: no repeat
    env.nat.down = False
    env.run(config)
    assert hook.events()[1:] == [("runs_undelivered", "resolved", None, None)]


def test_query_failure_then_resolved(env: Env, hook: Hook) -> None:
    env.shop.members("u1")
    broken = audience_toml("Buyers", ["nat"], query="SELECT id AS user_id FROM no_such_table")
    env.run(_config(env, hook.url, audiences=broken))
    assert hook.events() == [("query_failed", "critical", "buyers", None)]
    assert "no_such_table" in hook.bodies[0]["message"]
    env.run(_config(env, hook.url))
    assert hook.events()[1:] == [("query_failed", "resolved", "buyers", None)]


def test_failing_webhook_is_logged_and_retried_after_the_next_run(
        env: Env, hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    env.shop.members("u1")
    hook.statuses = [500]
    config = _config(env, hook.url, keys={"NAT_API_KEY": "wrong-key"}, after_failed_runs=5)
    env.run(config)
    assert hook.bodies == []
    assert "alert webhook answered HTTP 500: the key_refused critical alert is sent again" in caplog.text
    env.run(config)
    assert hook.events() == [("key_refused", "critical", None, "nat")]


def test_unreachable_webhook_never_fails_a_sync(sqlite_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    sqlite_env.shop.members("u1")
    closed = f"http://127.0.0.1:{free_port()}/services/{HOOK_SECRET}"
    report = sqlite_env.run(_config(sqlite_env, closed, audiences=audience_toml(
        "Buyers", ["nat"], query="SELECT id AS user_id FROM no_such_table")))
    assert report.audience_errors and report.pairs  # the run itself went through to the end
    assert "alert webhook unreachable (ConnectError)" in caplog.text
    ok = sqlite_env.run(_config(sqlite_env, closed))
    assert ok.exit_code == 0 and sqlite_env.nat.accepted()


def test_slow_webhook_times_out_and_is_retried(sqlite_env: Env, hook: Hook,
                                               caplog: pytest.LogCaptureFixture) -> None:
    sqlite_env.shop.members("u1")
    config = _config(sqlite_env, hook.url, keys={"NAT_API_KEY": "wrong-key"}, after_failed_runs=5)
    hook.delay = ALERT_TIME_LIMIT + 1
    assert sqlite_env.run(config).exit_code == 1  # the run's own outcome, unchanged
    assert "alert webhook unreachable (ReadTimeout)" in caplog.text
    hook.delay = 0
    sqlite_env.run(config)
    assert [e for e in hook.events() if e[0] == "key_refused"] == [("key_refused", "critical", None, "nat")]


def test_no_duplicate_after_restart(env: Env, hook: Hook) -> None:
    env.shop.members("u1")
    path = str(env.write_config(audiences=audience_toml("Buyers", ["nat"]),
                                extra=alerts_toml(after_failed_runs=5)))
    keys = {"SYNCD_ALERT_WEBHOOK": hook.url, "NAT_API_KEY": "wrong-key"}
    for _ in range(2):  # two processes, one after the other
        result = env.cli("run-once", "--config", path, env=keys)
        assert result.returncode == 1 and HOOK_SECRET not in result.stderr
    assert hook.events() == [("key_refused", "critical", None, "nat")]


TELL = """
import sys
from syncd.run.alerts import Condition, deliver
from syncd.config import load_config
from syncd.state.engine import create_state_engine
config = load_config(sys.argv[1]).with_secrets()
engine = create_state_engine(config.state_url)
print(deliver(config.alerts, engine, [Condition("key_refused", None, "nat", True, "refused")], 1))
"""


def test_two_processes_sharing_the_state_alert_once(env: Env, hook: Hook) -> None:
    path = env.write_config(extra=alerts_toml())
    env.run(load_config(path, {**KEYS_ENV, "SYNCD_ALERT_WEBHOOK": hook.url}))  # migrates
    hook.delay = 1.0  # the first one is still telling the webhook when the second one looks
    procs = [subprocess.Popen([sys.executable, "-c", TELL, str(path)], cwd=env.tmp_path,
                              env={**os.environ, **KEYS_ENV, "SYNCD_ALERT_WEBHOOK": hook.url},
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    sent = sorted(int(p.communicate(timeout=60)[0].strip()) for p in procs)
    assert sent == [0, 1]
    assert hook.events() == [("key_refused", "critical", None, "nat")]


@pytest.mark.parametrize(("table", "problem"), [
    ('webhook_url_env = "SYNCD_ALERT_WEBHOOK"\nchannel = "x"', "alerts.channel: unknown key"),
    ('webhook_url_env = "SYNCD_ALERT_WEBHOOK"\nwebhook_url_file = "/x"',
     "alerts: set only one of webhook_url_env or webhook_url_file"),
    ('webhook_url_env = "NOT_SET_HERE"', "alerts.webhook_url_env: environment variable NOT_SET_HERE"),
    ('webhook_url_env = "SYNCD_ALERT_WEBHOOK"\nformat = "teams"', "alerts.format: unknown format"),
    ('webhook_url_env = "SYNCD_ALERT_WEBHOOK"\nafter_failed_runs = 0', "alerts.after_failed_runs"),
    ('webhook_url_env = "SYNCD_ALERT_WEBHOOK"\npending_older_than = "soon"',
     "alerts.pending_older_than"),
    ('webhook_url_env = "BAD_HOOK"', "alerts.webhook_url_env: the webhook URL is not an http(s) URL"),
])
def test_alerts_config_errors(tmp_path: Path, table: str, problem: str) -> None:
    path = _alerts_config(tmp_path, table)
    environ = {**KEYS_ENV, "SYNCD_ALERT_WEBHOOK": f"https://hooks.example/{HOOK_SECRET}",
               "BAD_HOOK": f"ftp://hooks.example/{HOOK_SECRET}"}
    with pytest.raises(ConfigError) as error:
        load_config(path, environ).with_secrets()  # the URL is read only by the commands that send
    assert problem in str(error.value) and HOOK_SECRET not in str(error.value)


def test_alerts_config_defaults_and_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "hook"
    secret_file.write_text(f"https://hooks.example/{HOOK_SECRET}\n")
    path = _alerts_config(tmp_path, f'webhook_url_file = "{secret_file}"')
    alerts = load_config(path, KEYS_ENV).with_secrets().alerts
    assert alerts is not None and alerts.resolved_url.reveal().endswith(HOOK_SECRET)
    assert (alerts.format, alerts.pending_older_than.total_seconds(), alerts.after_failed_runs) == (
        "json", 6 * 3600, 2)
    assert HOOK_SECRET not in repr(alerts)



def test_the_daemon_alerts_after_its_runs(sqlite_env: Env, hook: Hook) -> None:
    sqlite_env.shop.members("u1")
    path = sqlite_env.write_config(audiences=audience_toml("Buyers", ["nat"]), extra=alerts_toml())
    process = subprocess.Popen(
        [sys.executable, "-m", "syncd", "run", "--config", str(path)], cwd=sqlite_env.tmp_path,
        env={**os.environ, **KEYS_ENV, "NAT_API_KEY": "wrong-key", "SYNCD_ALERT_WEBHOOK": hook.url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: bool(hook.bodies), what="the daemon's first alert")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert hook.events() == [("key_refused", "critical", None, "nat")]
    assert process.returncode == 0 and HOOK_SECRET not in stderr and "Traceback" not in stderr


def _alerts_config(tmp_path: Path, alerts_table: str) -> Path:
    """A small config whose [alerts] table is `alerts_table`."""
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent("""
        [sources.shop]
        url = "sqlite:///shop.db"
        [destinations.nat]
        type = "nat"
        endpoint = "https://nat.example/segment"
        api_key_env = "NAT_API_KEY"
        [[audiences]]
        name = "Buyers"
        source = "shop"
        destinations = ["nat"]
        query = "SELECT id AS user_id FROM customers"
        [alerts]
    """) + alerts_table + "\n")
    return path


def test_the_metrics_show_the_reading_the_alerts_judged(env: Env, hook: Hook) -> None:
    """A daemon run reads the state once: the run hands back the reading its alerts judged,
    and the gauges shown from it are those a fresh reading gives. Without [alerts] a run
    reads nothing for them."""
    env.shop.members("u1", "u2", "u3")
    env.nat.down = True
    config = _config(env, hook.url)
    with freeze_time("2026-11-22 09:00:00", real_asyncio=True):
        report = env.run(config)
        assert env.run(env.config(audiences=audience_toml("Buyers", ["nat"]))).reading is None
    assert report.reading is not None
    (pair,) = report.reading.pairs
    assert (pair.pending, pair.acknowledged, pair.last_outcome) == (3, 0, "undelivered")
    assert pair.oldest_pending_at is not None and report.reading.runs[0].id == report.run_id

    clock = datetime(2026, 11, 22, 10, tzinfo=UTC).timestamp
    shared, fresh = Metrics(clock=clock), Metrics(clock=clock)
    shared.show(report.reading)
    engine = create_state_engine(env.state_url)
    try:
        fresh.refresh(config, engine)
    finally:
        engine.dispose()
    assert shared.render() == fresh.render()
    assert 'syncd_pending_changes{audience="buyers",destination="nat"} 3' in shared.render()


# --- alerts you can test, and alerts of what left the config -----------------------------


@pytest.mark.parametrize("kind", ["json", "slack"])
def test_check_alert_sends_one_test_message(sqlite_env: Env, hook: Hook, kind: str) -> None:
    path = sqlite_env.write_config(audiences=audience_toml("Buyers", ["nat"]), extra=alerts_toml(format=kind))
    result = sqlite_env.cli("check", "--alert", "--config", str(path), env={"SYNCD_ALERT_WEBHOOK": hook.url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"alert webhook: ok: test message delivered ({kind} format)"
    assert len(hook.bodies) == 1
    if kind == "slack":
        assert hook.bodies[0]["text"].startswith("[INFO] syncd: test message\na test message from "
                                                 "`syncd check --alert` on ")
        return
    body = hook.bodies[0]
    assert set(body) == FIELDS and (body["event"], body["severity"], body["run_id"]) == ("test", "info", None)
    assert "syncd's alerts reach this webhook" in body["message"]
    assert not (sqlite_env.tmp_path / "state.db").exists()  # check opens no state database
    assert sqlite_env.nat.requests == 0


def test_check_alert_names_a_webhook_that_is_down_or_refuses(sqlite_env: Env, hook: Hook) -> None:
    path = sqlite_env.write_config(audiences=audience_toml("Buyers", ["nat"]), extra=alerts_toml())
    closed = f"http://127.0.0.1:{free_port()}/services/{HOOK_SECRET}"
    down = sqlite_env.cli("check", "--alert", "--json", "--config", str(path),
                          env={"SYNCD_ALERT_WEBHOOK": closed})
    assert down.returncode == 1
    assert json.loads(down.stdout)[-1] == {
        "check": "alert", "source": None, "audience": None, "destination": None, "ok": False,
        "message": "test message not delivered: webhook unreachable (ConnectError)"}
    hook.statuses = [404]
    refused = sqlite_env.cli("check", "--alert", "--config", str(path), env={"SYNCD_ALERT_WEBHOOK": hook.url})
    assert refused.returncode == 1 and hook.bodies == []
    assert refused.stdout.splitlines()[-2:] == [
        "alert webhook: FAILED: test message not delivered: webhook answered HTTP 404",
        "1 check failed: alert webhook"]
    assert HOOK_SECRET not in down.stdout + down.stderr + refused.stdout + refused.stderr


def test_check_fails_when_the_webhook_url_cannot_be_read(sqlite_env: Env) -> None:
    """`run` would exit 2 on it: so does `check`, naming where the URL should come from."""
    path = sqlite_env.write_config(audiences=audience_toml("Buyers", ["nat"]), extra=alerts_toml())
    env = {k: v for k, v in os.environ.items() if k != "SYNCD_ALERT_WEBHOOK"}
    result = subprocess.run([sys.executable, "-m", "syncd", "check", "--config", str(path)], env=env,
                            cwd=sqlite_env.tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"syncd: {path}: alerts.webhook_url_env: environment variable "
                             "SYNCD_ALERT_WEBHOOK is not set\n")
    without = sqlite_env.write_config(audiences=audience_toml("Buyers", ["nat"]))
    usage = sqlite_env.cli("check", "--alert", "--config", str(without))
    assert usage.returncode == 2 and "the config has no [alerts] table" in usage.stderr


def test_alerts_of_what_left_the_config_are_resolved_once(sqlite_env: Env, hook: Hook) -> None:
    """A query failing (audience), a key refused (destination), then the audience and the
    destination are removed from the config: each alert is resolved once, by the next full
    run; a resync (a run of part of the config) resolves nothing it left out."""
    env = sqlite_env
    env.shop.members("u1")
    broken = audience_toml("Sellers", ["usercom"], query="SELECT id AS user_id FROM no_such_table")
    env.run(_config(env, hook.url, keys={"NAT_API_KEY": "wrong-key"}, after_failed_runs=5,
                    audiences=audience_toml("Buyers", ["nat", "usercom"]) + broken))
    assert sorted(hook.events()) == [("key_refused", "critical", None, "nat"),
                                     ("query_failed", "critical", "sellers", None)]

    with_nat = env.write_config(audiences=audience_toml("Buyers", ["nat", "usercom"]),
                                extra=alerts_toml(after_failed_runs=5))
    resync = env.cli("resync", "--audience", "buyers", "--config", str(with_nat),
                     env={"SYNCD_ALERT_WEBHOOK": hook.url, "NAT_API_KEY": "wrong-key"})
    assert resync.returncode == 1 and len(hook.bodies) == 2  # `sellers` was not part of it: no word

    without_nat = env.write_config(audiences=audience_toml("Buyers", ["usercom"]),
                                   extra=alerts_toml(after_failed_runs=5))
    text = without_nat.read_text().replace("[destinations.nat]", "[destinations.old_nat]")
    without_nat.write_text(text)  # nat renamed away: a destination no longer in the config
    config = load_config(without_nat, {**KEYS_ENV, "SYNCD_ALERT_WEBHOOK": hook.url})
    assert env.run(config).exit_code == 0
    assert sorted(hook.events()[2:]) == [("key_refused", "resolved", None, "nat"),
                                         ("query_failed", "resolved", "sellers", None)]
    messages = {b["event"]: b["message"] for b in hook.bodies[2:]}
    gone = ": this alert no longer applies"
    assert messages == {"key_refused": f"destination nat is no longer in the config{gone}",
                        "query_failed": f"audience sellers is no longer in the config{gone}"}
    assert env.run(config).exit_code == 0 and len(hook.bodies) == 4  # once
