"""The filesystem model store: atomic, immutable versions, tags, corruption detection; manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedquilt.coordinator import manifest as manifests
from fedquilt.coordinator.pki import Role, init_ca, issue
from fedquilt.coordinator.registry import FileModelStore, UnknownVersion, VersionExists


def _signed(tmp_path: Path, files: dict[str, bytes], ca_name: str = "ca") -> tuple[dict, bytes]:
    init_ca(tmp_path / ca_name)
    c = issue(tmp_path / ca_name, tmp_path / f"{ca_name}-coord", "coordinator", Role.COORDINATOR)
    m = manifests.build(files, round=1, rule="fedit", version="v0001")
    return manifests.sign(m, c.key.read_bytes(), c.cert.read_bytes()), (tmp_path / ca_name / "ca.pem").read_bytes()


def test_publish_read_resolve_and_immutability(tmp_path: Path) -> None:
    store = FileModelStore(tmp_path / "store")
    files = {"adapter_config.json": b"{}", "adapter_model.safetensors": b"weights"}
    manifest, _ = _signed(tmp_path, files)
    store.publish("m", "v0001", files, manifest)
    assert store.versions("m") == ["v0001"] and store.resolve("m", "latest") == "v0001"
    assert store.read("m", "v0001", "adapter_model.safetensors") == b"weights"
    with pytest.raises(VersionExists):
        store.publish("m", "v0001", files, manifest)
    with pytest.raises(UnknownVersion):
        store.resolve("m", "v0009")
    with pytest.raises(ValueError, match="invalid model name"):
        store.versions("../etc")


def test_corrupt_blob_is_detected(tmp_path: Path) -> None:
    store = FileModelStore(tmp_path / "store")
    files = {"a.bin": b"abc"}
    manifest, _ = _signed(tmp_path, files)
    store.publish("m", "v0001", files, manifest)
    blob = tmp_path / "store" / "blobs" / manifest["files"]["a.bin"]["sha256"]
    blob.write_bytes(b"abd")
    with pytest.raises(Exception, match="corrupt"):
        store.read("m", "v0001", "a.bin")


def test_manifest_signature_verifies_and_tampering_fails(tmp_path: Path) -> None:
    files = {"a.bin": b"abc"}
    manifest, ca = _signed(tmp_path, files)
    assert manifests.verify(manifest, ca) == "coordinator"
    manifests.check_files(manifest, files)
    tampered = json.loads(json.dumps(manifest))
    tampered["contributors"] = 99
    with pytest.raises(manifests.ManifestError, match="altered"):
        manifests.verify(tampered, ca)
    with pytest.raises(manifests.ManifestError, match="sha256"):
        manifests.check_files(manifest, {"a.bin": b"abd"})
    _, other_ca = _signed(tmp_path, files, ca_name="other")
    with pytest.raises(manifests.ManifestError, match="federation CA"):
        manifests.verify(manifest, other_ca)
