"""[alerts]: after each run, push one webhook message per change of state.

Conditions, and the events they raise (the same event with severity "resolved" when it clears):

    key_refused       per destination      it answered 401/403              critical
    query_failed      per audience         its query failed                 critical
    runs_undelivered  (whole daemon)       `after_failed_runs` runs in a
                                           row ended undelivered            critical
    exits_held        per (audience, dest) the mass-exit guard holds exits  warning
    backlog_stale     per (audience, dest) the oldest pending change is
                                           older than `pending_older_than`  warning
    attribute_conflict per (audience, dest) the destination holds the
                                           audience's attribute with another
                                           type: nothing of it is sent      critical

The state database remembers, per condition, what the webhook last acknowledged (table
alert_state), so a restart does not alert again. A change of state is sent by the one
process that claims it (a conditional UPDATE), so daemons sharing a PostgreSQL ledger alert
once. The state moves only after a 2xx: a failing webhook is logged in one line (never
with its URL, a credential) and the change is sent again after the next run. Alerting
never fails a run and takes at most ALERT_TIME_LIMIT seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import Engine

from syncd import __version__
from syncd.config import AlertsConfig, Config
from syncd.model import PairOutcome, RunOutcome
from syncd.render import iso, plural, spelled
from syncd.state import alerts as alert_state
from syncd.state.engine import now
from syncd.state.readings import Reading, read

if TYPE_CHECKING:
    from syncd.run.report import RunReport

log = logging.getLogger("syncd")

ALERT_TIME_LIMIT = 5.0  # seconds all webhook calls of one evaluation may take together
RESOLVED = "resolved"
SEVERITY = {"key_refused": "critical", "query_failed": "critical", "runs_undelivered": "critical",
            "exits_held": "warning", "backlog_stale": "warning", "attribute_conflict": "critical",
            "test": "info"}
TITLE = {"key_refused": "API key refused", "query_failed": "audience query failed",
         "runs_undelivered": "runs ending undelivered", "exits_held": "exits held by the guard",
         "backlog_stale": "changes waiting too long", "attribute_conflict": "attribute of another type",
         "test": "test message"}


@dataclass(frozen=True)
class Condition:
    """One condition as this run found it: active or cleared, and what to tell a person."""

    event: str
    audience: str | None
    destination: str | None
    active: bool
    message: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.event, self.audience or "", self.destination or ""

    @property
    def severity(self) -> str:
        return SEVERITY[self.event] if self.active else RESOLVED


def evaluate(config: Config, engine: Engine, report: RunReport, whole: bool = True) -> Reading | None:
    """After a run: send what changed since the webhook last heard. Returns the reading of
    the state it judged (the daemon's metrics show the same one), None without [alerts] or
    when it could not be read. Never raises. `whole`: the run had the whole config (not a
    resync's or retry's part of it), so an alert of what is no longer in it is resolved."""
    if config.alerts is None:
        return None
    reading = None
    try:
        reading = read(config, engine)
        found = conditions(config, engine, report, reading)
        if whole:
            found += removed(config, alert_state.told(engine))
        deliver(config.alerts, engine, found, report.run_id)
    except Exception as exc:  # an alert problem must never fail or stop a sync
        log.warning("alerts were not evaluated after run %d (%s); they are after the next run",
                    report.run_id, type(exc).__name__, extra={"run_id": report.run_id})
    return reading


# --- what the run found -----------------------------------------------------------------


def conditions(config: Config, engine: Engine, report: RunReport, reading: Reading) -> list[Condition]:
    """Every condition this run can tell the state of (one it cannot judge is left out)."""
    assert config.alerts is not None
    after = config.alerts.after_failed_runs
    return [*_query_failures(report), *_refused_keys(report), *_held_exits(report), *_conflicts(report),
            *_stale_backlogs(reading, config.alerts.pending_older_than),
            _undelivered_runs(alert_state.delivery_outcomes(engine, after), after)]


def _query_failures(report: RunReport) -> Iterator[Condition]:
    for key in report.audiences:
        error = report.audience_errors.get(key)
        message = (f"{error}. Fix the query or the source database; the other audiences go on."
                   if error else f"the query of audience {key} works again")
        yield Condition("query_failed", key, None, error is not None, message)


def _refused_keys(report: RunReport) -> Iterator[Condition]:
    by_destination: dict[str, list[Any]] = {}
    for pair in report.pairs:
        by_destination.setdefault(pair.destination, []).append(pair)
    for name, pairs in by_destination.items():
        refused = next((p for p in pairs if p.outcome == PairOutcome.STOPPED), None)
        if refused is not None:
            yield Condition("key_refused", None, name, True,
                            f"{refused.message or name + ' refused the API key'}. Changes to {name} "
                            f"wait: check the key named in [destinations.{name}] "
                            "(api_key_env / api_key_file); every run tries again.")
        # Cleared only once the key is known to work: something acknowledged, or all sent.
        elif any(p.acknowledged for p in pairs) or all(p.outcome == PairOutcome.OK for p in pairs):
            yield Condition("key_refused", None, name, False, f"{name} accepts the API key again")


def _held_exits(report: RunReport) -> Iterator[Condition]:
    for pair in report.pairs:
        if pair.outcome == PairOutcome.HELD:
            yield Condition("exits_held", pair.audience_key, pair.destination, True,
                            pair.message or "exits are held by the guard")
        elif pair.outcome in (PairOutcome.OK, PairOutcome.UNDELIVERED):  # the guard judged it and let it go
            yield Condition("exits_held", pair.audience_key, pair.destination, False,
                            f"exits of {pair.audience_key} to {pair.destination} are no longer held")


def _conflicts(report: RunReport) -> Iterator[Condition]:
    """A pair whose setup conflicts with the destination's (User.com: the audience's attribute
    exists with another type): it sends nothing until a person changes the destination."""
    for pair in report.pairs:
        key, name = pair.audience_key, pair.destination
        conflict = report.conflicts.get((key, name))
        if conflict is not None:
            yield Condition("attribute_conflict", key, name, True,
                            f"{conflict}. Changes of {key} to {name} wait (none is sent as another "
                            "type); every run checks again.")
        elif pair.outcome == PairOutcome.OK or pair.acknowledged:  # known to work again
            yield Condition("attribute_conflict", key, name, False,
                            f"{name} takes the changes of {key} again")


def _stale_backlogs(reading: Reading, older_than: timedelta) -> Iterator[Condition]:
    limit, longer = now() - older_than, spelled(older_than)
    for pair in reading.pairs:
        key, name, pending, oldest = pair.audience, pair.destination, pair.pending, pair.oldest_pending_at
        if pending and oldest is not None and oldest < limit:
            yield Condition("backlog_stale", key, name, True,
                            f"{plural(pending, 'change')} of {key} {'waits' if pending == 1 else 'wait'} "
                            f"for {name}, the oldest since "
                            f"{oldest:%Y-%m-%d %H:%M}Z (longer than {longer}): "
                            "see `syncd status` and `syncd failures`.")
        else:
            yield Condition("backlog_stale", key, name, False,
                            f"no change of {key} has waited for {name} longer than "
                            f"{longer}")


def removed(config: Config, told: dict[alert_state.AlertKey, bool]) -> list[Condition]:
    """Active alerts of an audience or destination no longer in the config, or of a pair no
    longer configured: resolved once (nothing would ever clear them otherwise)."""
    audiences = {a.key: a for a in config.audiences}
    found = []
    for (event, audience, destination), active in told.items():
        if audience and audience not in audiences:
            gone = f"audience {audience} is no longer in the config"
        elif destination and destination not in config.destinations:
            gone = f"destination {destination} is no longer in the config"
        elif audience and destination and destination not in audiences[audience].destinations:
            gone = f"audience {audience} is no longer sent to {destination}"
        else:
            continue
        if active:
            found.append(Condition(event, audience or None, destination or None, False,
                                   f"{gone}: this alert no longer applies"))
    return found


def send_test_message(alerts: AlertsConfig) -> str | None:
    """`syncd check --alert`: one test message to the webhook; None once it answered 2xx, else
    why not (never the URL: it is a credential)."""
    condition = Condition("test", None, None, True,
                          f"a test message from `syncd check --alert` on {socket.gethostname()}: "
                          "syncd's alerts reach this webhook")
    with _client() as client:
        return _send(client, alerts, body(alerts.format, condition, None), ALERT_TIME_LIMIT)


def _undelivered_runs(outcomes: list[str], after: int) -> Condition:
    """`outcomes`: the last `after` runs that say how delivery went, newest first."""
    if len(outcomes) == after and all(o == RunOutcome.UNDELIVERED for o in outcomes):
        return Condition("runs_undelivered", None, None, True,
                         f"the last {after} runs ended with changes undelivered (kept for the next "
                         "run): see `syncd status` and `syncd history`.")
    return Condition("runs_undelivered", None, None, False, "the last run delivered everything")



# --- telling the webhook ----------------------------------------------------------------


def deliver(alerts: AlertsConfig, engine: Engine, found: Iterable[Condition], run_id: int | None) -> int:
    """Send every condition whose state differs from what the webhook last acknowledged;
    returns how many it acknowledged. Stops at the first failure: the rest waits a run."""
    told = alert_state.told(engine)
    changed = [c for c in found if told.get(c.key, False) != c.active]
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline, sent = time.monotonic() + ALERT_TIME_LIMIT, 0
    with _client() as client:
        for index, condition in enumerate(changed):
            left = deadline - time.monotonic()
            if left <= 0.1:
                log.warning("alert webhook: out of time; %d alerts wait for the next run",
                            len(changed) - index)
                break
            if not alert_state.claim(engine, condition.key, condition.active, holder):
                continue  # another process is telling the webhook, or already has
            ok = _post(client, alerts, condition, body(alerts.format, condition, run_id), left)
            alert_state.settle(engine, condition.key, condition.active, holder, ok)
            if not ok:
                break
            sent += 1
    return sent


def body(kind: str, condition: Condition, run_id: int | None) -> dict[str, Any]:
    """The webhook's JSON body: format "json" or "slack"."""
    at = iso(now())
    if kind == "slack":
        return {"text": slack_text(condition)}
    return {"event": condition.event, "severity": condition.severity, "audience": condition.audience,
            "destination": condition.destination, "message": condition.message, "run_id": run_id,
            "at": at}


