"""The coordinator asks the rule's registry entry before it starts: a rule that needs each site's own factors never
runs under secure aggregation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedquilt.coordinator import server
from fedquilt.coordinator.config import CoordinatorConfig, FederationConfig, TlsConfig
from fedquilt.strategies.registry import RULES


def _config(tmp_path: Path, rule: str) -> CoordinatorConfig:
    missing = tmp_path / "absent"
    return CoordinatorConfig(tls=TlsConfig(ca=missing, cert=missing, key=missing), state_dir=tmp_path / "state",
                             federation=FederationConfig(base_fingerprint="f" * 64, rule=rule, min_sites=2))


@pytest.mark.parametrize("rule", sorted(n for n, e in RULES.items() if not e.sums_only))
def test_an_individual_rule_is_refused_under_secure_aggregation(tmp_path: Path, rule: str) -> None:
    with pytest.raises(ValueError, match=f"rule '{rule}' needs each site's own factors"):
        server.start(_config(tmp_path, rule))
    assert not (tmp_path / "state").exists()  # refused before any state is touched
