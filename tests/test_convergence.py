"""Property: whatever sequence of snapshots (members join, leave, change their email) and
destination behaviour (success, 5xx, 429, timeouts, a SIGKILL mid-delivery; at the Segment
receiver, 429 with Retry-After, 503s from its Nth call of a run on (so a change may have one
event taken and another not), and a user whose events it refuses (400) for a step; at User.com also
a user deleted in its dashboard, so a mass update naming its id is refused (a stale id); the
users syncd has not sent yet created there (its CRM), so the listing finds them, its first
page failing once; an audience's attribute deleted there, with every user's value of it),
after a final healthy run:

- Nat (keyed by email) holds `true` at every member's current email, and `false` last at
  every email that ever got `true` for a user who is no longer a member;
- User.com (keyed by custom_id) holds exactly the source's membership, but for users deleted
  there that no later change re-created, and users whose value a deleted attribute took
  along that no later change sent again (syncd cannot know of a deletion); it never holds a
  wrong value, and its attributes stay boolean; once their ids are learned (from answers or
  the listing), users go in mass updates of `bulk_size` 2, so the faults hit chunks too;
- the same for a second audience at both destinations (a subset of the first: users move
  in and out of both at once, and their changes of both go out in one call, or in chunks);
- the Segment receiver (both audiences, events = ["identify", "track"], batch_size 2, so a
  user's events span calls, which hold several users): its events replayed in order, deduplicated
  by messageId as Segment does, leave each user's last Identify value of each audience, and
  the last Track (Audience Entered / Exited), equal to the membership (never sent: not a
  member); a refused user's events fail alone: after a step where it refused one (or was
  healthy) and nothing was killed, every other user holds the step's membership there, and
  the refused one's changes arrive once it heals;
- Nat never saw a stale value after a newer one, nor Segment a stale Track, and no messageId
  carried two contents (a Segment event sent again is the same event but for its timestamp).

Replayable: the examples come from a fixed seed, `SYNCD_CONVERGENCE_SEED` (printed with a
failing example); `SYNCD_CONVERGENCE_EXAMPLES` runs more of them (CI runs a few)."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, note, seed, settings
from hypothesis import strategies as st

from syncd.config import Config
from syncd.dev.standins import Fault, NatStandIn, SegmentStandIn, StandIn, UserComStandIn

from checks import (
    assert_duplicates_identical,
    assert_message_ids_unique,
    assert_no_stale_tracks,
    assert_no_stale_values,
    nat_flags,
    segment_held,
    usercom_view,
)
from conftest import NAT_KEY, SEGMENT_KEY, USERCOM_KEY, Env, Shop, audience_toml

SEED = int(os.environ.get("SYNCD_CONVERGENCE_SEED", "20261128"))
EXAMPLES = int(os.environ.get("SYNCD_CONVERGENCE_EXAMPLES", "12"))
USERS = ("u1", "u2", "u3", "u4", "u5")
KILL_BY = 3.0  # seconds a killed run-once may live at most
BEHAVIOURS = ("ok", "5xx", "429", "timeout", "crash")
USERCOM_BEHAVIOURS = (*BEHAVIOURS, "deleted", "listing", "attribute")
SEGMENT_BEHAVIOURS = (*BEHAVIOURS, "refuse")
# No extra columns: members have nothing to send but their memberships, so known users go in
# mass updates at User.com.
KEY, PRO = "buyers", "pro_buyers"
DESTINATIONS = ["nat", "usercom", "cdp"]
AUDIENCES = (audience_toml("Buyers", DESTINATIONS, query="SELECT id AS user_id, email FROM customers")
             + audience_toml("Pro buyers", DESTINATIONS, key=PRO,
                             query="SELECT id AS user_id, email FROM customers WHERE plan = 'pro'"))

# A snapshot: who is a member, each user's email (one of three addresses per user), and
# who of the members is on the `pro` plan (the second audience).
Snapshot = tuple[frozenset[str], tuple[int, ...], frozenset[str]]
snapshots = st.tuples(st.frozensets(st.sampled_from(USERS)),
                      st.tuples(*(st.integers(0, 2) for _ in USERS)),
                      st.frozensets(st.sampled_from(USERS)))
# (snapshot, Nat's, User.com's and Segment's behaviour, a number for the behaviour: calls
# before a kill or before Segment goes down, 429s in a burst, which user)
Step = tuple[Snapshot, str, str, str, int]
Memberships = tuple[dict[str, str], dict[str, str]]  # each audience's members, with their emails
step = st.tuples(snapshots, st.sampled_from(BEHAVIOURS), st.sampled_from(USERCOM_BEHAVIOURS),
                 st.sampled_from(SEGMENT_BEHAVIOURS), st.integers(1, 4))


def _segment_toml(segment: SegmentStandIn) -> str:
    return (f'\n[destinations.cdp]\ntype = "segment"\nendpoint = "{segment.endpoint}"\n'
            'api_key_env = "SEGMENT_WRITE_KEY"\ntimeout = "2s"\nbatch_size = 2\n'
            'events = ["identify", "track"]\n')


def _email(user: str, version: int) -> str:
    return f"{user}.{version}@example.com"


def _load(shop: Shop, snapshot: Snapshot) -> tuple[dict[str, str], dict[str, str]]:
    """The snapshot into the shop; the current emails of each audience's members."""
    members, versions, pros = snapshot
    emails = {user: _email(user, v) for user, v in zip(USERS, versions, strict=True) if user in members}
    shop.set(*((user, email, "2026-11-20 10:00:00", None, None, "pro" if user in pros else "free")
               for user, email in sorted(emails.items())))
    return emails, {user: email for user, email in emails.items() if user in pros}


