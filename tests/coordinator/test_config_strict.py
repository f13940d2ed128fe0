"""Every config section is strict: a typo is refused at load, naming the key and the keys allowed there."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from fedquilt.agent.config import load_agent_config, load_client_config
from fedquilt.coordinator.config import load_config

COORD = {
    "state_dir": "state",
    "tls": {"ca": "ca.pem", "cert": "c.pem", "key": "c.key"},
    "server": {"listen": "127.0.0.1:7443"},
    "federation": {"base_fingerprint": "f" * 64, "train": {"local_steps": 5, "eval_batches": 2}},
    "secagg": {"enabled": True},
}
AGENT = {
    "state_dir": "state",
    "coordinator": {"address": "localhost:7443"},
    "tls": {"ca": "ca.pem", "cert": "s.pem", "key": "s.key"},
    "model": {"dir": "model"},
    "data": {"train": "train.jsonl"},
}


def _write(tmp_path: Path, data: dict, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return path


def _with(base: dict, section: str | None, key: str, value: object) -> dict:
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    if section is None:
        data[key] = value
    elif "." in section:
        outer, inner = section.split(".")
        data[outer] = {**data[outer], inner: {**data[outer][inner], key: value}}
    else:
        data[section] = {**data.get(section, {}), key: value}
    return data


def test_valid_configs_load(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, COORD))
    assert cfg.federation.train == {"local_steps": 5, "eval_batches": 2}
    assert load_agent_config(_write(tmp_path, AGENT, "a.toml")).coordinator.max_failed_handshakes == 10


@pytest.mark.parametrize(("section", "typo", "allowed"), [
    (None, "state_dri", "state_dir"), ("tls", "crll", "crl"), ("server", "listn", "listen"),
    ("federation", "round", "rounds"), ("secagg", "clp", "clip"), ("federation.train", "local_step", "local_steps"),
])
def test_coordinator_typo_is_refused_naming_key_and_allowed(tmp_path: Path, section: str | None, typo: str,
                                                             allowed: str) -> None:
    with pytest.raises(ValueError) as err:
        load_config(_write(tmp_path, _with(COORD, section, typo, 1)))
    msg = str(err.value)
    assert repr(typo) in msg and f"did you mean {allowed!r}" in msg and "allowed:" in msg, msg
    assert allowed in msg.split("allowed:")[1]
    if section == "federation.train":
        assert "eval_batches" in msg.split("allowed:")[1]


def test_missing_train_is_refused(tmp_path: Path) -> None:
    data = _with(COORD, None, "federation", {"base_fingerprint": "f" * 64})
    with pytest.raises(ValueError, match="federation.train is missing.*local_steps"):
        load_config(_write(tmp_path, data))


def test_train_values_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="federation.train.lr"):
        load_config(_write(tmp_path, _with(COORD, "federation.train", "lr", -1.0)))


@pytest.mark.parametrize("listen", ["7451", "host:port", "0.0.0.0:70000", ":7443"])
def test_bad_listen_is_refused(tmp_path: Path, listen: str) -> None:
    with pytest.raises(ValueError, match=r"server.listen: must be HOST:PORT"):
        load_config(_write(tmp_path, _with(COORD, "server", "listen", listen)))


@pytest.mark.parametrize(("section", "typo", "allowed"), [
    (None, "seeds", "seed"), ("coordinator", "adress", "address"), ("tls", "certt", "cert"),
    ("model", "rnak", "rank"), ("data", "trian", "train"),
])
def test_agent_typo_is_refused_naming_key_and_allowed(tmp_path: Path, section: str | None, typo: str,
                                                       allowed: str) -> None:
    with pytest.raises(ValueError) as err:
        load_agent_config(_write(tmp_path, _with(AGENT, section, typo, "x"), "a.toml"))
    assert repr(typo) in str(err.value) and f"did you mean {allowed!r}" in str(err.value)


def test_agent_dp_typo_is_refused(tmp_path: Path) -> None:
    data = _with(AGENT, None, "dp", {"noise_multiplier": 1.0, "max_grad_nrm": 1.0})
    with pytest.raises(ValueError) as err:
        load_agent_config(_write(tmp_path, data, "a.toml"))
    assert "'max_grad_nrm'" in str(err.value) and "did you mean 'max_grad_norm'" in str(err.value)


def test_agent_address_needs_a_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="coordinator.address: must be HOST:PORT"):
        load_agent_config(_write(tmp_path, _with(AGENT, "coordinator", "address", "coord.example.org"), "a.toml"))


def test_consumer_config_needs_only_coordinator_and_tls(tmp_path: Path) -> None:
    data = {"coordinator": AGENT["coordinator"], "tls": AGENT["tls"]}
    cfg = load_client_config(_write(tmp_path, data, "consumer.toml"))
    assert cfg.tls.cert == (tmp_path / "s.pem").resolve()
