"""The model store: published adapter versions, immutable once written.

Layout of ``FileModelStore(root)``::

    root/blobs/<sha256>                  content-addressed file bodies
    root/models/<model>/<version>.json   the version's manifest (file names -> sha256, size, …)
    root/models/<model>/tags.json        {"latest": "<version>"}

A version becomes visible only when its manifest lands by ``os.replace`` after every blob it
names is on disk, so a crash at any point leaves either the whole version or none of it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping, Protocol

from ..atomic_file import atomic_write

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class StoreError(Exception):
    """Base class of model-store errors."""


class UnknownVersion(StoreError):
    """The model, version or tag does not exist."""


class VersionExists(StoreError):
    """Versions are immutable: this one is already published."""


RESERVED_VERSIONS = frozenset({"tags"})
"""Names a version can never have: ``<model>/tags.json`` is the tag file, not a manifest."""


def validate_name(kind: str, value: str) -> str:
    """Model, version and tag names: letters, digits, '.', '_', '-' (no path tricks, no reserved names)."""
    if not _NAME.fullmatch(value) or value in {".", ".."}:
        raise ValueError(f"invalid {kind} name {value[:120]!r}: use letters, digits, '.', '_' or '-'")
    if kind == "version" and value in RESERVED_VERSIONS:
        raise ValueError(f"{value!r} is a reserved name, not a version")
    return value


class ModelStore(Protocol):
    """Where published versions live."""

    def publish(self, model: str, version: str, files: Mapping[str, bytes], manifest: dict[str, Any]) -> None:
        """Store every file and the manifest atomically; moves the ``latest`` tag."""
        ...

    def resolve(self, model: str, ref: str) -> str:
        """A version name from a version or a tag."""
        ...

    def manifest(self, model: str, version: str) -> dict[str, Any]:
        """The version's manifest."""
        ...

    def read(self, model: str, version: str, path: str) -> bytes:
        """One file of a version, checked against its recorded hash."""
        ...

    def versions(self, model: str) -> list[str]:
        """Published versions, oldest first."""
        ...


class FileModelStore:
    """``ModelStore`` on a local filesystem (the default)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "models").mkdir(parents=True, exist_ok=True)

    def _model_dir(self, model: str) -> Path:
        return self.root / "models" / validate_name("model", model)

    def _manifest_path(self, model: str, version: str) -> Path:
        return self._model_dir(model) / f"{validate_name('version', version)}.json"

    def publish(self, model: str, version: str, files: Mapping[str, bytes], manifest: dict[str, Any]) -> None:
        """Store blobs, then the manifest (the commit point), then move ``latest``."""
        target = self._manifest_path(model, version)
        if target.exists():
            raise VersionExists(f"{model}:{version} is already published; versions are immutable")
        for name, body in files.items():
            digest = hashlib.sha256(body).hexdigest()
            if manifest["files"][name]["sha256"] != digest:
                raise StoreError(f"{name}: manifest hash does not match the file body")
            blob = self.root / "blobs" / digest
            if not blob.exists():
                atomic_write(blob, body)
        atomic_write(target, json.dumps(manifest, indent=2, sort_keys=True).encode())
        self.tag(model, "latest", version)

    def tag(self, model: str, tag: str, version: str) -> None:
        """Point ``tag`` at an existing version."""
        if not self._manifest_path(model, version).exists():
            raise UnknownVersion(f"{model}:{version} does not exist")
        tags = self._tags(model)
        tags[validate_name("tag", tag)] = version
        atomic_write(self._model_dir(model) / "tags.json", json.dumps(tags, indent=2, sort_keys=True).encode())

    def _tags(self, model: str) -> dict[str, str]:
        path = self._model_dir(model) / "tags.json"
        return dict(json.loads(path.read_text())) if path.exists() else {}

    def resolve(self, model: str, ref: str) -> str:
        """A version name from a version or a tag."""
        validate_name("tag", ref)
        if ref not in RESERVED_VERSIONS and self._manifest_path(model, ref).exists():
            return ref
        tags = self._tags(model)
        if ref in tags:
            return tags[ref]
        raise UnknownVersion(f"{model}:{ref} is neither a published version nor a tag")

    def manifest(self, model: str, version: str) -> dict[str, Any]:
        """The version's manifest."""
        path = self._manifest_path(model, version)
        if not path.exists():
            raise UnknownVersion(f"{model}:{version} does not exist")
        return dict(json.loads(path.read_text()))

    def read(self, model: str, version: str, path: str) -> bytes:
        """One file of a version, checked against its recorded hash."""
        entry = self.manifest(model, version)["files"].get(path)
        if entry is None:
            raise UnknownVersion(f"{model}:{version} has no file {path!r}")
        digest: str = entry["sha256"]
        body = (self.root / "blobs" / digest).read_bytes()
        if hashlib.sha256(body).hexdigest() != digest:
            raise StoreError(f"{model}:{version}/{path} is corrupt on disk (hash mismatch)")
        return body

    def versions(self, model: str) -> list[str]:
        """Published versions, oldest first (names sort by round)."""
        folder = self._model_dir(model)
        if not folder.exists():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if p.name != "tags.json" and not p.name.startswith("."))

    def tags_of(self, model: str, version: str) -> list[str]:
        """Tags pointing at ``version``."""
        return sorted(t for t, v in self._tags(model).items() if v == version)