def _misbehave(server: StandIn, behaviour: str) -> None:
    if behaviour == "5xx":
        server.fail_next(1_000, Fault(503, body="<html>down</html>"))
    elif behaviour == "429":
        server.fail_next(1_000, Fault(429))
    elif behaviour == "timeout":
        server.delay = 0.3  # applied, answered after the 0.2 s timeout


def _misbehave_segment(segment: SegmentStandIn, behaviour: str, pick: int,
                       audiences: Memberships) -> str | None:
    """Segment's behaviour for a step: down (503 to every call) once it took `pick` calls (a
    user's events span calls: a change may have one delivered and another not), a burst of
    `pick` 429s with Retry-After (honoured, then delivered), or one user's events refused; the
    refused user, if any."""
    if behaviour == "5xx":
        start = segment.accepted_calls + pick
        segment.after_accept = lambda n: setattr(segment, "down", True) if n >= start else None
    elif behaviour == "429":
        segment.fail_next(pick, Fault(429, retry_after="1"))
    elif behaviour == "refuse":
        changing = [user for user in USERS if _segment_differs(segment, user, audiences)] or list(USERS)
        segment.refuse(user_id=changing[pick % len(changing)])
        return changing[pick % len(changing)]
    else:
        _misbehave(segment, behaviour)
    return None


def _segment_differs(segment: SegmentStandIn, user: str, audiences: Memberships) -> bool:
    """Whether the receiver holds, by the user's last Identify or Track of an audience,
    other than the user's membership of it."""
    return any(held.get((user, key), False) is not (user in members)
               for held in segment_held(segment.deduplicated())
               for key, members in zip((KEY, PRO), audiences, strict=True))


def _assert_segment_holds(segment: SegmentStandIn, audiences: Memberships,
                          but: str | None = None) -> None:
    """Every user but `but` holds the membership at the receiver, by Identify and by Track."""
    for user in USERS:
        assert user == but or not _segment_differs(segment, user, audiences), \
            f"{user}: the Segment receiver holds other than its membership: {_held_by(segment, user)}"


def _held_by(segment: SegmentStandIn, user: str) -> list[dict[tuple[str, str], bool]]:
    """What the receiver holds for `user`: by Identify, by Track (for a failure's message)."""
    return [{at: value for at, value in held.items() if at[0] == user}
            for held in segment_held(segment.deduplicated())]


def _delete_one(usercom: UserComStandIn, members: dict[str, str], pick: int) -> str | None:
    """Delete, as User.com's dashboard would, a user this run is about to send a change (so a
    chunk naming its id is refused); the user, or None if there is none."""
    held = {user: data["attributes"].get(KEY) for user, data in usercom.users().items()}
    changing = [u for u in sorted(held) if (held[u] is True) != (u in members)] or sorted(held)
    if not changing:
        return None
    user = changing[pick % len(changing)]
    usercom.delete_user(user)
    return user


def _crm_has_them(usercom: UserComStandIn) -> None:
    """Users syncd has not sent yet are created in User.com (its CRM): a listing finds them. Its
    first page fails once (retried)."""
    usercom.seed_users([user for user in USERS if user not in usercom.users()])
    usercom.fail_next(1, Fault(503, body="<html>busy</html>", route=UserComStandIn.LISTING))


