"""One loader for every config file (``config_file``), with an environment prefix per program.

A coordinator and an agent on one host (a container with both, a developer's laptop) used to read the same
``FEDQUILT_<SECTION>__<FIELD>`` variables: an agent's ``FEDQUILT_TLS__KEY`` became the coordinator's key too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from fedquilt.agent.config import load_agent_config, load_client_config
from fedquilt.coordinator.config import load_config
from fedquilt.simulation.config import load_sim_config

COORD = {"state_dir": "state", "tls": {"ca": "ca.pem", "cert": "c.pem", "key": "c.key"},
         "server": {"listen": "127.0.0.1:7443"},
         "federation": {"base_fingerprint": "f" * 64, "train": {"local_steps": 5}}, "secagg": {"enabled": True}}
AGENT = {"state_dir": "state", "coordinator": {"address": "localhost:7443"},
         "tls": {"ca": "ca.pem", "cert": "s.pem", "key": "s.key"}, "model": {"dir": "model"},
         "data": {"train": "train.jsonl"}}


def _write(tmp_path: Path, data: dict, name: str) -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return path


def test_each_program_reads_only_its_own_prefix(tmp_path: Path) -> None:
    coord, agent = _write(tmp_path, COORD, "c.toml"), _write(tmp_path, AGENT, "a.toml")
    env = {"FEDQUILT_AGENT_TLS__KEY": "/run/agent.key", "FEDQUILT_COORDINATOR_TLS__KEY": "/run/coordinator.key",
           "FEDQUILT_COORDINATOR_SERVER__LISTEN": "0.0.0.0:7443"}
    assert load_agent_config(agent, environ=env).tls.key == Path("/run/agent.key")
    assert load_client_config(agent, environ=env).tls.key == Path("/run/agent.key")
    c = load_config(coord, environ=env)
    assert c.tls.key == Path("/run/coordinator.key") and c.server.listen == "0.0.0.0:7443"


@pytest.mark.parametrize("program", ["agent", "coordinator"])
def test_the_old_shared_form_is_refused_with_its_new_name(tmp_path: Path, program: str) -> None:
    env = {"FEDQUILT_TLS__KEY": "/run/agent.key"}
    with pytest.raises(ValueError, match="FEDQUILT_TLS__KEY is no longer read.*FEDQUILT_AGENT_TLS__KEY"):
        if program == "agent":
            load_agent_config(_write(tmp_path, AGENT, "a.toml"), environ=env)
        else:
            load_config(_write(tmp_path, COORD, "c.toml"), environ=env)


def test_unrelated_fedquilt_variables_are_left_alone(tmp_path: Path) -> None:
    env = {"FEDQUILT_WRITE_SCREENSHOTS": "1", "FEDQUILT_DEV_CERTS_OWNER": "10001:10001"}
    assert load_config(_write(tmp_path, COORD, "c.toml"), environ=env).server.listen == "127.0.0.1:7443"


def test_every_file_reports_a_typo_the_same_way(tmp_path: Path) -> None:
    """The simulation's loader is the same one: a typo names the key and the keys allowed there."""
    sim = _write(tmp_path, {"data": {"source": "rotten-tomatoes", "site": 3}}, "sim.toml")
    with pytest.raises(ValueError, match=r"sim\.toml.*data.*site.*sites"):
        load_sim_config(sim)
    for load, name in ((load_sim_config, "missing.toml"), (load_agent_config, "missing.toml"),
                       (load_config, "missing.toml")):
        with pytest.raises(ValueError, match="config .*missing.toml does not exist"):
            load(tmp_path / name)
