"""In-memory harness for secure_agg tests: an in-test CA, site identities, and a round driver."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from fedquilt.secure_agg import (
    AggregateResult, ClientMessage, ClientSession, SecAggParams, ServerMessage, ServerSession, SiteId, Stage,
    VectorLayout,
)
from fedquilt.secure_agg.signing import SigningKey

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
"""Certificates are issued around the real time of the test run, so the default clock accepts them."""


def clock() -> dt.datetime:
    """Fixed test clock (the run's start), inside every certificate's validity."""
    return NOW


def _name(cn: str, role: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if role is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    return x509.Name(attrs)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Authority:
    """A federation CA that issues site certificates (EC P-256 by default)."""

    name: str = "fedquilt test CA"
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(self.name)).issuer_name(_name(self.name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=30)).not_valid_after(NOW + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _pem(self.cert)

    def issue(self, cn: str, *, key: SigningKey | None = None, days: tuple[int, int] = (-1, 90),
              role: str | None = "site") -> tuple[SigningKey, bytes]:
        """A key and its certificate PEM with subject ``CN=cn, OU=role`` (the roles ``pki.issue`` writes)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn, role)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW + dt.timedelta(days=days[0])).not_valid_after(NOW + dt.timedelta(days=days[1]))
            .sign(self.key, hashes.SHA256())
        )
        return key, _pem(cert)


def site_names(n: int) -> list[SiteId]:
    """``site-00``, ``site-01``, ..."""
    return [SiteId(f"site-{i:02d}") for i in range(n)]


@dataclass
class Federation:
    """A CA and one identity per site; builds client and server sessions."""

    ca: Authority
    identities: dict[SiteId, tuple[SigningKey, bytes]]

    @classmethod
    def create(cls, n: int, ca: Authority | None = None, ed25519_sites: int = 0) -> Federation:
        """``n`` sites; the first ``ed25519_sites`` use Ed25519 identity keys."""
        ca = ca or Authority()
        ids = {}
        for i, site in enumerate(site_names(n)):
            ids[site] = ca.issue(site, key=ed25519.Ed25519PrivateKey.generate() if i < ed25519_sites else None)
        return cls(ca, ids)

    def client(self, site: SiteId, vectors: Mapping[str, np.ndarray] | None = None, **kw: object) -> ClientSession:
        """A client session for ``site`` trusting this federation's CA."""
        key, cert = self.identities[site]
        return ClientSession(site, key, cert, self.ca.pem, vectors=vectors, clock=clock, **kw)  # type: ignore[arg-type]

    def server(self, params: SecAggParams, layout: VectorLayout, sites: Sequence[SiteId] | None = None,
               **kw: object) -> ServerSession:
        """A server session over ``sites`` (default: all)."""
        return ServerSession(list(sites or self.identities), params, layout, ca_cert_pem=self.ca.pem, clock=clock,
                             **kw)  # type: ignore[arg-type]


def run_round(server: ServerSession, clients: Mapping[SiteId, ClientSession],
              silent_from: Mapping[SiteId, Stage] | None = None) -> AggregateResult:
    """Drive a whole round in memory; ``silent_from[site]`` is the first stage the site does not answer."""
    silent = silent_from or {}

    def alive(site: SiteId, stage: Stage) -> bool:
        return site not in silent or silent[site] > stage

    announce = server.start()
    for site in announce.cohort:
        if alive(site, Stage.ADVERTISE_KEYS):
            server.receive(site, clients[site].handle(announce))
    relay = server.relay_advertisements()
    for ad in relay.advertisements:
        if alive(ad.site, Stage.SHARE_KEYS):
            server.receive(ad.site, clients[ad.site].handle(relay))
    for site, routed in server.route_shares().items():
        if alive(site, Stage.MASKED_INPUT):
            server.receive(site, clients[site].handle(routed))
    consistency = server.request_consistency()
    for site in consistency.survivors:
        if alive(site, Stage.CONSISTENCY):
            server.receive(site, clients[site].handle(consistency))
    request = server.request_unmask()
    for site, _ in request.signatures:
        if alive(site, Stage.UNMASK):
            server.receive(site, clients[site].handle(request))
    return server.finish()


class Stepper:
    """A small round advanced one step at a time (server transition, then delivery), recording messages."""

    def __init__(self, federation: Federation, n: int = 3, params: SecAggParams | None = None, **server_kw: object):
        self.sites = site_names(n)
        self.params = params or SecAggParams(threshold=n // 2 + 1, clip=1.0, max_sites=n)
        self.vectors = {s: {"x": np.full(4, 0.25 * (i + 1))} for i, s in enumerate(self.sites)}
        self.server = federation.server(self.params, VectorLayout.of(self.vectors[self.sites[0]]), self.sites,
                                        **server_kw)
        self.clients = {s: federation.client(s, self.vectors[s]) for s in self.sites}
        self.to_clients: dict[Stage, dict[SiteId, ServerMessage]] = {}
        self.to_server: dict[Stage, dict[SiteId, ClientMessage]] = {}
        self.result: AggregateResult | None = None
        self.undelivered: Stage | None = None

    def step(self) -> None:
        """Close the server's current stage, or deliver what it produced to the clients."""
        if self.undelivered is not None:
            stage, self.undelivered = self.undelivered, None
            for site, msg in self.to_clients[stage].items():
                reply = self.clients[site].handle(msg)
                self.to_server.setdefault(reply.stage, {})[site] = reply
                self.server.receive(site, reply)
            return
        server = self.server
        if server.stage == Stage.ANNOUNCE:
            announce = server.start()
            self._produced(Stage.ANNOUNCE, {s: announce for s in announce.cohort})
        elif server.stage == Stage.ADVERTISE_KEYS:
            relay = server.relay_advertisements()
            self._produced(Stage.SHARE_KEYS, {ad.site: relay for ad in relay.advertisements})
        elif server.stage == Stage.SHARE_KEYS:
            self._produced(Stage.MASKED_INPUT, dict(server.route_shares()))
        elif server.stage == Stage.MASKED_INPUT:
            consistency = server.request_consistency()
            self._produced(Stage.CONSISTENCY, {s: consistency for s in consistency.survivors})
        elif server.stage == Stage.CONSISTENCY:
            request = server.request_unmask()
            self._produced(Stage.UNMASK, {s: request for s, _ in request.signatures})
        else:
            self.result = server.finish()

    def _produced(self, stage: Stage, messages: Mapping[SiteId, ServerMessage]) -> None:
        self.to_clients[stage] = dict(messages)
        self.undelivered = stage

    def server_collecting(self, stage: Stage) -> Stepper:
        """Advance until the server is at ``stage`` with every site's message received."""
        while self.server.stage != stage or self.undelivered is not None:
            self.step()
        return self

    def client_awaiting(self, site: SiteId, stage: Stage) -> Stepper:
        """Advance until ``site`` awaits ``stage`` and the message opening it exists (undelivered)."""
        while not (self.clients[site].stage == stage and (stage == Stage.DONE or stage in self.to_clients)):
            self.step()
        return self
