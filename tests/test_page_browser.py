"""The status page in a real headless browser (Debian's `chromium`), served by a live `syncd run`.

Skips when chromium is missing, except under CI (CI=true), where `.ci/run` installs it:
there a missing browser is a failure, not a silent skip.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from test_daemon import start_daemon, stop_daemon, wait_for

from conftest import Env, audience_toml, free_port, required_tool


@pytest.fixture
def chromium() -> str:
    return required_tool("chromium", "chromium-browser",
                         purpose="the status page browser test (apt-get install chromium)")


def browse(browser: str, tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    # Every host but 127.0.0.1 resolves to nothing: an external request could not load anyway,
    # and the DOM check below proves the page asks for none.
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
               f"--user-data-dir={profile}", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})


class Dom(HTMLParser):
    """Table cells by table id, and every attribute that could load something."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.table: str | None = None
        self.in_cell = False
        self.loads: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "table":
            self.table = values.get("id") or "?"
            self.tables[self.table] = []
        elif tag == "tr" and self.table:
            self.tables[self.table].append([])
        elif tag in ("td", "th") and self.table:
            self.in_cell = True
            self.tables[self.table][-1].append("")
        loading = ("src", "href", "action", "srcset", "poster", "data")
        self.loads += [v or "" for k, v in attrs if k in loading]

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.table = None
        elif tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.in_cell and self.table:
            self.tables[self.table][-1][-1] += data.strip()


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return int(width), int(height)


def test_status_page_in_a_real_browser(sqlite_env: Env, chromium: str) -> None:
    env = sqlite_env
    env.shop.members(*(f"u{i}" for i in range(7)))
    env.nat.down = True  # Nat's share stays pending; User.com gets everything
    port = free_port()
    config = env.write_config(extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
                              audiences=audience_toml("Buyers", ["nat", "usercom"]))
    url = f"http://127.0.0.1:{port}/"
    process = start_daemon(env, config)

    def page_has_a_run() -> bool:
        try:
            return ">undelivered<" in httpx.get(url, timeout=5).text  # the run has finished
        except httpx.TransportError:
            return False

    try:
        wait_for(page_has_a_run, process)
        dumped = browse(chromium, env.tmp_path, url, "--dump-dom")
        shot = env.tmp_path / "phone.png"
        taken = browse(chromium, env.tmp_path, url, f"--screenshot={shot}", "--window-size=390,844",
                       "--hide-scrollbars")
    finally:
        if process.poll() is None:
            stop_daemon(process)

    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom()
    dom.feed(dumped.stdout)
    pairs = {(row[0], row[1]): row for row in dom.tables["pairs"][1:]}
    header = dom.tables["pairs"][0]
    nat, usercom = pairs[("buyers", "nat")], pairs[("buyers", "usercom")]
    column = {name: header.index(name) for name in ("Members", "Acknowledged", "Pending", "Outcome")}
    assert [nat[column[c]] for c in column] == ["7", "0", "7", "undelivered"]
    assert [usercom[column[c]] for c in column] == ["7", "7", "0", "ok"]
    assert "buyers → nat: undelivered" in dumped.stdout
    assert "Next: nothing to do unless it persists" in dumped.stdout
    runs = dom.tables["runs"]
    assert len(runs) == 2 and runs[1][2] == "undelivered"  # header + one run
    assert "svg" in dom.tags and dom.tags.count("rect") == 3
    assert "script" not in dom.tags
    assert all(link.startswith("data:") for link in dom.loads), dom.loads
    assert "example.com" not in dumped.stdout  # no e-mails, only counts

    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    assert png_size(shot) == (390, 844)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank image


def _customers(ids: range, plan: str) -> list[tuple[str, str, str, None, None, str]]:
    return [(f"u{i:02d}", f"u{i:02d}@example.com", "2026-11-20 10:00:00", None, None, plan) for i in ids]


def _screenshot(browser: str, env: Env, url: str, name: str, size: str) -> Path:
    shot = env.tmp_path / f"{name}.png"
    taken = browse(browser, env.tmp_path, url, f"--screenshot={shot}", f"--window-size={size}",
                   "--hide-scrollbars")
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    assert png_size(shot) == tuple(int(n) for n in size.split(","))
    return shot


def test_a_run_in_progress_and_a_held_pair_in_status_and_in_a_real_browser(
        sqlite_env: Env, chromium: str) -> None:
    """While `syncd run` sends slowly to User.com, another process sees the run in progress
    (`status`, and the page); once it ends, the page names the held pair's reason and the
    `syncd approve` command that releases it, and the daemon's next run. Screenshots at desktop
    and phone width are kept in the test's folder."""
    env = sqlite_env
    env.shop.set(*_customers(range(20), "pro"))
    buyers = audience_toml("Buyers", ["nat"],
                           query="SELECT id AS user_id, email FROM customers WHERE plan = 'pro'")
    assert env.run(env.config(audiences=buyers)).exit_code == 0  # nat holds the 20 as `true`
    env.shop.set(*_customers(range(8), "pro"), *_customers(range(8, 40), "free"))  # 12 leave: held
    env.usercom.delay = 1.5  # 40 users at 4 in flight: the run lasts a while
    port = free_port()
    config = env.write_config(extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n',
                              audiences=buyers + audience_toml("Everyone", ["usercom"]))
    url = f"http://127.0.0.1:{port}/"
    process = start_daemon(env, config)

    def status() -> list[dict[str, object]]:
        return list(json.loads(env.cli("status", "--json", "--config", str(config)).stdout))

    try:
        wait_for(lambda: status()[0]["run_in_progress"] is not None, process)
        human = env.cli("status", "--config", str(config)).stdout
        during = browse(chromium, env.tmp_path, url, "--dump-dom")
        wait_for(lambda: ">held<" in httpx.get(url, timeout=5).text, process, seconds=120)
        after = browse(chromium, env.tmp_path, url, "--dump-dom")
        _screenshot(chromium, env, url, "desktop", "1280,1000")
        _screenshot(chromium, env, url, "phone", "390,1600")
    finally:
        if process.poll() is None:
            stop_daemon(process)

    assert "run 2 in progress since " in human and f"pid {process.pid} on " in human
    dom = Dom()
    dom.feed(during.stdout)
    assert "Run 2 in progress" in during.stdout and dom.tables["pairs"][0][-1] == "This run"

    assert after.returncode == 0, after.stderr[-2000:]
    text = " ".join(re.sub(r"<[^>]+>", "", after.stdout).split())  # what a person reads
    assert "buyers → nat: held holding 12 exits of buyers at nat: 12 exits are 60% of the 20 members" in text
    assert f"syncd approve --config {config} --audience buyers --destination nat" in text
    assert "No run in progress." in text and "Next run: " in text and f"pid {process.pid} on " in text
    dom = Dom()
    dom.feed(after.stdout)
    assert "script" not in dom.tags and "This run" not in dom.tables["pairs"][0]
