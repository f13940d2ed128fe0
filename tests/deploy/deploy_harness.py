"""Shared helpers of the deployment tests: where deploy/ is, and running deploy/dev-certs.sh."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DEV_CERTS = DEPLOY / "dev-certs.sh"


def run_dev_certs(out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run deploy/dev-certs.sh OUT ARGS... with this interpreter's fedquilt; output captured."""
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(DEV_CERTS), str(out), *args], capture_output=True, text=True, env=full_env,
                          timeout=120, check=False)