def slack_text(condition: Condition) -> str:
    """Short, for a phone: '[CRITICAL] syncd: API key refused (destination nat)' and the message."""
    where = ", ".join(f"{label} {value}" for label, value in
                      (("audience", condition.audience), ("destination", condition.destination)) if value)
    head = f"[{condition.severity.upper()}] syncd: {TITLE[condition.event]}"
    return f"{head} ({where})\n{condition.message}" if where else f"{head}\n{condition.message}"


def _client() -> httpx.Client:
    return httpx.Client(headers={"User-Agent": f"syncd/{__version__}"}, follow_redirects=False)


def _post(client: httpx.Client, alerts: AlertsConfig, condition: Condition, payload: dict[str, Any],
          seconds: float) -> bool:
    """POST one alert; True on a 2xx. Failures are logged without the URL (a credential)."""
    failure = _send(client, alerts, payload, seconds)
    if failure is not None:
        log.warning("alert webhook %s: the %s alert is sent again after the next run", failure,
                    f"{condition.event} {condition.severity}")
    return failure is None


def _send(client: httpx.Client, alerts: AlertsConfig, payload: dict[str, Any], seconds: float) -> str | None:
    """POST one body; None on a 2xx, else what went wrong, without the URL."""
    try:
        response = client.post(alerts.resolved_url.reveal(), json=payload, timeout=min(seconds, 5.0))
    except httpx.HTTPError as exc:
        return f"unreachable ({type(exc).__name__})"
    return None if response.is_success else f"answered HTTP {response.status_code}"

