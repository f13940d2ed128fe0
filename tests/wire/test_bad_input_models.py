"""Bad ListVersions / Pull requests: NOT_FOUND for what does not exist, INVALID_ARGUMENT for bad names."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import grpc
import pytest

from fedquilt.proto import federation_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FILES = {"adapter_config.json": b'{"r": 2}', "adapter_model.safetensors": b"\x00" * 3000}


def _published(coordinator: Any) -> Any:
    """A coordinator whose store holds one version, v0001 (tagged latest), of the federation's model."""
    w = coordinator()
    manifest = {"files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in FILES.items()},
                "round": 1, "rule": "fedit", "created": "2026-01-01T00:00:00Z", "version": "v0001"}
    w.running.store.publish(w.files.model, "v0001", FILES, manifest)
    return w


def _store_state(w: Any) -> Any:
    root = w.running.store.root
    return sorted((str(p.relative_to(root)), p.read_bytes()) for p in root.rglob("*") if p.is_file())


BAD_PULLS = {
    "unknown-model": (("nobody", "latest"), NOT_FOUND),
    "unknown-version": (("{model}", "v0002"), NOT_FOUND),
    "unknown-tag": (("{model}", "stable"), NOT_FOUND),
    "traversal-model": (("../x", "latest"), INVALID),
    "traversal-version": (("{model}", "../x"), INVALID),
    "dotdot-version": (("{model}", ".."), INVALID),
    "absolute-model": (("/etc/passwd", "latest"), INVALID),
    "slash-in-version": (("{model}", "v0001/../../x"), INVALID),
    "empty-model": (("", "latest"), INVALID),
    "overlong-model": (("m" * 300, "latest"), INVALID),
}


@pytest.mark.parametrize("case", list(BAD_PULLS))
@pytest.mark.parametrize("who", ["site-0", "admin"])
def test_bad_pull_is_refused(coordinator, case: str, who: str) -> None:
    w = _published(coordinator)
    (model, version), code = BAD_PULLS[case]
    request = pb.PullRequest(model=model.format(model=w.files.model), version=version)
    before, store = w.snapshot(), _store_state(w)
    assert w.refused(lambda: w.models(who).Pull(request, timeout=5)) is code
    assert w.snapshot() == before and _store_state(w) == store
    chunks = list(w.models(who).Pull(pb.PullRequest(model=w.files.model), timeout=5))
    assert chunks[0].path == "manifest.json" and chunks[0].version == "v0001"
    got = {c.path: c.data for c in chunks[1:] if c.path != "crl.pem"}  # the CA-signed CRL rides along (issue 11)
    assert got == FILES and all(c.sha256 == hashlib.sha256(FILES[c.path]).hexdigest() for c in chunks[1:]
                                if c.path in FILES)


@pytest.mark.parametrize("model", ["../x", "", "a/b", "..", ".hidden", "m" * 300])
def test_list_versions_with_an_invalid_model_name_is_invalid(coordinator, model: str) -> None:
    w = _published(coordinator)
    store = _store_state(w)
    assert w.refused(lambda: w.models("site-0").ListVersions(pb.ListVersionsRequest(model=model), timeout=5)) is INVALID
    assert _store_state(w) == store
    versions = w.models("site-0").ListVersions(pb.ListVersionsRequest(model=w.files.model), timeout=5).versions
    assert [(v.version, v.round, v.rule, list(v.tags)) for v in versions] == [("v0001", 1, "fedit", ["latest"])]


def test_list_versions_of_an_unknown_model_is_empty_not_an_error(coordinator) -> None:
    w = _published(coordinator)
    assert list(w.models("admin").ListVersions(pb.ListVersionsRequest(model="nobody"), timeout=5).versions) == []


def test_pulled_manifest_is_the_stored_one(coordinator) -> None:
    w = _published(coordinator)
    chunks = list(w.models("site-1").Pull(pb.PullRequest(model=w.files.model, version="v0001"), timeout=5))
    manifest = json.loads(b"".join(c.data for c in chunks if c.path == "manifest.json"))
    assert manifest == w.running.store.manifest(w.files.model, "v0001")
