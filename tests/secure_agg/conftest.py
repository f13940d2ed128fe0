"""Fixtures for secure_agg tests: one in-test federation CA with site identities per session."""

from __future__ import annotations

import pytest
from secagg_harness import Authority, Federation


@pytest.fixture(scope="session")
def federation() -> Federation:
    """A CA and 50 sites with EC P-256 identities (the first two use Ed25519)."""
    return Federation.create(50, ed25519_sites=2)


@pytest.fixture(scope="session")
def other_ca() -> Authority:
    """A second, unrelated CA."""
    return Authority("some other CA")
