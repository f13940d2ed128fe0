"""The coordinator process: mutual-TLS gRPC server, round driver, model store."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..strategies.adapters import load_peft, load_saved
from ..strategies.base import Aggregate
from ..strategies.lora import dense_of
from ..strategies.registry import federated_rule, rule_entry
from .config import CoordinatorConfig
from .identity import Authorizer, RevocationList
from .lock import StateDirLock
from .metrics import Metrics
from .orchestrator import Orchestrator
from .publish import publish
from .registry import FileModelStore
from .state import Observers, SqliteStateStore, StateRecorder, restore
from .async_edge import AsyncEdge
from .status_page import StatusServer, start_http

log = logging.getLogger("fedquilt.coordinator")


def load_global(store: FileModelStore, model: str, dense: bool) -> tuple[Aggregate | None, str | None, int]:
    """The newest published version as the global state (None before the first round).

    The newest manifest, not the ``latest`` tag: the manifest is the commit point, and a crash between it
    and the tag update must not make the coordinator redo (and fail to re-publish) that round.
    """
    versions = store.versions(model)
    if not versions:
        return None, None, 0
    manifests = {v: store.manifest(model, v) for v in versions}
    version = max(versions, key=lambda v: int(manifests[v]["round"]))  # names stop sorting by round past v9999
    manifest = manifests[version]
    if store.tags_of(model, version).count("latest") == 0:  # a crash landed between manifest and tag: repair
        log.warning("moving tag latest of %s to %s (it lagged behind the newest version)", model, version)
        store.tag(model, "latest", version)
    with tempfile.TemporaryDirectory() as tmp:
        for name in manifest["files"]:
            (Path(tmp) / name).write_bytes(store.read(model, version, name))
        adapter = load_peft(Path(tmp))
        saved = load_saved(Path(tmp)) or None  # issue 14: the federated head comes back too
    agg = Aggregate(dense={k: v.to(dtype=adapter[k].A.dtype) for k, v in dense_of(adapter).items()}, saved=saved) \
        if dense else Aggregate(adapter=adapter, saved=saved)
    return agg, version, int(manifest["round"])


def _check_rule(cfg: CoordinatorConfig) -> None:
    if not rule_entry(cfg.federation.rule).sums_only and cfg.secagg.enabled:
        raise ValueError(f"rule {cfg.federation.rule!r} needs each site's own factors and cannot run under secure "
                         "aggregation; set [secagg] enabled = false to run it in plaintext (the coordinator then sees "
                         "every site's update)")


@dataclass
class RunningCoordinator:
    """A started coordinator: its port, orchestrator and a way to stop it."""

    server: AsyncEdge
    port: int
    orchestrator: Orchestrator
    store: FileModelStore
    stop_event: threading.Event
    threads: list[threading.Thread]
    metrics: Metrics
    http: StatusServer | None = None
    http_port: int | None = None
    state: SqliteStateStore | None = None
    lock: StateDirLock | None = None

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving and the driver thread."""
        self.stop_event.set()
        self.server.stop(grace)
        if self.http is not None:
            self.http.stop()
        for t in self.threads:
            t.join(timeout=5)
        if self.state is not None:
            self.state.close()
        if self.lock is not None:
            self.lock.release()


def start(cfg: CoordinatorConfig, metrics: Metrics | None = None, tick_seconds: float = 0.1) -> RunningCoordinator:
    """Build everything from the configuration and start serving (non-blocking)."""
    fed = cfg.federation
    metrics = metrics or Metrics()
    rule = federated_rule(fed.rule, fed.rule_params, fed.server_optimizer)  # issue 14: saved modules, server opt
    _check_rule(cfg)
    if not cfg.secagg.enabled:
        log.warning("secure aggregation is DISABLED: the coordinator sees every site's individual update")
    lock = StateDirLock(cfg.state_dir).acquire()
    try:
        return _start_locked(cfg, metrics, rule, tick_seconds, lock)
    except BaseException:
        lock.release()
        raise


def _start_locked(cfg: CoordinatorConfig, metrics: Metrics, rule: Any, tick_seconds: float,
                  lock: StateDirLock) -> RunningCoordinator:
    fed = cfg.federation
    store = FileModelStore(cfg.state_dir / "store")
    glob, version, rounds_done = load_global(store, fed.model, dense=rule_entry(fed.rule).dense)
    state = SqliteStateStore(cfg.state_dir / "state.db")
    restored = restore(state, fed.name, fed.model, store)
    key_pem, cert_pem = cfg.tls.key.read_bytes(), cfg.tls.cert.read_bytes()

    def publisher(round_number: int, agg: Aggregate, facts: dict[str, Any]) -> str:
        return publish(store, fed.model, round_number, agg, fed.task, key_pem, cert_pem, facts)

    secure_sum_factory = None
    if cfg.secagg.enabled:
        from .secure_sum import make_factory

        secure_sum_factory = make_factory(cfg)
    orch = Orchestrator(rule=rule, fed=fed, secure=cfg.secagg.enabled, publisher=publisher, glob=glob,
                        rounds_done=rounds_done, global_version=version, secure_sum_factory=secure_sum_factory,
                        observer=Observers(metrics, StateRecorder(state, fed.name, fed.model)),
                        site_noise=None if cfg.secagg.site_noise_multiplier is None or not cfg.secagg.enabled else {
                            "sigma": cfg.secagg.site_noise_multiplier, "clip": cfg.secagg.site_clip,
                            "delta": cfg.secagg.site_delta}, history=restored.history,
                        known_sites=restored.sites, running=restored.running)
    ca_pem = cfg.tls.ca.read_bytes()
    from cryptography import x509

    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    crl = cfg.tls.crl or cfg.tls.ca.parent / "crl.pem"
    authz = Authorizer(ca_cert, RevocationList(crl, ca_cert))
    edge_server = AsyncEdge(cfg, orch, store, authz, metrics, key_pem, cert_pem, ca_pem, crl_path=crl)
    port = edge_server.start()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    (cfg.state_dir / "coordinator.port").write_text(str(port))
    stop_event = threading.Event()

    def drive() -> None:
        while not stop_event.wait(tick_seconds):
            try:
                orch.tick()
            except Exception:  # the driver must survive a bad round; the round is lost, not the service
                log.exception("round driver error")
            edge_server.wakeups.changed()  # long polls re-read their assignment when any changed

    driver = threading.Thread(target=drive, name="round-driver", daemon=True)
    driver.start()
    metrics.bind(orch.status)
    http, http_port = None, None
    if cfg.server.metrics_listen:
        token = cfg.server.status_token_file.read_text().strip() if cfg.server.status_token_file else None
        http, http_port = start_http(cfg.server.metrics_listen, metrics, orch.status, token=token or None)
        (cfg.state_dir / "status.port").write_text(str(http_port))
        log.info("metrics and status page on http://%s:%d/status", cfg.server.metrics_listen.rsplit(":", 1)[0], http_port)
    log.info("coordinator listening on port %d (federation %s, rule %s, secure aggregation %s)", port, fed.name,
             fed.rule, "on" if cfg.secagg.enabled else "OFF", extra={"port": port})
    return RunningCoordinator(edge_server, port, orch, store, stop_event, [driver], metrics, http, http_port, state, lock)


def serve(cfg: CoordinatorConfig, exit_when_done: bool = False) -> int:
    """Run until interrupted (or, with ``exit_when_done``, until every planned round is published)."""
    running = start(cfg)
    import signal

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        while True:
            time.sleep(0.5)
            if exit_when_done and running.orchestrator.finished():
                time.sleep(3.0)  # let agents receive SHUTDOWN
                break
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
    return 0
