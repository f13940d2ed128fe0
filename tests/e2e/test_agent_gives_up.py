"""`fedquilt agent run` says once why it cannot connect and exits non-zero after max_failed_handshakes."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from typing import Any

import tomli_w

from fedquilt.cli.agent import EXIT_CANNOT_CONNECT
from fedquilt.cli.federation_files import point_agents_at


def test_agent_exits_after_failed_handshakes(federation: Any) -> None:
    fed = federation(sites=2, rule="fedit", secagg=False, rounds=1)
    point_agents_at(fed.files, fed.address)
    cfg = fed.files.agent_configs[0]
    data = tomllib.loads(cfg.read_text())
    data["coordinator"].update(server_name="coord.example.org", max_failed_handshakes=3, max_backoff=0.2)
    cfg.write_text(tomli_w.dumps(data))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fedquilt.cli.main", "agent", "run", "--no-progress", "--config",
                           str(cfg)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == EXIT_CANNOT_CONNECT, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if "not valid for the name 'coord.example.org'" in line]
    assert len(said) == 2, proc.stderr[-3000:]  # once when found, once when giving up
    assert "giving up" in said[-1] and "UNAVAILABLE" not in proc.stderr
    assert time.monotonic() - started < 200
