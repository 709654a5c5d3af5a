"""The mass-exit guard: hold an audience's `false` sends when they look like a mistake.

A broken query, a truncated table or the wrong source database makes members
"leave" by the thousand, and `false` is hard to take back at the destination.
So per (audience, destination) a run holds the exits (sends no `false`; entries
still flow) when the destination holds at least `min_acknowledged` members as
`true` and the exits are more than `max_exit_share` of them, an empty query
result being the extreme case. `max_exit_share = 1` turns the guard off.

`syncd approve` records that up to the current number of exits may go; the
approval lasts until a run leaves no exit of the pair unsent (then it is
deleted), and a run that finds more exits than were approved holds again.
Raising the limit in the config releases them too.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from syncd.config import AudienceConfig, GuardConfig
from syncd.render import plural
from syncd.state import operator as state_operator
from syncd.state.runs import acked_true_count


@dataclass(frozen=True)
class GuardVerdict:
    audience_key: str
    destination: str
    members: int  # in the snapshot
    exits: int  # users who would be sent `false`
    acknowledged: int  # users the destination holds as `true`
    limit: float  # max_exit_share
    tripped: bool  # the exits exceed the limit
    approved_exits: int | None = None  # an approval on record covers this many
    approved_at: datetime | None = None
    approved_by: str | None = None

    @property
    def approved(self) -> bool:
        return self.tripped and self.approved_exits is not None and self.exits <= self.approved_exits

    @property
    def held(self) -> bool:
        return self.tripped and not self.approved

    def reason(self) -> str:
        if self.members == 0:
            return (f"the query returned no members, but {self.destination} holds "
                    f"{self.acknowledged} as true")
        are = "is" if self.exits == 1 else "are"
        return (f"{plural(self.exits, 'exit')} {are} {self.exits / self.acknowledged:.0%} of the "
                f"{plural(self.acknowledged, 'member')} {self.destination} holds as true "
                f"(limit {self.limit:.0%})")

    def hold_message(self, config_path: str) -> str:
        beyond = (f"; an approval covers {self.approved_exits}, not {self.exits}"
                  if self.approved_exits is not None else "")
        return (f"holding {plural(self.exits, 'exit')} of {self.audience_key} at {self.destination}: "
                f"{self.reason()}{beyond}. No `false` was sent. If these exits are right, run: "
                f"syncd approve --config {shlex.quote(config_path)} --audience {self.audience_key} "
                f"--destination {self.destination} (or raise max_exit_share)")

    def as_dict(self) -> dict[str, Any]:
        return {"exits": self.exits, "acknowledged": self.acknowledged, "limit": self.limit,
                "tripped": self.tripped, "held": self.held, "approved_exits": self.approved_exits}


def judge(audience: AudienceConfig, guards: GuardConfig, destination: str, members: int, exits: int,
          acknowledged: int, approval: state_operator.Approval | None = None) -> GuardVerdict:
    """The guard's decision from the numbers (pure)."""
    limit = audience.max_exit_share
    tripped = (limit < 1 and exits > 0 and acknowledged >= max(guards.min_acknowledged, 1)
               and exits > limit * acknowledged)
    return GuardVerdict(
        audience.key, destination, members, exits, acknowledged, limit, tripped,
        approved_exits=approval.exits if approval is not None else None,
        approved_at=approval.approved_at if approval is not None else None,
        approved_by=approval.approved_by if approval is not None else None,
    )


def check(conn: Connection, audience: AudienceConfig, guards: GuardConfig, destination: str,
          members: int, exits: int) -> GuardVerdict:
    """The guard's decision for a pair, reading what the destination holds and any approval."""
    return judge(audience, guards, destination, members, exits,
                 acked_true_count(conn, audience.key, destination),
                 state_operator.approval(conn, audience.key, destination))
