"""A destination type from an installed package, with no change to syncd: a package of two files
(its pyproject.toml, with an entry point in `syncd.destinations`, and one module) is built and
installed by pip into a folder of its own, put on the PYTHONPATH of real `syncd` processes.
The config validates its own keys through its class, `run-once` syncs to it (a real HTTP
listener on 127.0.0.1), `check --connect` describes it by its own probe."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.dev.standins import Reply, StandIn

from conftest import Shop, run_cli

HOOK_KEY = "hook-test-key-SECRET-5c4d3e"

PYPROJECT = """
[build-system]
requires = ["flit_core>=3.4"]
build-backend = "flit_core.buildapi"

[project]
name = "syncd-hooks"
version = "1.0"
description = "A webhook destination for syncd"

[project.entry-points."syncd.destinations"]
hook = "syncd_hooks:Hook"
"""

# The whole destination: what a README reader writes.
MODULE = '''
"""A webhook destination for syncd: one JSON POST per Identify, the key in a header."""

from syncd.config import Address, Choices, Number
from syncd.delivery.destinations.base import Destination
from syncd.delivery.wire import Probe, Request


class Hook(Destination):
    type = "hook"
    integration = "Hook"
    settings = (Address("url"), Number("priority", int, 3, (0, 10)),
                Choices("parts", ("traits", "context"), ("traits",)))
    rate_limit = 50.0
    concurrency = 2
    reserved = Destination.reserved | {"hook_id"}

    def headers(self):
        return {"X-Hook-Key": self.config.resolved_key.reveal()}

    def request(self, message, audience_key):
        body = {"user": message["userId"] or message["anonymousId"], "id": message["messageId"],
                "priority": self.config.settings["priority"]}
        body.update((part, message[part]) for part in self.config.settings["parts"])
        return Request("POST", self.config.url, body)

    def probe(self, call):
        answer = call(Request("GET", self.config.url + "/health"))
        return Probe(answer.ok, f"the hook says it is {answer.body['status']}")
'''

BROKEN_PYPROJECT = PYPROJECT.replace("syncd-hooks", "syncd-broken").replace(
    'hook = "syncd_hooks:Hook"', 'broken = "syncd_broken:Broken"')
BROKEN_MODULE = '"""A destination whose import fails."""\n\nimport no_such_module_anywhere  # noqa\n'


class HookListener(StandIn):
    """The service the plug-in talks to: POST /hook with the key in X-Hook-Key, GET /hook/health."""

    def route(self, method: str, path: str, headers: dict[str, str], body: Any) -> Reply:
        if {k.lower(): v for k, v in headers.items()}.get("x-hook-key") != self.api_key:
            return 401, {"error": "bad key"}, {}
        if (method, path) == ("GET", "/hook/health"):
            return 200, {"status": "green"}, {}
        if (method, path) == ("POST", "/hook"):
            self._accept(body)
            return 200, {"ok": True}, {}
        return 404, {"error": "not found"}, {}


def _install(root: Path, name: str, files: dict[str, str]) -> Path:
    """The package built from `files` and installed by pip into a folder of its own."""
    source, target = root / f"{name}-src", root / f"{name}-site"
    source.mkdir()
    for file, text in files.items():
        (source / file).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(source)], check=True, capture_output=True, text=True, timeout=300)
    return target


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugins")
    return _install(root, "hooks", {"pyproject.toml": PYPROJECT, "syncd_hooks.py": MODULE})


@pytest.fixture
def hook() -> Iterator[HookListener]:
    with HookListener(HOOK_KEY) as server:
        yield server


def _config(tmp_path: Path, shop: Shop, destination: str, key: str = "buyers") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(f"""
        [state]
        url = "sqlite:///{tmp_path / 'state.db'}"

        [sources.shop]
        url = "{shop.url}"

        [destinations.hooks]
        api_key_env = "HOOK_KEY"
        """) + textwrap.dedent(destination) + textwrap.dedent(f"""
        [[audiences]]
        name = "Buyers"
        key = "{key}"
        source = "shop"
        destinations = ["hooks"]
        query = "SELECT id AS user_id, email FROM customers"
        """), encoding="utf-8")
    return path


def _syncd(site: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, cwd=tmp_path, env={"PYTHONPATH": str(site), "HOOK_KEY": HOOK_KEY})
    assert HOOK_KEY not in result.stdout + result.stderr
    return result


def test_a_destination_is_one_module_and_its_pyproject(site: Path, tmp_path: Path, shop: Shop,
                                                       hook: HookListener) -> None:
    source = site.parent / "hooks-src"
    assert sorted(p.name for p in source.iterdir()) == ["pyproject.toml", "syncd_hooks.py"]
    shop.members("u1", "u2")
    path = _config(tmp_path, shop, f'type = "hook"\nurl = "{hook.url}/hook"\nparts = ["traits", "context"]\n')

    run = _syncd(site, tmp_path, "run-once", "--config", str(path))
    assert run.returncode == 0, run.stderr
    assert "hooks: 1 audience, 2 entered, 0 left, 2 changes in 2 calls, 2 acknowledged" in run.stderr
    received = sorted(hook.accepted(), key=lambda body: body["user"])
    assert [(b["user"], b["traits"], b["priority"]) for b in received] == [
        ("u1", {"email": "u1@example.com", "buyers": True}, 3),
        ("u2", {"email": "u2@example.com", "buyers": True}, 3),
    ]
    assert received[0]["context"]["personas"]["computation_key"] == "buyers"
    assert all(b["id"].startswith("syncd-") for b in received)
    assert _syncd(site, tmp_path, "run-once", "--config", str(path)).returncode == 0
    assert len(hook.accepted()) == 2  # the ledger works for it as for any type: nothing new to send

    check = _syncd(site, tmp_path, "check", "--connect", "--json", "--config", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    hooks = next(c for c in json.loads(check.stdout) if c["destination"] == "hooks")
    assert (hooks["ok"], hooks["message"]) == (True, "the hook says it is green")


@pytest.mark.parametrize(("destination", "key", "problem"), [
    ('type = "hook"\nurl = "http://127.0.0.1:9/hook"\npriority = 11\n', "buyers",
     "destinations.hooks.priority: must be between 0 and 10, not 11"),
    ('type = "hook"\nurl = "http://127.0.0.1:9/hook"\nparts = ["body"]\n', "buyers",
     "destinations.hooks.parts: unknown value 'body' (known: \"traits\", \"context\")"),
    ('type = "hook"\nurl = "http://127.0.0.1:9/hook"\nparts = []\n', "buyers",
     "destinations.hooks.parts: must list one or more of \"traits\", \"context\", each once"),
    ('type = "hook"\n', "buyers", "destinations.hooks.url: is required"),
    ('type = "hook"\nurl = "http://127.0.0.1:9/hook"\nbulk_size = 5\n', "buyers",
     "destinations.hooks.bulk_size: unknown key (allowed: api_key_env, api_key_file, concurrency, "
     "parts, priority, rate_limit, timeout, type, url)"),
    ('type = "hook"\nurl = "http://127.0.0.1:9/hook"\n', "hook_id",
     "'hook_id' is a field syncd sends itself (reserved)"),
    ('type = "nope"\n', "buyers",
     "destinations.hooks.type: unknown type 'nope' (known: nat, usercom, segment, hook)"),
])
def test_the_config_checks_an_installed_type_s_own_keys_through_its_class(
    site: Path, tmp_path: Path, shop: Shop, destination: str, key: str, problem: str
) -> None:
    result = _syncd(site, tmp_path, "run-once", "--config", str(_config(tmp_path, shop, destination, key)))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and problem in result.stderr, result.stderr
    assert not (tmp_path / "state.db").exists()


def test_a_type_not_installed_is_unknown_and_a_broken_one_is_named(tmp_path: Path, shop: Shop) -> None:
    path = _config(tmp_path, shop, 'type = "hook"\nurl = "http://127.0.0.1:9/hook"\n')
    result = run_cli("check", "--config", str(path), cwd=tmp_path)  # the package is not on the path
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"syncd: {path}: destinations.hooks.type: unknown type 'hook' (known: nat, usercom, segment)"]

    broken = _install(tmp_path, "broken", {"pyproject.toml": BROKEN_PYPROJECT,
                                           "syncd_broken.py": BROKEN_MODULE})
    path = _config(tmp_path, shop, 'type = "broken"\n')
    result = run_cli("check", "--config", str(path), cwd=tmp_path, env={"PYTHONPATH": str(broken)})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"syncd: {path}: destinations.hooks.type: destination type 'broken' (syncd_broken:Broken) failed "
        "to load: ModuleNotFoundError: No module named 'no_such_module_anywhere'"]
