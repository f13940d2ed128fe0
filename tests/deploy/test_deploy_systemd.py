"""deploy/systemd/fedquilt-agent.service: systemd's own verifier and security scorer where present,
and a parser test of the keys the hardening relies on; the example agent.toml validates."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from deploy_harness import DEPLOY

from fedquilt.agent.config import load_agent_config

UNIT = DEPLOY / "systemd" / "fedquilt-agent.service"
EXAMPLE = DEPLOY / "systemd" / "agent.toml"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (systemd allows repeated keys); comments and blanks skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(m.group(1), defaultdict(list))
            continue
        key, eq, value = line.partition("=")
        if current is None or not eq:
            raise ValueError(f"line {n} is neither a section nor key=value: {line!r}")
        current[key].append(value)
    return sections


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this environment's fedquilt (verify checks the binary exists)."""
    exe = shutil.which("fedquilt") or str(Path(sys.executable).with_name("fedquilt"))
    if not Path(exe).exists():
        pytest.skip("no fedquilt console script in this environment")
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/fedquilt/bin/fedquilt", exe))
    return copy


def test_unit_has_the_hardening_and_restart_policy() -> None:
    unit = parse_unit(UNIT.read_text())
    svc = unit["Service"]
    assert svc["User"] == ["fedquilt"] and svc["Group"] == ["fedquilt"]
    assert svc["ProtectSystem"] == ["strict"]
    assert svc["StateDirectory"] == ["fedquilt"] and svc["ReadWritePaths"] == ["%S/fedquilt %C/fedquilt"]
    assert svc["Restart"] == ["on-failure"] and svc["RestartSec"] == ["15s"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "ProtectKernelTunables", "RestrictSUIDSGID"):
        assert svc[key] == ["yes"], key
    assert svc["CapabilityBoundingSet"] == [""]
    assert "agent run" in svc["ExecStart"][0] and "--no-progress" in svc["ExecStart"][0]
    # The key reaches the service as a credential, and the config is pointed at it.
    assert svc["LoadCredential"] == ["agent.key:/etc/fedquilt/tls/agent.key"]
    assert "FEDQUILT_AGENT_TLS__KEY=%d/agent.key" in svc["Environment"]
    assert unit["Unit"]["StartLimitBurst"] == ["5"] and unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_parser_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_unit("[Service]\nProtectSystem strict\n")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    done = subprocess.run(["systemd-analyze", "verify", str(runnable_copy(tmp_path))], capture_output=True,
                          text=True, timeout=60, check=False)
    # verify exits 0 on unknown keys and bad values too, but names them on stderr.
    assert done.returncode == 0 and str(tmp_path) not in done.stderr, done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    unit = runnable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strikt"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert "ProtectSystem" in done.stderr or "protect system" in done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_security_exposure_is_low(tmp_path: Path) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(runnable_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze has no offline security mode: {done.stderr.strip()[:200]}")
    assert float(m.group(1)) <= 2.0, done.stdout[-2000:]


def test_example_agent_config_validates() -> None:
    cfg = load_agent_config(EXAMPLE, environ={"FEDQUILT_AGENT_TLS__KEY": "/run/credentials/fedquilt-agent.service/agent.key"})
    assert cfg.state_dir == Path("/var/lib/fedquilt")  # the unit's StateDirectory
    assert cfg.tls.key == Path("/run/credentials/fedquilt-agent.service/agent.key")
    assert cfg.tls.cert.parent == Path("/etc/fedquilt/tls")
