"""The README as a reader follows it: every command of "Try every command without accounts"
runs as written, in a clone's layout after `make demo`, against the stand-ins it starts; and
the README's run-summary examples have the shape of a real run's lines.

The one liberty taken: the stand-ins, the metrics listener and the config they share move
from their default ports to free ones, so the test never meets a demo someone left running.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = "## Try every command without accounts"
DEFAULT_PORTS = {"nat": 18081, "usercom": 18082, "segment": 18083, "metrics": 9464}
KEYS = ("demo-nat-key", "demo-usercom-key", "demo-segment-key")


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def code_blocks(text: str, lang: str) -> list[list[str]]:
    """The lines of each ```lang block of `text` ("" for a block without a language)."""
    return [block.splitlines() for block in re.findall(rf"^```{lang}\n(.*?)^```$", text, re.M | re.S)]


def summary_examples() -> list[str]:
    """Every run-summary line the README shows ("INFO nat: 1 audience, ...")."""
    return re.findall(r"^INFO \w+: \d+ audiences?, .*$", README, re.M)


def shape(line: str) -> re.Pattern[str]:
    """The line with every number free: the words, their order and the punctuation stay."""
    return re.compile(re.sub(r"\d+", r"\\d+", re.escape(line)))


def _script(ports: dict[str, int]) -> str:
    """The section's shell blocks as one script. The two commands that run until stopped (the
    stand-ins, `syncd run`) go to the background; the script waits for them to answer and,
    at its end, stops them as Ctrl-C would."""
    def moved(text: str) -> str:
        for name, port in DEFAULT_PORTS.items():
            text = text.replace(str(port), str(ports[name]))
        return text

    lines = ["set -euo pipefail"]
    for line in (line for block in code_blocks(section(SECTION), "sh") for line in block):
        command = line.split("#", 1)[0].strip()
        if command.endswith("-m syncd.dev.standins"):
            flags = " ".join(f"--{name}-port {ports[name]}" for name in ("nat", "usercom", "segment"))
            lines += [f"{command} {flags} > standins.log 2>&1 & STANDINS=$!",
                      *(f"until (exec 3<>/dev/tcp/127.0.0.1/{ports[name]}) 2>/dev/null; do sleep 0.1; done"
                        for name in ("nat", "usercom", "segment"))]
        elif command == "syncd run":
            page = f"http://127.0.0.1:{ports['metrics']}/"
            # Its own page: the log says it serves (a port picked free may be taken meanwhile).
            lines += [f"{command} > daemon.log 2>&1 & DAEMON=$!",
                      "until grep -q 'serving Prometheus metrics' daemon.log; do sleep 0.2; done",
                      f"until curl -sf -o page.html {page}; do sleep 0.2; done",
                      "kill -INT $DAEMON", "wait $DAEMON"]
        elif command:
            lines.append(moved(line))
    return "\n".join([*lines, "kill $STANDINS", "wait $STANDINS"])


def _reader_env() -> dict[str, str]:
    """A shell as a reader opens it: no venv on the PATH, no keys, no config chosen."""
    venvs = {str(Path(sys.prefix) / "bin"), str(ROOT / ".venv" / "bin")}
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p not in venvs)
    drop = {"VIRTUAL_ENV", "SYNCD_CONFIG", "NAT_API_KEY", "USERCOM_API_KEY", "SEGMENT_WRITE_KEY"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PATH": path}


def _clone_after_make_demo(tmp_path: Path, ports: dict[str, int]) -> None:
    """What a clone holds after `make demo`: .venv, the configs, examples/shop.db (the demo
    ran: `make demo` runs `python -m syncd.dev.demo` once .venv exists)."""
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "examples").mkdir()
    for name in ("config.toml", "examples/standins.toml"):
        text = (ROOT / name).read_text(encoding="utf-8")
        for port_name, port in DEFAULT_PORTS.items():
            text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{ports[port_name]}")
        (tmp_path / name).write_text(text, encoding="utf-8")
    demo = subprocess.run([sys.executable, "-m", "syncd.dev.demo"], cwd=tmp_path, env=_reader_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert (tmp_path / "examples" / "shop.db").exists()


def test_the_try_section_runs_as_written_against_the_standins(tmp_path: Path) -> None:
    assert shutil.which("curl"), "the README's examples use curl"
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(DEFAULT_PORTS):
        ports = {name: free_port() for name in DEFAULT_PORTS}
    _clone_after_make_demo(tmp_path, ports)

    done = subprocess.run(["bash", "-c", _script(ports)], cwd=tmp_path, env=_reader_env(),
                          capture_output=True, text=True, timeout=600, check=False)

    logs = {name: (tmp_path / name).read_text() for name in ("standins.log", "daemon.log")}
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + str(logs)
    assert "Traceback" not in done.stderr + logs["daemon.log"]
    for key in KEYS:  # the keys the section names are the ones the stand-ins accept and print
        assert key in section(SECTION) and key in logs["standins.log"]
    assert "/_standin/received" in logs["standins.log"]
    assert '"order_completed_last_30days": true' in done.stdout  # curl: what Nat received
    assert "nothing held for order_completed_last_30days at nat" in done.stdout
    assert "<title>syncd status</title>" in (tmp_path / "page.html").read_text()
    assert "syncd stopped" in logs["daemon.log"]
    # The README's run summaries have the shape of this real run's lines.
    real = [line for line in done.stderr.splitlines() if re.match(r"INFO \w+: \d+ audiences?, ", line)]
    examples = summary_examples()
    assert len(examples) >= 3 and real
    for example in examples:
        assert any(shape(example).fullmatch(line) for line in real), (example, real)
