"""What ``coordinator check`` / ``agent check`` verify, and what both processes verify before they start.

Each check either passes with a line saying what it found (and so what would happen) or raises
``PreflightError`` naming the file, the fact and the fix. Nothing listens, connects or trains here,
except ``agent check --connect``, which opens one TLS connection to diagnose it.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

from ..address import parse_address
from ..agent.tls_identity import IdentityProblem, check_identity, host_matches


class PreflightError(ValueError):
    """A configuration that cannot work; the message names the cause and the fix."""


def check_tls(ca: Path, cert: Path, key: Path, role: str) -> Any:
    """``check_identity`` raising ``PreflightError`` (the identity it found on success)."""
    try:
        return check_identity(ca, cert, key, role)
    except IdentityProblem as exc:
        raise PreflightError(str(exc)) from None


def port_free(listen: str) -> bool:
    """Whether ``listen`` ("host:port") can be bound now (port 0 always can)."""
    host, port = parse_address(listen)
    if port == 0:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: connections of a previous run in TIME_WAIT do not count, a listener does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise PreflightError(f"cannot listen on {listen}: {exc.strerror}") from None
    return True


def coordinator_checks(cfg: Any) -> list[str]:
    """Certificates, CRL, rule, state and ports of a coordinator config; lines saying what would happen."""
    from cryptography import x509

    from ..coordinator.identity import RevocationList, RevocationListError
    from ..coordinator.registry import FileModelStore
    from ..strategies.registry import make_rule

    fed, tls = cfg.federation, cfg.tls
    me = check_tls(tls.ca, tls.cert, tls.key, "coordinator")
    lines = [f"certificate: {me.name} (coordinator), valid until {me.not_after:%Y-%m-%d}, names: {', '.join(me.hosts)}"]
    crl = tls.crl or tls.ca.parent / "crl.pem"
    try:
        RevocationList(crl, x509.load_pem_x509_certificate(tls.ca.read_bytes()))
    except RevocationListError as exc:
        raise PreflightError(f"{exc}; copy crl.pem from the CA folder (`fedquilt certs init` writes it)") from None
    lines.append(f"revocation list: {crl}")
    host = parse_address(cfg.server.listen)[0]
    if host not in ("0.0.0.0", "::", "") and not host_matches(me.hosts, host):
        lines.append(f"warning: agents connecting to {host} will fail: the certificate names only "
                     f"{', '.join(me.hosts)}; agents must set server_name to one of them")
    try:
        rule = make_rule(fed.rule, fed.rule_params)
    except ValueError as exc:
        raise PreflightError(f"federation.rule: {exc}") from None
    for what, listen in (("server.listen", cfg.server.listen), ("server.metrics_listen", cfg.server.metrics_listen)):
        if listen and not port_free(listen):
            raise PreflightError(f"{what}: {listen} is already in use (address already in use); is another "
                                 "coordinator running? stop it or choose another port")
    store_root = cfg.state_dir / "store"
    versions = FileModelStore(store_root).versions(fed.model) if store_root.exists() else []
    resume = f"resume after {versions[-1]} ({len(versions)} published)" if versions else "start from round 1"
    secure = "on" if cfg.secagg.enabled else "OFF (the coordinator sees every site's update)"
    lines += [
        f"federation {fed.name}: model {fed.model}, rule {fed.rule} ({type(rule).__name__}), {fed.rounds} rounds, "
        f"{resume}",
        f"rounds open with >= {fed.min_sites} online sites (waiting up to {fed.wait_for_sites:g}s for every enrolled "
        f"site); secure aggregation {secure}",
        f"agents train with {dict(fed.train)}",
        f"would listen on {cfg.server.listen} (mTLS gRPC)"
        + (f" and {cfg.server.metrics_listen} (metrics, status page)" if cfg.server.metrics_listen else ""),
        f"state in {cfg.state_dir}",
    ]
    return lines


def agent_checks(cfg: Any, connect: bool = False) -> list[str]:
    """Certificates, base model and data of an agent config; lines saying what would happen."""
    from ..agent.basemodel import BaseModelError, fingerprint

    me = check_tls(cfg.tls.ca, cfg.tls.cert, cfg.tls.key, "site")
    lines = [f"certificate: site {me.name}, valid until {me.not_after:%Y-%m-%d}"]
    if not (cfg.model.dir / "config.json").is_file():
        raise PreflightError(f"model.dir {cfg.model.dir} holds no config.json: give a local Hugging Face model folder")
    try:
        fp = fingerprint(cfg.model.dir)
    except BaseModelError as exc:
        raise PreflightError(f"model.dir: {exc}") from None
    lines.append(f"base model {cfg.model.dir}: fingerprint {fp} (must equal the coordinator's base_fingerprint)")
    for what, path in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        if path is None:
            continue
        if not path.exists():
            raise PreflightError(f"{what} {path} does not exist")
        size = sum(1 for _ in path.open()) if path.is_file() else None
        lines.append(f"{what}: {path}" + (f" ({size} lines)" if size is not None else " (dataset folder)"))
    lines += [
        f"would connect to {cfg.coordinator.address} as {me.name}"
        + (f" (expecting the name {cfg.coordinator.server_name})" if cfg.coordinator.server_name else ""),
        f"and train LoRA rank {cfg.model.rank}, alpha {cfg.model.alpha:g} on {cfg.model.device}"
        + (", with DP-SGD" if cfg.dp is not None else ""),
    ]
    if connect:
        from ..agent.connection_diagnosis import Problem, diagnose

        found = diagnose(cfg.coordinator.address, cfg.tls.ca, cfg.tls.cert, cfg.tls.key, cfg.coordinator.server_name,
                         role="site")
        if found.problem is not Problem.OK:
            raise PreflightError(found.message)
        lines.append(found.message)
    return lines
