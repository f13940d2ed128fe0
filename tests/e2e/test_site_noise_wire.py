"""Optional site-level DP under secure aggregation: clipped, noised submissions; ε in the manifest."""

from __future__ import annotations

import numpy as np
import pytest

from fedquilt.strategies.site_dp import site_level_epsilon
from fedquilt.proto import codec

pytestmark = pytest.mark.slow


def test_site_noise_is_applied_and_accounted(federation) -> None:
    fed = federation(sites=2, rule="fedit", rounds=2, keep_submissions=True,
                     secagg_options={"site_noise_multiplier": 0.8, "site_clip": 0.05, "clip": 8.0})
    fed.start_agents()
    history = fed.wait_rounds()
    assert [h["version"] for h in history] == ["v0001", "v0002"]
    for round_number, version in ((1, "v0001"), (2, "v0002")):
        site_dp = fed.running.store.manifest(fed.files.model, version)["site_level_privacy"]
        assert site_dp["noise_multiplier"] == 0.8 and site_dp["clip"] == 0.05 and site_dp["releases"] == round_number
        # No dropouts: each sum carries the full σ; no amplification is claimed (issue 11).
        assert site_dp["epsilon"] == pytest.approx(site_level_epsilon([0.8] * round_number, 1e-5))
        assert site_dp["sample_rate"] == 1.0 and "no subsampling amplification" in site_dp["model"]
    # What each site submitted (its audit copy, before masking) is clipped to C plus its share of noise:
    # the noise alone has norm ≈ σ·C·sqrt(values / sites), far above C for this many values.
    for cfg in fed.files.agent_configs:
        for path in (cfg.parent / "state" / "submissions").glob("*-phase0.safetensors"):
            vectors = codec.decode_tensors(path.read_bytes())
            vectors.pop("__n__")
            values = sum(v.size for v in vectors.values())
            norm = float(np.sqrt(sum(np.square(v.astype(np.float64)).sum() for v in vectors.values())))
            expected_noise = 0.8 * 0.05 * np.sqrt(values / 2)
            assert 0.8 * expected_noise < norm < 1.2 * expected_noise + 0.05, (norm, expected_noise)
