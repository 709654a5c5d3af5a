"""The state database's tables (SQLModel). Alembic migrations are generated from these.

The one idea: per (audience, destination, subject) the ledger keeps the value the
destination has *acknowledged*. Each run's snapshot gives the *desired* value; the
work is exactly where they differ, and `acked` moves only after a 2xx.

A send whose outcome is unknown (a timeout after the request left, a crash while
it was in flight) may still have been applied, so the ledger also remembers which
values the destination *may* hold (`maybe_true` / `maybe_false`) until the next ack.

Identity: a destination keys its records by its own identifier. Nat keys contacts by email,
so its ledger rows are per (subject, email) (`ident` = the email): a member whose email
changes gets a new row (and `true` under the new email), and the old row remembers what
the old email holds until the user leaves and every such email gets `false`. User.com keys
by the subject itself: `ident` is "" and there is one row per subject.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Dialect, Index, Text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no time zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the state database; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(nullable: bool = True) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable)


class Member(SQLModel, table=True):
    """The latest snapshot of an audience: one row per member."""

    __tablename__ = "member"
    audience_key: str = Field(primary_key=True)
    subject: str = Field(primary_key=True)  # "u:<user_id>" or "a:<anonymous_id>"
    user_id: str | None = None
    anonymous_id: str | None = None
    email: str | None = None
    url: str | None = None
    traits: str | None = Field(default=None, sa_type=Text)  # JSON of extra columns


class Ledger(SQLModel, table=True):
    """What one destination holds (or may hold) for one subject of one audience."""

    __tablename__ = "ledger"
    __table_args__ = (Index("ix_ledger_acked", "audience_key", "destination", "acked"),)
    audience_key: str = Field(primary_key=True)
    destination: str = Field(primary_key=True)
    # The destination's key for the user when it is not the subject: the email at Nat, ""
    # where the destination keys by the subject (User.com). Before `subject` in the key, so
    # the legacy rows of a destination (ident "", see migration 0004) are one index range.
    ident: str = Field(default="", primary_key=True)
    subject: str = Field(primary_key=True)
    user_id: str | None = None
    anonymous_id: str | None = None
    email: str | None = None
    # Random, made when the row is created and never changed: part of every messageId, so a
    # row deleted by retention and created again (seq back at 0) never repeats an old id.
    # "" on rows older than migration 0004 (their ids keep the material they had).
    nonce: str = ""
    acked: bool | None = None  # value the destination acknowledged; None = never
    seq: int = 0  # number of acknowledged changes; part of the messageId
    acked_at: datetime | None = Field(default=None, sa_column=_ts())
    pending: bool | None = None  # value last attempted and not acknowledged
    in_flight: bool | None = None  # value being sent right now (crash marker)
    maybe_true: bool = False  # an unacknowledged `true` may have been applied
    maybe_false: bool = False
    attempts: int = 0  # attempts since the last ack
    failed: bool = False  # the last attempt was rejected for this change (4xx)
    last_status: int | None = None
    last_error: str | None = None
    pending_since: datetime | None = Field(default=None, sa_column=_ts())


class Run(SQLModel, table=True):
    __tablename__ = "run"
    id: int | None = Field(default=None, primary_key=True)
    started_at: datetime = Field(sa_column=_ts(nullable=False))
    snapshot_at: datetime = Field(sa_column=_ts(nullable=False))
    finished_at: datetime | None = Field(default=None, sa_column=_ts())
    outcome: str = "running"  # running | ok | held | undelivered | interrupted | crashed
    host: str = ""
    pid: int = 0


class RunAudience(SQLModel, table=True):
    """One audience's snapshot in one run."""

    __tablename__ = "run_audience"
    run_id: int = Field(foreign_key="run.id", primary_key=True)
    audience_key: str = Field(primary_key=True)
    rows: int = 0
    members: int = 0
    no_identifier: int = 0
    too_large: int = 0
    duplicates: int = 0
    invalid_email: int = 0
    error: str | None = None


class RunResult(SQLModel, table=True):
    """One (audience, destination) pair in one run."""

    __tablename__ = "run_result"
    run_id: int = Field(foreign_key="run.id", primary_key=True)
    audience_key: str = Field(primary_key=True)
    destination: str = Field(primary_key=True)
    members: int = 0
    entered: int = 0
    left: int = 0
    sent: int = 0
    acknowledged: int = 0
    skipped: int = 0  # members without email (Nat)
    failed: int = 0
    pending: int = 0  # still undelivered at the end of the run
    outcome: str = "ok"  # ok | undelivered | stopped | held | source_failed
    message: str | None = None


class Attribute(SQLModel, table=True):
    """A destination-side attribute syncd made sure exists (User.com)."""

    __tablename__ = "attribute"
    destination: str = Field(primary_key=True)
    audience_key: str = Field(primary_key=True)
    ensured_at: datetime = Field(sa_column=_ts(nullable=False))


