"""deploy/compose.yaml: valid against the Compose Specification schema, and wired so that every container
finds its config, certificates and data (simulated from the dev jobs' own outputs; no Docker engine here)."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml
from cryptography import x509
from deploy_harness import DEPLOY

from fedquilt.agent.basemodel import fingerprint
from fedquilt.cli.workspace import Workspace
from fedquilt.agent.config import load_agent_config
from fedquilt.coordinator.config import load_config

COMPOSE = DEPLOY / "compose.yaml"
AGENTS = ("agent-1", "agent-2", "agent-3")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as Compose reads it (YAML anchors and merge keys resolved)."""
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def compose_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema as vendored by check-jsonschema."""
    pytest.importorskip("check_jsonschema")
    from importlib import resources

    text = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Every violation of the Compose Specification in ``doc``."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


@pytest.mark.parametrize("mutation", ["bad-condition", "unknown-key", "bad-healthcheck"])
def test_schema_rejects_broken_variants(compose: dict[str, Any], mutation: str) -> None:
    broken = copy.deepcopy(compose)
    agent = broken["services"]["agent-1"]
    if mutation == "bad-condition":
        agent["depends_on"]["coordinator"]["condition"] = "service_ready"
    elif mutation == "unknown-key":
        agent["volumez"] = []
    else:
        broken["services"]["coordinator"]["healthcheck"]["intervall"] = "10s"
    assert schema_errors(broken) != []


def test_start_order_dev_jobs_then_coordinator_then_agents(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for job in ("dev-ca", "dev-workspace"):
        assert services[job]["restart"] == "no"  # a completed one-shot job must not be restarted
    coordinator = services["coordinator"]
    assert coordinator["depends_on"] == {"dev-ca": {"condition": "service_completed_successfully"},
                                         "dev-workspace": {"condition": "service_completed_successfully"}}
    assert "healthcheck" in coordinator  # agents wait for service_healthy, which needs one
    for name in AGENTS:
        assert services[name]["depends_on"]["coordinator"] == {"condition": "service_healthy"}


def test_volumes_declared_used_and_private(compose: dict[str, Any]) -> None:
    services = compose["services"]
    used = {m.split(":")[0] for s in services.values() for m in s.get("volumes", []) if not m.startswith(".")}
    assert used == set(compose["volumes"])
    # The CA key's volume is mounted by the CA job only.
    assert [n for n, s in services.items() if any(m.startswith("certs-ca:") for m in s.get("volumes", []))] == ["dev-ca"]
    # Each agent mounts its own certificate, data and state volumes and nobody else's.
    for i, name in enumerate(AGENTS, start=1):
        own = {m.split(":")[0] for m in services[name]["volumes"]}
        assert own == {f"certs-site-{i}", f"data-site-{i}", f"state-site-{i}"}
        for other, svc in services.items():
            if other not in (name, "dev-ca", "dev-workspace"):
                assert not own & {m.split(":")[0] for m in svc.get("volumes", [])}, (name, other)


def test_no_secrets_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    assert "BEGIN" not in text and "PRIVATE KEY" not in text
    assert "FEDQUILT_AGENT_TLS__KEY: /etc/fedquilt/tls/" in text  # keys are paths into mounted volumes


class Stack:
    """Container paths of the compose stack mapped onto host folders filled by the dev jobs' real code."""

    def __init__(self, compose: dict[str, Any], volume_dirs: dict[str, Path]) -> None:
        self.services: dict[str, Any] = compose["services"]
        self.configs: dict[str, Any] = compose["configs"]
        self.volume_dirs = volume_dirs

    def mounts(self, service: str) -> list[tuple[PurePosixPath, Path, bool]]:
        """(container target, host source, read-only) for every volume, bind and config of ``service``."""
        out = []
        for spec in self.services[service].get("volumes", []):
            source, target, *mode = spec.split(":")
            host = DEPLOY / source if source.startswith(".") else self.volume_dirs[source]
            out.append((PurePosixPath(target), host, mode == ["ro"]))
        for cfg in self.services[service].get("configs", []):
            out.append((PurePosixPath(cfg["target"]), DEPLOY / self.configs[cfg["source"]]["file"], True))
        return out

    def host(self, service: str, path: str | Path) -> Path:
        """Where ``service`` sees ``path``: the longest mount target that holds it."""
        p = PurePosixPath(path)
        hits = [(t, h) for t, h, _ in self.mounts(service) if p == t or t in p.parents]
        if not hits:
            raise LookupError(f"{service} has nothing mounted at {p}")
        target, host = max(hits, key=lambda th: len(th[0].parts))
        return host / p.relative_to(target) if p != target else host

    def writable(self, service: str, path: str | Path) -> bool:
        """Whether ``path`` lies on a read-write mount of ``service``."""
        p = PurePosixPath(path)
        return any(not ro and (p == t or t in p.parents) for t, _, ro in self.mounts(service))


