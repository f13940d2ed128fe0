"""README's "Running a real federation", run literally on loopback from an empty folder.

The commands are read from the README's bash block and the two configuration files from the
fenced TOML blocks of docs/coordinator.md and docs/agent.md, so the documentation cannot drift
from the code. The only substitutions are what a machine-local run must change: the two port
numbers (7443, 9464 -> free ports, other tests run in parallel), the fingerprint the README tells the
operator to paste, and each site's name in its copy of the agent config. Every command runs in a
shell exactly as written; ``serve`` and ``agent run`` run as background processes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SITES = ("hospital-a", "hospital-b", "hospital-c")
FINGERPRINT_PLACEHOLDER = "<output of: fedquilt fingerprint base-model>"


def fenced(markdown: Path, lang: str, first_line_starts: str | None = None, after_heading: str | None = None) -> str:
    """The first ```lang block (whose first line starts with ``first_line_starts``, or below ``after_heading``)."""
    text = markdown.read_text()
    if after_heading is not None:
        text = text[text.index(after_heading):]
    for block in re.findall(rf"```{lang}\n(.*?)```", text, re.S):
        if first_line_starts is None or block.startswith(first_line_starts):
            return str(block)
    raise AssertionError(f"{markdown.name}: no ```{lang} block" + (f" starting with {first_line_starts!r}"
                                                                    if first_line_starts else ""))


def readme_commands() -> list[str]:
    block = fenced(ROOT / "README.md", "bash", after_heading="## Running a real federation")
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_names_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| command | what |"):]
    for command in ("admin", "merge", "fingerprint", "versions", "status", "pull", "certs", "coordinator", "agent"):
        assert f"`fedquilt {command}" in table, command


@pytest.mark.timeout(900)
def test_operator_walkthrough(tmp_path: Path, workspace_factory: Callable[..., Any]) -> None:
    ws = workspace_factory(3)
    work = tmp_path / "federation"
    work.mkdir()
    # What the sites hold before the README starts: the base model and their own data.
    shutil.copytree(ws.model_dir, work / "base-model")
    grpc_port, http_port = _free_port(), _free_port()

    def local(text: str) -> str:
        return text.replace("7443", str(grpc_port)).replace("9464", str(http_port))

    env = dict(os.environ)
    bin_dir = tmp_path / "bin"  # `fedquilt` is this checkout's CLI, whatever the PATH says
    bin_dir.mkdir()
    (bin_dir / "fedquilt").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fedquilt.cli.main "$@"\n')
    (bin_dir / "fedquilt").chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"

    def sh(command: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True,
                              timeout=300, **kw)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        return proc

    background: list[subprocess.Popen[str]] = []

    def start(command: str, log: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=work, env=env, text=True,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        background.append(proc)
        return proc

    commands = [local(c) for c in readme_commands()]
    coordinator_toml = local(fenced(ROOT / "docs" / "coordinator.md", "toml", "# coordinator.toml"))
    agent_toml = local(fenced(ROOT / "docs" / "agent.md", "toml", "# hospital-a/agent.toml"))
    assert FINGERPRINT_PLACEHOLDER in coordinator_toml
    try:
        agents: list[subprocess.Popen[str]] = []
        coordinator = None
        for command in commands:
            if command.startswith("fedquilt fingerprint"):
                fp = sh(command).stdout.strip()
                (work / "coordinator.toml").write_text(coordinator_toml.replace(FINGERPRINT_PLACEHOLDER, fp))
            elif command.startswith("fedquilt coordinator serve"):
                coordinator = start(command, tmp_path / "coordinator.log")
                _wait_for(lambda: (work / "state" / "coordinator.port").exists(), 60, "coordinator listening",
                          tmp_path / "coordinator.log")
            elif "hospital-a/agent.toml" in command:
                for i, site in enumerate(SITES):
                    for name in ("train.jsonl", "eval.jsonl"):
                        shutil.copy(getattr(ws.sites[i], name.split(".")[0]), work / site / name)
                    (work / site / "agent.toml").write_text(agent_toml.replace("hospital-a", site))
                    site_command = command.replace("hospital-a", site)
                    if " agent run " in f" {site_command} ":
                        agents.append(start(site_command, tmp_path / f"{site}.log"))
                    else:
                        out = sh(site_command).stdout
                        assert f"certificate: site {site}" in out and "TLS with" in out, out
                if agents:
                    for site, proc in zip(SITES, agents):
                        assert proc.wait(timeout=600) == 0, (tmp_path / f"{site}.log").read_text()[-3000:]
            elif command.startswith("fedquilt status"):
                out = sh(command).stdout
                assert "federation clinics (fedit, model clinical-notes): finished, round 2 of 2 done" in out, out
                assert "sites: 3 of 3" in out or "of 3 online" in out
            elif command.startswith("fedquilt versions"):
                out = sh(command).stdout
                assert "clinical-notes:v0001" in out and "clinical-notes:v0002" in out and "latest" in out, out
            elif command.startswith("fedquilt coordinator check"):
                out = sh(command).stdout
                assert "start from round 1" in out and "ok: `fedquilt coordinator serve` would start" in out, out
            else:
                sh(command)
        assert coordinator is not None and agents, "the README must start a coordinator and agents"
        log = (tmp_path / "coordinator.log").read_text()
        assert "round 1 opened with 3 sites" in log, log[-3000:]
        assert "federation clinics finished: 2 of 2 rounds published" in log
        _check_pulled_adapter(work)
    finally:
        for proc in background:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _wait_for(check: Callable[[], bool], seconds: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {seconds}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def _check_pulled_adapter(work: Path) -> None:
    """Stock PEFT loads the pull both ways, and both give the same logits."""
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    adapter = work / "adapter"
    assert (adapter / "manifest.json").exists() and (adapter / "adapter_model.safetensors").exists()
    auto = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    base = AutoModelForCausalLM.from_pretrained(str(work / "base-model"))
    by_hand = PeftModel.from_pretrained(base, str(adapter))
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        a, b = auto(input_ids=ids).logits, by_hand(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(work / "base-model"))(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, plain, atol=1e-6)  # the adapter changes the model
