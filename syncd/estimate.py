"""What a destination's pending changes cost in calls: a destination's rate limit counts calls,
not changes, so every promise of time counts calls (SPEC 3: `plan`, the progress ETA, the
backlog's ETA in `status` and on the page).

state/workload.py counts a destination's work the ways its calls can group it (a Workload);
each destination class turns that into a CallEstimate (`Destination.estimate`, base.py):
Nat one call per user; User.com mass updates for users of known id, one call for each other
user, and the id listing when it pays. A type with batches (events per call) counts those
from the same Workload. Pure: no SQL, no HTTP; the config's registry reads it too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# How each kind of call is named: in `plan --json` (keys) and to people (values: one, many).
KINDS = {"id_listing": ("id listing", "id listing"), "mass_updates": ("mass update", "mass updates"),
         "batches": ("batch", "batches"), "user_calls": ("one per user", "one per user")}


@dataclass(frozen=True)
class Workload:
    """A destination's changes to send (each audience's entries, and its exits unless a guard
    holds them), counted the ways its calls can group them.

    Users are who the destination keys: a user at User.com, a (user, email) at Nat. A user is
    *plain* when it has nothing but memberships to send (no entry carrying extra traits, which
    needs a call of the user's own); a plain user goes in mass updates once its id at the
    destination is known, and a listing of the destination's users can teach the ids of the
    plain users of *unknown* id (never learned, nor found missing by a complete listing)."""

    changes: int = 0
    users: int = 0  # one grouped call each, where nothing goes in bulk
    plain_known: int = 0
    plain_unknown: int = 0
    # (audience key, value) -> changes of the plain users of known / unknown id
    known_changes: Mapping[tuple[str, bool], int] = field(default_factory=dict)
    unknown_changes: Mapping[tuple[str, bool], int] = field(default_factory=dict)
    # The destination's users as its last listing counted them (None: never listed), and of
    # those, how many a listing cut short has still to go through (None: none in progress).
    remote_users: int | None = None
    listing_left: int | None = None


@dataclass(frozen=True)
class CallEstimate:
    """The calls a destination's changes will take, by kind (KINDS), and what the figure
    assumes where the destination itself will tell (e.g. which users User.com has)."""

    parts: tuple[tuple[str, int], ...]
    note: str | None = None

    @property
    def calls(self) -> int:
        return sum(n for _, n in self.parts)

    def seconds(self, rate_limit: float | None) -> float | None:
        """The calls' time at the rate limit (None: unpaced)."""
        return round(self.calls / rate_limit, 1) if rate_limit else None

    def described(self) -> str:
        """'530 calls (15 id listing, 15 mass updates, 500 one per user)'"""
        parts = ", ".join(f"{n} {KINDS.get(kind, (kind, kind))[n != 1]}" for kind, n in self.parts if n)
        return f"{self.calls} {'call' if self.calls == 1 else 'calls'}" + (f" ({parts})" if parts else "")


def one_per_user(work: Workload) -> CallEstimate:
    """Every user with changes gets one call carrying them all (the grouped calls)."""
    return CallEstimate((("user_calls", work.users),))


def chunks(counts: Iterable[int], size: int) -> int:
    """Calls for groups of these sizes, `size` per call."""
    return sum(math.ceil(n / size) for n in counts if n)


def merged(*counts: Mapping[tuple[str, bool], int]) -> dict[tuple[str, bool], int]:
    total: dict[tuple[str, bool], int] = {}
    for mapping in counts:
        for key, n in mapping.items():
            total[key] = total.get(key, 0) + n
    return total


def listing_pages(work: Workload, page_size: int, bulk_size: int) -> int | None:
    """The pages a listing of the destination's users would take now, if it pays: if the
    plain users of unknown id, each a call of its own otherwise, outnumber the listing's pages
    and the mass updates they would add (counted as if the destination has them all). None:
    it would not pay. Where the destination's size is not known yet (never listed), a run
    reads the first page to learn it; counted here as the fewest pages that could hold those
    users."""
    if not work.plain_unknown:
        return None
    users = work.listing_left if work.listing_left is not None else work.remote_users
    pages = max(1, math.ceil((work.plain_unknown if users is None else users) / page_size))
    added = (chunks(merged(work.known_changes, work.unknown_changes).values(), bulk_size)
             - chunks(work.known_changes.values(), bulk_size))
    return pages if work.plain_unknown > pages + added else None