class RemoteId(SQLModel, table=True):
    """A destination's own id for a user, learned from its answers (User.com's internal `id`
    in the answer of users/update_or_create/) or from a listing of its users: users with one
    can go in mass updates. Per destination, not per audience: one User.com user holds every
    audience's attribute. NULL: the user was not among the destination's users when a listing
    last went through them all (at `learned_at`), so listing again would not find it."""

    __tablename__ = "remote_id"
    destination: str = Field(primary_key=True)
    subject: str = Field(primary_key=True)
    remote_id: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    learned_at: datetime = Field(sa_column=_ts(nullable=False))


class Listing(SQLModel, table=True):
    """A destination's listing of its users (User.com's GET users/), which teaches the ids of
    many users at once: how many users its last listing counted, and where a listing cut
    short (a stop, max_send_time, a failure) goes on at the next run."""

    __tablename__ = "listing"
    destination: str = Field(primary_key=True)
    users: int | None = None  # the destination's users, as the last first page counted them
    listed: int = 0  # users the listing in progress has gone through
    cursor: str | None = None  # where it goes on (the destination's own cursor); None: none in progress
    started_at: datetime | None = Field(default=None, sa_column=_ts())
    finished_at: datetime | None = Field(default=None, sa_column=_ts())  # the last complete listing


class Lease(SQLModel, table=True):
    """Who is running: one row per lease name, taken over only when expired or dead."""

    __tablename__ = "lease"
    name: str = Field(primary_key=True)
    holder: str
    host: str
    pid: int
    acquired_at: datetime = Field(sa_column=_ts(nullable=False))
    expires_at: datetime = Field(sa_column=_ts(nullable=False))


class GuardApproval(SQLModel, table=True):
    """`syncd approve`: lets runs send up to `exits` held exits of one (audience, destination).

    Deleted by the first run after which no exit of the pair is left to send.
    """

    __tablename__ = "guard_approval"
    audience_key: str = Field(primary_key=True)
    destination: str = Field(primary_key=True)
    exits: int  # the number of exits held when approved; more than this holds again
    acknowledged: int  # members the destination held as `true` when approved
    approved_at: datetime = Field(sa_column=_ts(nullable=False))
    approved_by: str = ""  # user@host, for the record


class AlertState(SQLModel, table=True):
    """What the alert webhook was last told about one condition (run/alerts.py): one message per
    change of state, never two for the same change, even across restarts and processes.

    `audience`/`destination` are "" where the condition has none (a primary key cannot be
    NULL). `claimed_by`/`claimed_until` mark the one process sending the change right now.
    """

    __tablename__ = "alert_state"
    event: str = Field(primary_key=True)
    audience: str = Field(default="", primary_key=True)
    destination: str = Field(default="", primary_key=True)
    active: bool = False  # the state the webhook acknowledged (2xx) last
    changed_at: datetime | None = Field(default=None, sa_column=_ts())  # when it acknowledged it
    claimed_by: str | None = None
    claimed_until: datetime | None = Field(default=None, sa_column=_ts())


class Daemon(SQLModel, table=True):
    """A `syncd run` daemon using this state database, and when its scheduler starts the next
    run: `status` and the page, from any process, show it. Refreshed every minute
    (`seen_at`), deleted on a clean stop; a row not seen for a few minutes is a daemon gone."""

    __tablename__ = "daemon"
    holder: str = Field(primary_key=True)  # host:pid:random, as the run lease's holder
    host: str
    pid: int
    started_at: datetime = Field(sa_column=_ts(nullable=False))
    next_run_at: datetime | None = Field(default=None, sa_column=_ts())
    seen_at: datetime = Field(sa_column=_ts(nullable=False))


# The Core tables the state modules query (bulk work is SQLAlchemy Core, not the ORM).
M = Member.__table__  # type: ignore[attr-defined]
L = Ledger.__table__  # type: ignore[attr-defined]
RUN = Run.__table__  # type: ignore[attr-defined]
RUN_AUDIENCE = RunAudience.__table__  # type: ignore[attr-defined]
RUN_RESULT = RunResult.__table__  # type: ignore[attr-defined]
ATTRIBUTE = Attribute.__table__  # type: ignore[attr-defined]
REMOTE_ID = RemoteId.__table__  # type: ignore[attr-defined]
LISTING = Listing.__table__  # type: ignore[attr-defined]
LEASE = Lease.__table__  # type: ignore[attr-defined]
APPROVAL = GuardApproval.__table__  # type: ignore[attr-defined]
ALERT = AlertState.__table__  # type: ignore[attr-defined]
DAEMON = Daemon.__table__  # type: ignore[attr-defined]
