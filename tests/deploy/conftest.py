"""Fixtures for the deployment tests: one dev PKI made by deploy/dev-certs.sh, shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_harness import run_dev_certs


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT of ``dev-certs.sh OUT 3``: ca/, coordinator/, admin/, site-1..3/."""
    out = tmp_path_factory.mktemp("pki") / "pki"
    done = run_dev_certs(out, "3")
    if done.returncode != 0:
        raise RuntimeError(f"dev-certs.sh failed: {done.stderr}")
    return out