def _delete_attribute(usercom: UserComStandIn, pick: int) -> tuple[str, set[str]] | None:
    """Delete one audience's attribute in User.com's dashboard; (its key, the users whose
    value went with it)."""
    keys = [a["name"] for a in usercom.attributes() if a["name"] in (KEY, PRO)]
    if not keys:
        return None
    key = keys[pick % len(keys)]
    holding = {user for user, data in usercom.users().items() if key in data["attributes"]}
    usercom.delete_attribute(key)
    return key, holding


def _sent_since(usercom: UserComStandIn, start: int, key: str) -> set[str]:
    """Users `key` was sent to in User.com's calls accepted after the first `start`."""
    by_id = {data["id"]: user for user, data in usercom.users().items()}
    sent: set[str] = set()
    for call in usercom.accepted()[start:]:
        if call.get("attribute") == key:
            sent |= {by_id[i] for i in call["ids"] if i in by_id}
        elif key in call and call.get("custom_id"):
            sent.add(call["custom_id"])
    return sent


def _crash_after(env: Env, server: StandIn, calls: int) -> None:
    """`syncd run-once` as a real process, killed when `server` has accepted `calls` more calls
    (applied, not yet answered: the kill leaves a send whose outcome syncd cannot know), or
    after KILL_BY at the latest: the other destinations' faults, met with syncd's own retry
    policy (seconds of backoff), would keep it busy long."""
    target = server.accepted_calls + calls
    holder: list[int] = []
    server.after_accept = lambda n: os.kill(holder[0], signal.SIGKILL) if holder and n == target else None
    process = env.spawn()
    holder.append(process.pid)
    try:
        process.communicate(timeout=KILL_BY)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def _with_short_timeouts(config: Config) -> Config:
    fast = {name: replace(dest, timeout=0.2) for name, dest in config.destinations.items()}
    return replace(config, destinations=fast)


def _assert_nat_converged(nat: NatStandIn, members: dict[str, str], key: str) -> None:
    held = nat_flags(nat.contacts(), key)
    for user, email in members.items():
        assert held.get(email) is True, f"{user} is a member of {key}: Nat must hold true at {email}"
    ever_true = {(c.get("userId"), c["traits"]["email"])
                 for c in nat.accepted() if c["traits"].get(key) is True}
    for user, email in sorted(ever_true):
        if user not in members:
            assert held[email] is False, f"{user} left {key}: Nat still holds true at {email}"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@seed(SEED)
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@example(  # every new path at least once: a refused chunk, a chunk failing all run, a kill mid-chunk
    first=(frozenset(USERS), (0,) * 5, frozenset({"u1", "u2"})),
    steps=[((frozenset({"u1"}), (0,) * 5, frozenset({"u1"})), "ok", "deleted", "429", 2),
           ((frozenset({"u1", "u2", "u3"}), (0,) * 5, frozenset({"u2", "u3"})), "ok", "5xx", "refuse", 1),
           ((frozenset({"u1", "u2", "u3", "u4"}), (1,) * 5, frozenset({"u4"})), "ok", "crash", "5xx", 1)],
    final=(frozenset({"u2", "u5"}), (1,) * 5, frozenset({"u5"})))
@example(  # the listing finds users the CRM has; an attribute deleted, then made again
    first=(frozenset({"u1"}), (0,) * 5, frozenset()),
    steps=[((frozenset(USERS), (0,) * 5, frozenset()), "ok", "listing", "timeout", 1),
           ((frozenset({"u1", "u2"}), (0,) * 5, frozenset({"u1"})), "5xx", "attribute", "ok", 0),
           ((frozenset({"u1", "u3"}), (1,) * 5, frozenset({"u3"})), "ok", "ok", "crash", 1)],
    final=(frozenset({"u3", "u4", "u5"}), (1,) * 5, frozenset({"u4"})))
@example(  # Segment: enters applied but answered late, sent again with new emails; a leave
    # answered late, then enter again; a refused user; a kill mid-batch
    first=(frozenset({"u1", "u2"}), (0,) * 5, frozenset({"u1"})),
    steps=[((frozenset({"u1", "u2", "u3"}), (0,) * 5, frozenset({"u3"})), "ok", "ok", "timeout", 1),
           ((frozenset({"u1", "u2", "u3"}), (1,) * 5, frozenset({"u3"})), "ok", "ok", "ok", 1),
           ((frozenset({"u1", "u2"}), (1,) * 5, frozenset({"u1"})), "ok", "ok", "timeout", 1),
           ((frozenset({"u2", "u3", "u4"}), (2,) * 5, frozenset({"u2"})), "ok", "ok", "refuse", 2),
           ((frozenset({"u1", "u3"}), (2,) * 5, frozenset({"u3"})), "ok", "ok", "crash", 2)],
    final=(frozenset({"u3", "u5"}), (2,) * 5, frozenset({"u3"})))
