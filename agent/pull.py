"""Consumers: pull a published version over mutual TLS and write a folder stock PEFT loads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import grpc

from ..proto import federation_pb2 as pb
from .. import manifest as manifests
from ..proto import federation_pb2_grpc as pb_grpc
from .pull_folder import check_target, write_folder

MAX_FILE_BYTES = 8 * 1024**3


class PullError(Exception):
    """A pulled version failed a check (hash, signature, stream order); nothing was written."""


def parse_ref(ref: str) -> tuple[str, str]:
    """``MODEL[:VERSION]`` -> (model, version or "latest")."""
    model, _, version = ref.partition(":")
    if not model:
        raise ValueError(f"expected MODEL[:VERSION], got {ref!r}")
    return model, version or "latest"


CRL_NAME = "crl.pem"
"""The CA-signed revocation list the coordinator streams beside a version (not part of the version)."""


def verify_manifest(manifest: dict[str, Any], ca_pem: bytes, served_crl: bytes | None, local_crl: bytes | None) -> str:
    """``manifests.verify`` with the newest valid CRL of the two (a CRL not signed by the CA is an error)."""
    from cryptography import x509

    from ..secure_agg import load_crl

    ca = x509.load_pem_x509_certificate(ca_pem)
    held = None
    for pem in (local_crl, served_crl):
        if pem is not None:
            try:
                crl = load_crl(pem, ca)
            except Exception as exc:
                raise PullError(f"revocation list rejected: {exc}") from None
            held = crl if crl.newer_than(held) else held
    return manifests.verify(manifest, ca_pem, revocations=held)


def _receive(stream: Any) -> tuple[str, dict[str, bytes]]:
    files: dict[str, bytearray] = {}
    digests: dict[str, str] = {}
    version = ""
    for chunk in stream:
        version = chunk.version or version
        if "/" in chunk.path or chunk.path.startswith(".") or not chunk.path:
            raise PullError(f"refusing file name {chunk.path!r}")
        buf = files.setdefault(chunk.path, bytearray())
        if chunk.offset != len(buf):
            raise PullError(f"{chunk.path}: chunk at offset {chunk.offset}, expected {len(buf)}")
        buf += chunk.data
        if len(buf) > min(chunk.file_size, MAX_FILE_BYTES):
            raise PullError(f"{chunk.path}: more bytes than its declared {chunk.file_size}")
        if chunk.sha256:
            digests[chunk.path] = chunk.sha256
    for name, body in files.items():
        if hashlib.sha256(body).hexdigest() != digests.get(name):
            raise PullError(f"{name}: stream sha256 missing or wrong")
    return version, {k: bytes(v) for k, v in files.items()}


def _checked_base(base: str | None, manifest: dict[str, Any]) -> str | None:
    """``base`` as adapter_config.json should name it; a local folder must be the federation's base."""
    if base is None:
        return None
    path = Path(base).expanduser()
    if not path.is_dir():
        return base  # a hub name: nothing local to check
    from .basemodel import fingerprint

    actual, pinned = fingerprint(path), str(manifest.get("base_fingerprint") or "")
    if pinned and actual != pinned:
        raise PullError(f"--base {path} has fingerprint {actual[:16]}…, but this version was trained on base "
                        f"{pinned[:16]}…; give the federation's base model folder")
    return str(path.resolve())


def pull(chan: grpc.Channel, model: str, ref: str, out_dir: Path, ca_pem: bytes, crl_pem: bytes | None = None, *,
         force: bool = False, base: str | None = None) -> dict[str, Any]:
    """Download, verify (hashes; signature by a current, unrevoked coordinator certificate of the CA), then write
    ``out_dir`` (see ``write_folder``). ``crl_pem``: a CA-signed CRL held locally; the coordinator also streams its
    own (``crl.pem``, checked against the CA) and the newer of the two is used."""
    check_target(out_dir, model, force=force)  # before the download: a refused folder costs nothing
    stub = pb_grpc.ModelsStub(chan)  # type: ignore[no-untyped-call]  # generated, untyped
    version, files = _receive(stub.Pull(pb.PullRequest(model=model, version=ref), timeout=600))
    if "manifest.json" not in files:
        raise PullError("the coordinator sent no manifest.json")
    manifest = json.loads(files.pop("manifest.json"))
    verify_manifest(manifest, ca_pem, files.pop(CRL_NAME, None), crl_pem)
    manifests.check_files(manifest, files)
    if manifest.get("version") != version:
        raise PullError(f"manifest says version {manifest.get('version')!r}, stream says {version!r}")
    write_folder(out_dir, model, files, manifest, force=force, base=_checked_base(base, manifest))
    return dict(manifest)
