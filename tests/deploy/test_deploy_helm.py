"""deploy/helm/fedquilt-coordinator rendered by Helm itself (Helm's Go SDK via helm-python-sdk), checked with
`helm lint`, the Kubernetes JSON schemas (kubernetes-validate) and the coordinator's own config loader."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_harness import DEPLOY

from fedquilt.coordinator.config import load_config

helm = pytest.importorskip("helm_python")
CHART = DEPLOY / "helm" / "fedquilt-coordinator"
K8S_VERSION = "1.30.0"


def render(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Rendered manifests by kind (one object of each kind in this chart)."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name="fq", namespace="federation")
    objects: dict[str, dict[str, Any]] = {}
    for name, text in files.items():
        if name.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    key = doc["kind"] + ("/status" if doc["metadata"]["name"].endswith("-status") else "")
                    assert key not in objects, f"two {key} objects"
                    objects[key] = doc
    return objects


def test_helm_lint_finds_no_errors() -> None:
    result = helm.lint(str(CHART))
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []  # 1 = INFO (e.g. "icon is recommended")


def test_renders_the_expected_objects() -> None:
    assert sorted(render()) == ["ConfigMap", "Service", "Service/status", "StatefulSet"]
    assert sorted(render({"serviceMonitor": {"enabled": True}})) == ["ConfigMap", "Service", "Service/status",
                                                                    "ServiceMonitor", "StatefulSet"]


@pytest.mark.parametrize("kind", ["ConfigMap", "Service", "Service/status", "StatefulSet"])
def test_manifests_match_the_kubernetes_schemas(kind: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(render()[kind], K8S_VERSION, strict=True)


def test_kubernetes_schemas_reject_a_broken_manifest() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    sts = render()["StatefulSet"]
    sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, K8S_VERSION, strict=True)


def test_service_monitor_scrapes_the_metrics_port() -> None:
    objs = render({"serviceMonitor": {"enabled": True, "interval": "15s"}})
    endpoint = objs["ServiceMonitor"]["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("metrics", "/metrics", "15s")
    labels = objs["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    status, grpc_service = objs["Service/status"]["metadata"]["labels"], objs["Service"]["metadata"]["labels"]
    assert all(status.get(k) == v for k, v in labels.items())  # selects the status Service ...
    assert not all(grpc_service.get(k) == v for k, v in labels.items())  # ... and not the gRPC one


def test_config_map_is_a_valid_coordinator_config(tmp_path: Path) -> None:
    values = {"config": {"federation": {"rounds": 7, "rule": "ffa", "train": {"local_steps": 25, "lr": 1e-4}},
                         "server": {"listen": "127.0.0.1:1"}},
              "service": {"grpcPort": 8443, "metricsPort": 9100}}
    text = render(values)["ConfigMap"]["data"]["coordinator.toml"]
    raw = tomllib.loads(text)
    assert isinstance(raw["federation"]["rounds"], int) and isinstance(raw["federation"]["train"]["local_steps"], int)
    path = tmp_path / "coordinator.toml"
    path.write_text(text)
    cfg = load_config(path, environ={})
    assert (cfg.federation.rounds, cfg.federation.rule, cfg.federation.train) == (7, "ffa", {
        "local_steps": 25, "batch_size": 8, "lr": 1e-4})
    # The chart owns the listen addresses (they must match the container ports) and the mount paths.
    assert (cfg.server.listen, cfg.server.metrics_listen) == ("0.0.0.0:8443", "0.0.0.0:9100")
    assert cfg.state_dir == Path("/var/lib/fedquilt")
    assert (cfg.tls.cert, cfg.tls.key, cfg.tls.crl) == (Path("/etc/fedquilt/tls/coordinator.pem"),
                                                        Path("/etc/fedquilt/tls/coordinator.key"),
                                                        Path("/etc/fedquilt/tls/crl.pem"))


def test_pod_mounts_match_the_config_paths() -> None:
    objs = render()
    pod = objs["StatefulSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["config"]["mountPath"] == "/etc/fedquilt/config" and mounts["config"]["readOnly"]
    assert container["args"][-1] == "/etc/fedquilt/config/coordinator.toml"
    assert volumes["config"]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    assert mounts["tls"]["mountPath"] == "/etc/fedquilt/tls" and mounts["tls"]["readOnly"]
    assert volumes["tls"]["secret"]["secretName"] == "fedquilt-coordinator-tls"
    assert mounts["state"]["mountPath"] == "/var/lib/fedquilt"
    claims = objs["StatefulSet"]["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["state"] and "state" not in volumes
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert objs["StatefulSet"]["spec"]["replicas"] == 1


def test_probes_are_http_healthz_on_the_metrics_port() -> None:
    objs = render()
    container = objs["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 7443, "metrics": 9464}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
        assert "grpc" not in container[probe]
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in objs["Service"]["spec"]["ports"]}
    assert service_ports == {"grpc": (7443, "grpc")}
    status_ports = {p["name"]: (p["port"], p["targetPort"]) for p in objs["Service/status"]["spec"]["ports"]}
    assert status_ports == {"metrics": (9464, "metrics")}


@pytest.mark.parametrize("service_type", ["ClusterIP", "LoadBalancer", "NodePort"])
def test_the_status_and_metrics_port_is_only_on_a_cluster_ip_service(service_type: str) -> None:
    objs = render({"service": {"type": service_type}})
    assert objs["Service"]["spec"]["type"] == service_type
    assert [p["name"] for p in objs["Service"]["spec"]["ports"]] == ["grpc"]
    assert objs["Service/status"]["spec"]["type"] == "ClusterIP"
    assert [p["name"] for p in objs["Service/status"]["spec"]["ports"]] == ["metrics"]
    exposed = [o for o in objs.values() if o["kind"] == "Service" and o["spec"]["type"] != "ClusterIP"]
    assert all(p["name"] != "metrics" for o in exposed for p in o["spec"]["ports"])


def test_runs_unprivileged_with_a_read_only_root() -> None:
    pod = render()["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def test_config_change_rolls_the_pod() -> None:
    def checksum(values: dict[str, Any]) -> str:
        annotations = render(values)["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"federation": {"rounds": 11}}})


def test_no_secret_material_in_the_chart() -> None:
    for path in CHART.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text, path
    assert "Secret" not in render()


def test_an_optional_bearer_token_guards_the_status_page_and_metrics(tmp_path: Path) -> None:
    assert "status_token_file" not in render()["ConfigMap"]["data"]["coordinator.toml"]
    objs = render({"status": {"tokenSecretName": "fq-status-token"}, "serviceMonitor": {"enabled": True}})
    pod = objs["StatefulSet"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["status-token"]["mountPath"] == "/etc/fedquilt/status-token" and mounts["status-token"]["readOnly"]
    assert volumes["status-token"]["secret"]["secretName"] == "fq-status-token"
    path = tmp_path / "coordinator.toml"
    path.write_text(objs["ConfigMap"]["data"]["coordinator.toml"])
    assert load_config(path, environ={}).server.status_token_file == Path("/etc/fedquilt/status-token/token")
    endpoint = objs["ServiceMonitor"]["spec"]["endpoints"][0]
    assert endpoint["bearerTokenSecret"] == {"name": "fq-status-token", "key": "token"}