def load_dev_workspace(prebuilt: Workspace) -> ModuleType:
    """deploy/compose/dev_workspace.py as a module, reusing the session's tiny workspace (same arguments)."""
    spec = importlib.util.spec_from_file_location("fedquilt_dev_workspace", DEPLOY / "compose" / "dev_workspace.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def build_workspace(root: Path, sites: int, task: str, seed: int) -> Workspace:
        # The tiny_workspace fixture was built with exactly these arguments; building another costs seconds.
        assert (sites, task, seed) == (len(prebuilt.sites), prebuilt.task, 0)
        return prebuilt

    module.build_workspace = build_workspace
    return module


@pytest.fixture(scope="module")
def stack(compose: dict[str, Any], dev_pki: Path, tiny_workspace: Workspace,
          tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """Run what dev-ca and dev-workspace run, into host folders standing for their volumes."""
    services = compose["services"]
    pki_root = PurePosixPath(services["dev-ca"]["command"][0])  # the dev_pki fixture ran dev-certs.sh with 3 sites
    assert services["dev-ca"]["command"][1] == "3"
    volume_dirs = {}
    for spec in services["dev-ca"]["volumes"]:
        source, target = spec.split(":")[:2]
        if not source.startswith("."):
            volume_dirs[source] = dev_pki / PurePosixPath(target).relative_to(pki_root)
    vol_root = tmp_path_factory.mktemp("volumes")
    for spec in services["dev-workspace"]["volumes"]:
        source = spec.split(":")[0]
        if not source.startswith("."):
            volume_dirs[source] = vol_root / source
    for name in compose["volumes"]:
        volume_dirs.setdefault(name, vol_root / name)
    s = Stack(compose, volume_dirs)
    args = []
    for arg in services["dev-workspace"]["command"]:
        if arg.startswith("--owner"):
            continue  # chown needs root; the images' uid is checked in the Dockerfile tests
        flag, eq, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
        args.append(f"{flag}{eq}{s.host('dev-workspace', value)}" if value.startswith("/") else arg)
    assert load_dev_workspace(tiny_workspace).main(args) == 0
    return s


def test_coordinator_finds_its_config_and_certificates(stack: Stack) -> None:
    cmd = stack.services["coordinator"]["command"]
    cfg = load_config(stack.host("coordinator", cmd[cmd.index("--config") + 1]), environ={})
    for path in (cfg.tls.ca, cfg.tls.cert, cfg.tls.key, cfg.tls.crl):
        assert path is not None and stack.host("coordinator", path).is_file(), path
    assert stack.writable("coordinator", cfg.state_dir)
    assert not stack.writable("coordinator", cfg.tls.key)
    assert cfg.server.listen == "0.0.0.0:7443" and cfg.server.metrics_listen == "0.0.0.0:9464"
    assert "127.0.0.1:9464/healthz" in " ".join(stack.services["coordinator"]["healthcheck"]["test"])
    assert cfg.federation.min_sites == len(AGENTS)


@pytest.mark.parametrize("agent", AGENTS)
def test_each_agent_finds_its_identity_model_and_data(stack: Stack, agent: str) -> None:
    svc = stack.services[agent]
    cmd = svc["command"]
    cfg = load_agent_config(stack.host(agent, cmd[cmd.index("--config") + 1]), environ=svc["environment"])
    site = f"site-{agent.split('-')[1]}"
    cert = stack.host(agent, cfg.tls.cert)
    for path in (cfg.tls.ca, cfg.tls.cert, cfg.tls.key, cfg.data.train, cfg.data.eval):
        assert path is not None and stack.host(agent, path).is_file(), path
    subject = x509.load_pem_x509_certificate(cert.read_bytes()).subject
    assert subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == site
    assert stack.writable(agent, cfg.state_dir) and not stack.writable(agent, cfg.model.dir)
    # The agent's local base model is the one the coordinator's federation is pinned to.
    coordinator_cmd = stack.services["coordinator"]["command"]
    ccfg = load_config(stack.host("coordinator", coordinator_cmd[coordinator_cmd.index("--config") + 1]), environ={})
    assert fingerprint(stack.host(agent, cfg.model.dir)) == ccfg.federation.base_fingerprint
    # The name the agent checks on the coordinator's certificate is on that certificate.
    host, _, port = cfg.coordinator.address.rpartition(":")
    assert host in stack.services and port == "7443"
    coordinator_cert = x509.load_pem_x509_certificate(stack.host("coordinator", ccfg.tls.cert).read_bytes())
    sans = coordinator_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert cfg.coordinator.server_name in sans.get_values_for_type(x509.DNSName)


def test_dev_workspace_rerun_keeps_the_data(stack: Stack, tiny_workspace: Workspace) -> None:
    model = stack.host("agent-1", "/data/model/model.safetensors")
    before = model.stat().st_mtime_ns
    args = [a for a in stack.services["dev-workspace"]["command"] if not a.startswith("--owner")]
    rerooted = [f"{a.split('=')[0]}={stack.host('dev-workspace', a.split('=')[1])}" if a.startswith("--")
                else str(stack.host("dev-workspace", a)) for a in args]
    assert load_dev_workspace(tiny_workspace).main(rerooted) == 0
    assert model.stat().st_mtime_ns == before
