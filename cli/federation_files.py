"""Write a complete local federation: CA, certificates, coordinator and agent configs.

Used by ``fedquilt demo`` and by the end-to-end tests, so both run exactly what an operator would
write by hand (see docs/quickstart.md for the same files explained).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from ..agent.basemodel import federation_fingerprint
from ..coordinator.pki import Role, init_ca, issue
from .workspace import Workspace


@dataclass(frozen=True)
class FederationFiles:
    """Paths of everything ``write_federation`` produced."""

    root: Path
    ca_dir: Path
    coordinator_config: Path
    agent_configs: tuple[Path, ...]
    admin_cert: Path
    admin_key: Path
    state_dir: Path
    model: str


def write_federation(
    root: Path,
    ws: Workspace,
    *,
    rule: str = "fedit",
    rule_params: dict[str, Any] | None = None,
    rounds: int = 2,
    secagg: bool = True,
    listen: str = "127.0.0.1:0",
    train: dict[str, Any] | None = None,
    ranks: list[int] | None = None,
    alpha: float = 16.0,
    dp: dict[str, Any] | None = None,
    min_sites: int | None = None,
    min_contributors: int | None = None,
    timeouts: tuple[float, float] = (300.0, 60.0),
    model: str = "demo-adapter",
    keep_submissions: bool = False,
    secagg_options: dict[str, Any] | None = None,
    target_modules: list[str] | None = None,
    modules_to_save: list[str] | None = None,
    server_optimizer: dict[str, Any] | None = None,
) -> FederationFiles:
    """Create the CA, certificates and TOML configs for one coordinator and ``len(ws.sites)`` agents."""
    ca_dir = root / "ca"
    init_ca(ca_dir)
    coord = issue(ca_dir, root / "coordinator", "coordinator", Role.COORDINATOR, hosts=("localhost", "127.0.0.1"))
    admin = issue(ca_dir, root / "admin", "operator", Role.ADMIN)
    state_dir = root / "coordinator" / "state"
    n = len(ws.sites)
    config = {
        "state_dir": str(state_dir),
        "tls": {"ca": str(coord.ca), "cert": str(coord.cert), "key": str(coord.key), "crl": str(ca_dir / "crl.pem")},
        "server": {"listen": listen, "metrics_listen": "127.0.0.1:0", "long_poll_seconds": 2.0},
        "federation": {
            "name": "demo", "model": model, "task": ws.task,
            "base_fingerprint": federation_fingerprint(ws.model_dir, ws.task, ws.num_labels or None),
            "rule": rule, "rule_params": rule_params or {}, "rounds": rounds,
            # Under secagg a round opens only with as many sites as the sites' default [privacy] floor (3) asks.
            "min_sites": min_sites if min_sites is not None else (min(n, 3) if secagg else max(1, min(2, n))),
            **({"min_contributors": min_contributors} if min_contributors is not None else {}),
            "train": train or {"local_steps": 12, "batch_size": 8, "lr": 3e-3},
            "train_timeout": timeouts[0], "stage_timeout": timeouts[1], "wait_for_sites": 30.0, "seed": 0,
            # issue 14: a seq-cls head is federated state, trained and averaged densely (not a LoRA target)
            **({"modules_to_save": modules_to_save if modules_to_save is not None else ["score"]}
               if ws.task == "seq-cls" else {}),
            **({"server_optimizer": server_optimizer} if server_optimizer else {}),
        },
        "secagg": {"enabled": secagg, **(secagg_options or {})},
    }
    coordinator_config = root / "coordinator" / "coordinator.toml"
    coordinator_config.write_text(tomli_w.dumps(config))
    agents = []
    for i, site in enumerate(ws.sites):
        paths = issue(ca_dir, root / site.name, site.name, Role.SITE)
        agent: dict[str, Any] = {
            "state_dir": str(root / site.name / "state"),
            "seed": i,
            "keep_submissions": keep_submissions,
            "coordinator": {"address": "PORT-NOT-YET-KNOWN", "server_name": "localhost", "max_backoff": 2.0},
            "tls": {"ca": str(paths.ca), "cert": str(paths.cert), "key": str(paths.key)},
            "model": {"dir": str(ws.model_dir), "task": ws.task, "rank": (ranks or [4] * n)[i], "alpha": alpha,
                      "device": "cpu", "max_length": 64,
                      **({"num_labels": ws.num_labels, "target_modules": ["q_proj", "v_proj"]}
                         if ws.task == "seq-cls" else {}),
                      **({"target_modules": target_modules} if target_modules else {})},
            "data": {"train": str(site.train), "eval": str(site.eval)},
        }
        if dp is not None:
            agent["dp"] = dp
        if secagg and n == 2:
            # A two-site federation is below every site's default [privacy] floor of 3 (each site could subtract
            # its own update from the published aggregate): these generated sites opt in explicitly.
            agent["privacy"] = {"min_secure_sum_sites": 2}
        path = root / site.name / "agent.toml"
        path.write_text(tomli_w.dumps(agent))
        agents.append(path)
    return FederationFiles(root, ca_dir, coordinator_config, tuple(agents), admin.cert, admin.key, state_dir, model)


def point_agents_at(files: FederationFiles, address: str) -> None:
    """Fill in the coordinator's address once it is listening (port 0 is chosen by the OS)."""
    import tomllib

    for path in files.agent_configs:
        data = tomllib.loads(path.read_text())
        data["coordinator"]["address"] = address
        path.write_text(tomli_w.dumps(data))

