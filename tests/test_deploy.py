"""The systemd unit that ships in deploy/ is valid for systemd itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "syncd.service"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


def verify(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # verify fails if ExecStart's binary is missing, and only *warns* on typos and unknown
    # keys (exit 0): point ExecStart at this environment's real syncd; callers check stderr.
    syncd = Path(sys.executable).parent / "syncd"
    assert syncd.exists()
    unit = tmp_path / "syncd.service"
    unit.write_text(text.replace("/opt/syncd/.venv/bin/syncd", str(syncd)))
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          check=False)


@needs_systemd
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(), tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@needs_systemd
@pytest.mark.parametrize(("good", "bad"), [
    ("WatchdogSec=5min", "WatchdogSecs=5min"),  # unknown key
    ("NotifyAccess=main", "NotifyAccess=everyone"),  # bad value
    ("TimeoutStopSec=90s", "TimeoutStopSec=ninety"),  # not a time span
])
def test_verify_catches_mistakes_in_the_unit(tmp_path: Path, good: str, bad: str) -> None:
    text = UNIT.read_text()
    assert good in text
    result = verify(text.replace(good, bad, 1), tmp_path)
    assert result.stderr != ""  # what the real test above rejects


def test_unit_runs_the_daemon_and_loads_credentials() -> None:
    lines = UNIT.read_text().splitlines()
    assert "ExecStart=/opt/syncd/.venv/bin/syncd run --config /etc/syncd/config.toml" in lines
    assert any(line.startswith("LoadCredential=nat:") for line in lines)
    assert "NoNewPrivileges=yes" in lines and "ProtectSystem=strict" in lines
    assert "DynamicUser=yes" in lines and "StateDirectory=syncd" in lines


def test_unit_is_a_notify_service_with_a_watchdog() -> None:
    lines = UNIT.read_text().splitlines()
    assert {"Type=notify", "NotifyAccess=main", "WatchdogSec=5min"} <= set(lines)
    assert "RestartPreventExitStatus=2" in lines  # a config error is not fixed by restarting
