"""`coordinator check` / `agent check` and the checks both processes run at start: plain refusals, nothing started."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from safetensors.numpy import save_file

from fedquilt.cli.federation_files import FederationFiles, write_federation
from fedquilt.cli.main import main
from fedquilt.cli.workspace import SitePaths, Workspace
from fedquilt.coordinator import server
from fedquilt.coordinator.config import load_config


@pytest.fixture
def files(tmp_path: Path) -> FederationFiles:
    root = tmp_path / "ws"
    model_dir = root / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    save_file({"model.layers.0.self_attn.q_proj.weight": np.eye(16, dtype=np.float32)}, str(model_dir / "model.safetensors"))
    sites = []
    for i in range(2):
        d = root / f"site-{i}"
        d.mkdir()
        (d / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
        (d / "eval.jsonl").write_text('{"text": "c"}\n')
        sites.append(SitePaths(f"site-{i}", d, d / "train.jsonl", d / "eval.jsonl"))
    ws = Workspace(root=root, model_dir=model_dir, task="causal-lm", num_labels=0, sites=tuple(sites))
    return write_federation(tmp_path / "fed", ws, secagg=False, listen="127.0.0.1:0")


def _edit(path: Path, section: str | None, **values: Any) -> None:
    data = tomllib.loads(path.read_text())
    (data if section is None else data[section]).update(values)
    path.write_text(tomli_w.dumps(data))


def test_coordinator_check_prints_what_would_happen(files: FederationFiles, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coordinator", "check", "--config", str(files.coordinator_config)]) == 0
    out = capsys.readouterr().out
    assert "certificate: coordinator (coordinator)" in out and "start from round 1" in out
    assert "would listen on 127.0.0.1:0" in out and "local_steps" in out
    assert not (files.state_dir / "coordinator.port").exists()  # nothing started


def test_site_certificate_on_the_coordinator_is_refused_at_start(files: FederationFiles,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    site = files.root / "site-0"
    _edit(files.coordinator_config, "tls", cert=str(site / "site-0.pem"), key=str(site / "site-0.key"))
    for command in ("check", "serve"):
        assert main(["coordinator", command, "--config", str(files.coordinator_config)]) == 1
        err = capsys.readouterr().err
        assert "(site-0) has role site; this needs a coordinator certificate" in err and "--role coordinator" in err, err
    assert not (files.state_dir / "coordinator.port").exists()


def test_key_not_matching_its_certificate_is_named(files: FederationFiles, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(files.coordinator_config, "tls", key=str(files.admin_key))
    assert main(["coordinator", "serve", "--config", str(files.coordinator_config)]) == 1
    err = capsys.readouterr().err
    assert "does not match certificate" in err and "Failed to bind" not in err


def test_second_coordinator_on_the_same_port_fails(files: FederationFiles, tmp_path: Path) -> None:
    running = server.start(load_config(files.coordinator_config), tick_seconds=0.05)
    try:
        second = tmp_path / "second.toml"
        data = tomllib.loads(files.coordinator_config.read_text())
        data["state_dir"] = str(tmp_path / "second-state")
        data["server"]["listen"] = f"127.0.0.1:{running.port}"
        second.write_text(tomli_w.dumps(data))
        proc = subprocess.run([sys.executable, "-m", "fedquilt.cli.main", "coordinator", "serve", "--config",
                               str(second)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert f"127.0.0.1:{running.port} is already in use (address already in use)" in proc.stderr, proc.stderr
    finally:
        running.stop(grace=0.1)


def test_busy_metrics_port_names_the_address(files: FederationFiles, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        _edit(files.coordinator_config, "server", metrics_listen=f"127.0.0.1:{port}")
        assert main(["coordinator", "check", "--config", str(files.coordinator_config)]) == 1
        assert f"server.metrics_listen: 127.0.0.1:{port} is already in use" in capsys.readouterr().err


def test_agent_check(files: FederationFiles, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = files.agent_configs[0]
    _edit(cfg, "coordinator", address="127.0.0.1:7443")
    assert main(["agent", "check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "certificate: site site-0" in out and "fingerprint" in out and "(2 lines)" in out
    assert "would connect to 127.0.0.1:7443 as site-0" in out


@pytest.mark.parametrize(("edit", "words"), [
    (("data", {"train": "/nonexistent/train.jsonl"}), "data.train /nonexistent/train.jsonl does not exist"),
    (("model", {"dir": "/nonexistent"}), "holds no config.json"),
    (("tls", {"cert": "ADMIN_CERT", "key": "ADMIN_KEY"}), "(operator) has role admin; this needs a site certificate"),
    (("model", {"rnak": 4}), "did you mean 'rank'"),
])
def test_agent_check_refuses(files: FederationFiles, capsys: pytest.CaptureFixture[str], edit: Any, words: str) -> None:
    cfg = files.agent_configs[0]
    _edit(cfg, "coordinator", address="127.0.0.1:7443")
    section, values = edit
    values = {k: {"ADMIN_CERT": str(files.admin_cert), "ADMIN_KEY": str(files.admin_key)}.get(v, v) if isinstance(v, str)
              else v for k, v in values.items()}
    _edit(cfg, section, **values)
    assert main(["agent", "check", "--config", str(cfg)]) == 1
    assert words in capsys.readouterr().err


def test_agent_check_connect_diagnoses(files: FederationFiles, capsys: pytest.CaptureFixture[str]) -> None:
    running = server.start(load_config(files.coordinator_config), tick_seconds=0.05)
    try:
        cfg = files.agent_configs[0]
        _edit(cfg, "coordinator", address=f"127.0.0.1:{running.port}", server_name="wrong.example.org")
        assert main(["agent", "check", "--config", str(cfg), "--connect"]) == 1
        assert "not valid for the name 'wrong.example.org'" in capsys.readouterr().err
        _edit(cfg, "coordinator", server_name="localhost")
        assert main(["agent", "check", "--config", str(cfg), "--connect"]) == 0
        assert "TLS with" in capsys.readouterr().out
    finally:
        running.stop(grace=0.1)
