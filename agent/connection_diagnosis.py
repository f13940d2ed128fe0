"""Why a connection to the coordinator fails, in plain words with the fix.

gRPC reports every failed TLS handshake, a wrong port and a refused connection alike as
``UNAVAILABLE``. When a call fails that way the agent (and ``pull`` / ``admin``) runs ``diagnose``
once: local checks of its own certificate and key first (``tls_identity``), then one TLS handshake
with Python's ``ssl`` using the same CA, certificate, key and expected name, whose verification code
or alert names the cause. A second, unverified handshake reads the certificate the server presents,
so the message can say whose it is.
"""

from __future__ import annotations

import enum
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ..address import parse_address
from .tls_identity import IdentityProblem, check_identity, describe


class Problem(enum.Enum):
    """Kinds of connection failure, each with its own message."""

    OK = "ok"
    LOCAL_IDENTITY = "local-identity"
    NOTHING_LISTENING = "nothing-listening"
    UNREACHABLE = "unreachable"
    NOT_TLS = "not-tls"
    UNKNOWN_CA = "unknown-ca"
    NAME_MISMATCH = "name-mismatch"
    SERVER_EXPIRED = "server-expired"
    WRONG_ROLE = "wrong-role"
    CLIENT_REFUSED = "client-refused"
    CLIENT_EXPIRED = "client-expired"
    OTHER = "other"


HANDSHAKE_PROBLEMS = frozenset({Problem.LOCAL_IDENTITY, Problem.NOT_TLS, Problem.UNKNOWN_CA, Problem.NAME_MISMATCH,
                                Problem.SERVER_EXPIRED, Problem.WRONG_ROLE, Problem.CLIENT_REFUSED,
                                Problem.CLIENT_EXPIRED})
"""Failures that retrying cannot cure (the coordinator answers, but the TLS identities do not fit)."""


@dataclass(frozen=True)
class Diagnosis:
    """One classified connection failure."""

    problem: Problem
    message: str


class ConnectionProblem(Exception):
    """The coordinator cannot be reached for a reason retrying will not fix (the message says which)."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        super().__init__(diagnosis.message)
        self.diagnosis = diagnosis


def _server_certificate(host: str, port: int, timeout: float) -> x509.Certificate | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _whose(host: str, port: int, timeout: float) -> str:
    cert = _server_certificate(host, port, timeout)
    if cert is None:
        return "a certificate"
    who = describe(cert)
    return (f"a certificate for {who.name!r} (role {who.role or 'none'}, names {', '.join(who.hosts) or 'none'}, "
            f"issued by {cert.issuer.rfc4514_string()!r})")


def _verify_failure(exc: ssl.SSLCertVerificationError, address: str, name: str, host: str, port: int,
                    timeout: float, ca: Path) -> Diagnosis:
    code = exc.verify_code
    whose = _whose(host, port, timeout)
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        return Diagnosis(Problem.NAME_MISMATCH, f"the coordinator at {address} presents {whose}, which is not valid "
                         f"for the name {name!r}; set the coordinator's server_name (--server-name) to one of its "
                         f"names, or issue its certificate with `--host {name}`")
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return Diagnosis(Problem.SERVER_EXPIRED, f"the coordinator at {address} presents {whose}, which has expired; "
                         "the operator must rotate it (`fedquilt certs rotate --name coordinator`)")
    if code == 26:  # X509_V_ERR_INVALID_PURPOSE: not a server (coordinator) certificate
        return Diagnosis(Problem.WRONG_ROLE, f"the coordinator at {address} presents {whose}, which is not a "
                         "coordinator certificate; the operator must configure the coordinator with one issued by "
                         "`fedquilt certs issue --role coordinator`")
    if code in (2, 7, 18, 19, 20, 21):  # issuer unknown, bad signature, self-signed
        return Diagnosis(Problem.UNKNOWN_CA, f"the coordinator at {address} presents {whose}, which is not issued by "
                         f"the CA in {ca}; use the federation's ca.pem (from the operator)")
    return Diagnosis(Problem.OTHER, f"the coordinator's certificate at {address} fails verification: "
                     f"{exc.verify_message} (presents {whose})")


def _alert(exc: ssl.SSLError, address: str, cert: Path) -> Diagnosis:
    reason = (exc.reason or str(exc)).upper()
    if "EXPIRED" in reason:
        return Diagnosis(Problem.CLIENT_EXPIRED, f"the coordinator at {address} refused this certificate ({cert}) "
                         "as expired; ask the operator for a new one (`fedquilt certs rotate`)")
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE" in reason or "DECRYPT" in reason:
        return Diagnosis(Problem.CLIENT_REFUSED, f"the coordinator at {address} refused this certificate ({cert}): "
                         f"{exc.reason}; it is not issued by the CA the coordinator trusts; ask the operator for a "
                         "certificate from the federation CA")
    if "WRONG_VERSION_NUMBER" in reason or "RECORD" in reason or "PACKET" in reason:
        return Diagnosis(Problem.NOT_TLS, f"{address} answers, but not with TLS: is this the coordinator's gRPC port "
                         "(not its metrics/status port)?")
    return Diagnosis(Problem.OTHER, f"TLS handshake with {address} failed: {exc}")


def diagnose(address: str, ca: Path, cert: Path, key: Path, server_name: str | None = None,
             timeout: float = 5.0, role: str | None = None) -> Diagnosis:
    """Classify why a mutual-TLS connection to ``address`` fails (``Problem.OK`` if it does not)."""
    try:
        check_identity(ca, cert, key, role)
    except IdentityProblem as exc:
        return Diagnosis(Problem.LOCAL_IDENTITY, str(exc))
    host, port = parse_address(address, allow_port_zero=False)
    name = server_name or host
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory() as tmp:  # ssl wants the chain and key as files
        chain = Path(tmp) / "chain.pem"
        chain.write_bytes(cert.read_bytes() + b"\n" + key.read_bytes())
        os.chmod(chain, 0o600)
        ctx.load_cert_chain(str(chain))
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return Diagnosis(Problem.NOTHING_LISTENING, f"nothing is listening at {address} (connection refused); is "
                         "the coordinator running, and is this its gRPC port (`listen` in its config)?")
    except OSError as exc:
        return Diagnosis(Problem.UNREACHABLE, f"cannot reach {address}: {exc}")
    try:
        with raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.settimeout(min(timeout, 1.0))
            try:
                tls.recv(1)  # a TLS 1.3 server refuses our certificate only after the handshake, with an alert
            except (socket.timeout, TimeoutError):
                pass
    except ssl.SSLCertVerificationError as exc:
        return _verify_failure(exc, address, name, host, port, timeout, ca)
    except ssl.SSLError as exc:
        return _alert(exc, address, cert)
    except ConnectionResetError:
        return Diagnosis(Problem.CLIENT_REFUSED, f"the coordinator at {address} closed the connection during the TLS "
                         f"handshake; it may not trust this certificate ({cert})")
    except OSError as exc:
        return Diagnosis(Problem.UNREACHABLE, f"cannot talk to {address}: {exc}")
    return Diagnosis(Problem.OK, f"TLS with {address} works (name {name!r})")
