"""Bad input and config changes between runs: each has a defined, documented behaviour."""

from __future__ import annotations

from checks import flags
from conftest import Env, audience_toml

ODD_ROWS = """
SELECT column1 AS user_id, column2 AS email, column3 AS note FROM (VALUES
  (42, 'int@example.com', 'a'),
  (7.0, 'float@example.com', 'b'),
  (x'6869', 'blob@example.com', 'c'),
  (NULL, NULL, NULL),
  ('   ', 'blank@example.com', 'd'),
  ('ü-用户-🙂', 'uni@example.com', 'emoji 🎉 and RTL עברית'),
  ('nul' || char(0) || 'id', 'nul@example.com', 'e'),
  ('bad-email', 'not-an-email', 'f'),
  ('huge', 'huge@example.com', printf('%.40000c', 'x')),
  ('nul-trait', 'nt@example.com', 'a' || char(0) || 'b')
)
"""


def test_odd_rows_are_normalised_skipped_or_counted(env: Env) -> None:
    config = env.config(audiences=audience_toml("Buyers", ["nat", "usercom"], query=ODD_ROWS))
    report = env.run(config)

    counts = report.audiences["buyers"]
    assert (counts.rows, counts.no_identifier, counts.too_large, counts.invalid_email) == (10, 3, 1, 1)
    nat = flags(env.nat.accepted())
    assert nat == {"42": True, "7": True, "hi": True, "ü-用户-🙂": True, "nul-trait": True}
    call = next(c for c in env.nat.accepted() if c["userId"] == "ü-用户-🙂")
    assert call["traits"]["note"] == "emoji 🎉 and RTL עברית"
    assert next(c for c in env.nat.accepted() if c["userId"] == "nul-trait")["traits"]["note"] == "ab"
    # Nat skips the user whose email was dropped; User.com takes them without it.
    assert env.usercom.users()["bad-email"]["email"] is None
    assert report.exit_code == 0


def test_renaming_an_audience_but_keeping_its_key_changes_nothing(env: Env) -> None:
    env.shop.members("u1", "u2")
    env.run(env.config(audiences=audience_toml("Buyers", ["nat"], key="buyers")))
    sent = env.nat.requests

    report = env.run(env.config(audiences=audience_toml("Customers Who Bought", ["nat"], key="buyers")))

    assert report.exit_code == 0 and env.nat.requests == sent


def test_a_new_key_is_a_new_trait_and_the_old_one_stays(env: Env) -> None:
    env.shop.members("u1")
    env.run(env.config(audiences=audience_toml("Buyers", ["nat"])))
    env.run(env.config(audiences=audience_toml("Customers", ["nat"])))

    assert flags(env.nat.accepted(), "customers") == {"u1": True}
    assert flags(env.nat.accepted(), "buyers") == {"u1": True}  # never retracted by itself


def test_destination_removed_then_re_added_gets_only_what_changed(env: Env) -> None:
    env.shop.members("u1", "u2")
    env.run()
    env.shop.members("u2", "u3")
    env.run(env.config(audiences=audience_toml("Buyers", ["usercom"])))  # Nat removed
    nat_calls = len(env.nat.accepted())

    report = env.run()  # Nat back

    assert report.exit_code == 0
    assert flags(env.nat.accepted()[nat_calls:]) == {"u1": False, "u3": True}


def test_removed_audience_is_no_longer_synced_and_resumes_when_back(env: Env) -> None:
    both = audience_toml("Buyers", ["nat"]) + audience_toml("Everyone", ["nat"])
    env.shop.members("u1")
    env.run(env.config(audiences=both))
    env.shop.members("u2")
    env.run(env.config(audiences=audience_toml("Buyers", ["nat"])))
    assert flags(env.nat.accepted(), "everyone") == {"u1": True}  # left as last sent

    env.run(env.config(audiences=both))

    assert flags(env.nat.accepted(), "everyone") == {"u1": False, "u2": True}
