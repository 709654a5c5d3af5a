"""The systemd unit that ships in deploy/ is valid for systemd itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "syncd.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify fails if ExecStart's binary is missing, and only *warns* on typos (exit 0):
    # point ExecStart at this environment's real syncd and require an empty stderr.
    syncd = Path(sys.executable).parent / "syncd"
    assert syncd.exists()
    text = UNIT.read_text().replace("/opt/syncd/.venv/bin/syncd", str(syncd))
    unit = tmp_path / "syncd.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_unit_runs_the_daemon_and_loads_credentials() -> None:
    lines = UNIT.read_text().splitlines()
    assert "ExecStart=/opt/syncd/.venv/bin/syncd run --config /etc/syncd/config.toml" in lines
    assert any(line.startswith("LoadCredential=nat:") for line in lines)
    assert "NoNewPrivileges=yes" in lines and "ProtectSystem=strict" in lines
