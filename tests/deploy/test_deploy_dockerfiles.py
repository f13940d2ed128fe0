"""deploy/docker/*.Dockerfile parsed with dockerfile-parse: base images, non-root user, entrypoints,
health check, volumes, no secrets; and the per-Dockerfile ignore files (no Docker engine here)."""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

import pytest
from deploy_harness import DEPLOY, REPO

dockerfile_parse = pytest.importorskip("dockerfile_parse")
DOCKER = DEPLOY / "docker"
NAMES = ("coordinator", "agent-cpu", "agent-cuda")


def parse(name: str) -> Any:
    """A DockerfileParser over deploy/docker/NAME.Dockerfile."""
    parser = dockerfile_parse.DockerfileParser(str(DOCKER / f"{name}.Dockerfile"), cache_content=True)
    return parser


def instructions(name: str, kind: str) -> list[str]:
    """Values of every ``kind`` instruction, in order."""
    return [i["value"] for i in parse(name).structure if i["instruction"] == kind]


def final_stage(name: str, kind: str) -> list[str]:
    """Values of ``kind`` instructions after the last FROM (the image that ships)."""
    out: list[str] = []
    for i in parse(name).structure:
        if i["instruction"] == "FROM":
            out = []
        elif i["instruction"] == kind:
            out.append(i["value"])
    return out


@pytest.mark.parametrize(("name", "base"), [("coordinator", "python:3.11-slim"), ("agent-cpu", "python:3.11-slim"),
                                            ("agent-cuda", "nvidia/cuda:")])
def test_base_images(name: str, base: str) -> None:
    parents = parse(name).parent_images
    assert len(parents) == 2 and all(p.startswith(base) for p in parents), parents
    if name == "agent-cuda":
        assert all(re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu\d+\.\d+", p) for p in parents), parents


@pytest.mark.parametrize(("name", "index"), [("coordinator", "/whl/cpu"), ("agent-cpu", "/whl/cpu"),
                                             ("agent-cuda", "/whl/${TORCH_CUDA}")])
def test_torch_comes_pinned_from_the_right_index(name: str, index: str) -> None:
    args = dict(a.split("=", 1) for a in instructions(name, "ARG") if "=" in a)
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_INDEX_URL"].endswith(index)
    runs = " ".join(instructions(name, "RUN"))
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in runs
    # torch is installed before the package, so `pip install /src` finds it satisfied.
    assert runs.index("torch==") < runs.index("pip install /src")


@pytest.mark.parametrize("name", NAMES)
def test_ships_as_a_non_root_user(name: str) -> None:
    users = final_stage(name, "USER")
    assert users == ["10001:10001"]
    assert "useradd --system --uid 10001" in " ".join(final_stage(name, "RUN"))


@pytest.mark.parametrize(("name", "cmd"), [("coordinator", ["coordinator", "serve"]), ("agent-cpu", ["agent", "run"]),
                                           ("agent-cuda", ["agent", "run"])])
def test_entrypoint_and_default_command(name: str, cmd: list[str]) -> None:
    assert json.loads(final_stage(name, "ENTRYPOINT")[0]) == ["tini", "--", "fedquilt"]
    default = json.loads(final_stage(name, "CMD")[0])
    assert default[:3] == ["--log-json", *cmd]
    assert default[-2] == "--config" and default[-1].startswith("/etc/fedquilt/config/")


@pytest.mark.parametrize(("name", "volumes"), [("coordinator", ["/var/lib/fedquilt", "/etc/fedquilt/tls"]),
                                               ("agent-cpu", ["/var/lib/fedquilt", "/etc/fedquilt/tls", "/data"]),
                                               ("agent-cuda", ["/var/lib/fedquilt", "/etc/fedquilt/tls", "/data"])])
def test_volumes_for_state_certs_and_data(name: str, volumes: list[str]) -> None:
    assert [json.loads(v) for v in final_stage(name, "VOLUME")] == [volumes]
    # The state directory exists, owned by the runtime user, so a fresh named volume inherits that owner.
    assert "install -d -o fedquilt -g fedquilt -m 0700 /var/lib/fedquilt" in " ".join(final_stage(name, "RUN"))


def test_coordinator_healthcheck_hits_healthz_on_the_metrics_port() -> None:
    checks = final_stage("coordinator", "HEALTHCHECK")
    assert len(checks) == 1 and "http://127.0.0.1:9464/healthz" in checks[0]
    env = parse("coordinator").envs
    assert env["FEDQUILT_COORDINATOR_SERVER__METRICS_LISTEN"] == "0.0.0.0:9464"
    assert env["FEDQUILT_COORDINATOR_SERVER__LISTEN"] == "0.0.0.0:7443"
    assert "7443" in final_stage("coordinator", "EXPOSE")[0] and "9464" in final_stage("coordinator", "EXPOSE")[0]


@pytest.mark.parametrize("name", ["agent-cpu", "agent-cuda"])
def test_agent_images_set_no_coordinator_sections(name: str) -> None:
    # The agent config forbids unknown sections, and FEDQUILT_COORDINATOR_SERVER__* would create one.
    assert not [k for k in parse(name).envs if k.startswith("FEDQUILT_")]


@pytest.mark.parametrize("name", NAMES)
def test_no_secrets_baked_in(name: str) -> None:
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    for kind in ("COPY", "ADD"):
        for value in instructions(name, kind):
            assert not re.search(r"\.(key|pem|crt|p12)\b", value), value
    assert not re.search(r"(?i)(password|secret|token)\s*=", text)
    copies = instructions(name, "COPY")
    assert copies == [". /src", "--from=build /opt/venv /opt/venv"]


@pytest.mark.parametrize("name", NAMES)
def test_ignore_file_keeps_keys_and_junk_out_but_the_package_in(name: str) -> None:
    ignore = DOCKER / f"{name}.Dockerfile.dockerignore"
    patterns = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ignore.read_text() == (DOCKER / "coordinator.Dockerfile.dockerignore").read_text()
    assert {".git", "**/*.key", "**/*.pem", "tests", "bench"} <= set(patterns)

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
                   or path.split("/")[0] == p for p in patterns)

    for needed in ("pyproject.toml", "README.md", "__init__.py", "cli/main.py", "proto/federation.proto",
                   "coordinator/server.py", "agent/loop.py", "secure_agg/shamir.py", "strategies/lora.py"):
        assert (REPO / needed).exists(), needed
        assert not ignored(needed), needed
    for junk in (".git", "tests/conftest.py", "ca/ca.key", "site-1/site-1.pem", "agent/__pycache__"):
        assert ignored(junk), junk