@example(  # Segment down after two calls: a change whose Identify went and whose Track did not
    first=(frozenset({"u1", "u2"}), (0,) * 5, frozenset()),
    steps=[((frozenset(USERS), (0,) * 5, frozenset({"u4", "u5"})), "ok", "ok", "5xx", 2)],
    final=(frozenset(USERS), (0,) * 5, frozenset({"u4", "u5"})))
@example(  # Segment: a leave and an enter, both applied and answered late, then the leave again:
    # a receiver deduplicating by messageId must not take it for the first leave
    first=(frozenset({"u1"}), (0,) * 5, frozenset()),
    steps=[((frozenset(), (0,) * 5, frozenset()), "ok", "ok", "timeout", 1),
           ((frozenset({"u1"}), (0,) * 5, frozenset()), "ok", "ok", "timeout", 1),
           ((frozenset(), (0,) * 5, frozenset()), "ok", "ok", "ok", 1)],
    final=(frozenset(), (0,) * 5, frozenset()))
@given(first=snapshots, steps=st.lists(step, min_size=1, max_size=4), final=snapshots)
def test_destinations_converge_to_the_source(tmp_path_factory: pytest.TempPathFactory, first: Snapshot,
                                             steps: list[Step], final: Snapshot) -> None:
    note(f"replay with SYNCD_CONVERGENCE_SEED={SEED}")
    tmp: Path = tmp_path_factory.mktemp("convergence")
    with NatStandIn(NAT_KEY) as nat, UserComStandIn(USERCOM_KEY) as usercom, \
            SegmentStandIn(SEGMENT_KEY) as segment:
        env = Env(tmp, f"sqlite:///{tmp / 'state.db'}", Shop(tmp / "shop.db"), nat, usercom)
        config = _with_short_timeouts(env.config(audiences=AUDIENCES,
                                                 extra="bulk_size = 2\n" + _segment_toml(segment)))
        _load(env.shop, first)
        env.run(config)  # healthy: User.com's answers teach the first members' ids
        deleted: set[str] = set()
        wiped: list[tuple[str, set[str], int]] = []  # attribute deleted: key, its users, when
        for snapshot, nat_does, usercom_does, segment_does, crash_after in steps:
            emails, pro_emails = _load(env.shop, snapshot)
            if usercom_does == "deleted":
                deleted |= {_delete_one(usercom, emails, crash_after)} - {None}
            elif usercom_does == "listing":
                _crm_has_them(usercom)
            elif usercom_does == "attribute":
                gone_with = _delete_attribute(usercom, crash_after)
                if gone_with is not None:
                    wiped.append((*gone_with, len(usercom.accepted())))
            _misbehave(nat, nat_does)
            _misbehave(usercom, usercom_does)
            refused = _misbehave_segment(segment, segment_does, crash_after, (emails, pro_emails))
            before = len(segment.accepted())
            doings = ((nat, nat_does), (usercom, usercom_does), (segment, segment_does))
            crashing = [server for server, does in doings if does == "crash"]
            if crashing:
                _crash_after(env, crashing[0], crash_after)
            else:
                env.run(config)
                if segment_does in ("ok", "refuse"):
                    _assert_segment_holds(segment, (emails, pro_emails), but=refused)
            assert refused not in {event["userId"] for event in segment.accepted()[before:]}
            for server in (nat, usercom, segment):
                server.heal()
        members, pros = _load(env.shop, final)

        assert env.run(config).exit_code == 0
        gone = {user for user in deleted if user not in usercom.users()}
        for key, expected in ((KEY, members), (PRO, pros)):
            _assert_nat_converged(nat, expected, key)
            lost = {user for k, users, at in wiped if k == key
                    for user in users - _sent_since(usercom, at, key)}
            assert set(expected) - gone - lost <= usercom_view(usercom, set(USERS), key) <= set(expected)
            assert all(data["attributes"].get(key) is (user in expected)
                       for user, data in usercom.users().items() if key in data["attributes"])
        assert {a["value_type"] for a in usercom.attributes() if a["name"] in (KEY, PRO)} <= {"boolean"}
        _assert_segment_holds(segment, (members, pros))
        assert_no_stale_values(nat.accepted())
        assert_message_ids_unique(nat.accepted())
        assert_no_stale_tracks(segment.accepted())
        assert_duplicates_identical(segment.accepted())
