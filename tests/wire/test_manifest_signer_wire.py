"""Issue 11 (e): `fedquilt pull` accepts a manifest only from a current, unrevoked coordinator certificate.

Versions are written straight into the running coordinator's model store (as a compromised store
or a hostile operator could), then pulled over mTLS with the real CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedquilt.cli.main import main
from fedquilt.coordinator import manifest as manifests
from fedquilt.coordinator.pki import Role, issue, revoke
from fedquilt.manifest import ManifestError, canonical, canonical_json

FILES = {"adapter_config.json": b'{"r": 2}', "adapter_model.safetensors": b"\x00" * 64}


def _publish(w: Any, version: str, key: Path, cert: Path, **facts: Any) -> None:
    manifest = manifests.build(FILES, version=version, round=1, rule="fedit", contributors=3, **facts)
    w.running.store.publish(w.files.model, version, FILES, manifests.sign(manifest, key.read_bytes(), cert.read_bytes()))


def _pull(w: Any, version: str, out: Path, capsys: Any) -> tuple[int, str]:
    cert, key = w.cert("site-1")
    code = main(["pull", f"{w.files.model}:{version}", "--out", str(out), "--coordinator", w.address,
                 "--ca", str(w.files.ca_dir / "ca.pem"), "--cert", str(cert), "--key", str(key)])
    return code, capsys.readouterr().err


@pytest.fixture
def wire(coordinator: Any) -> Any:
    w = coordinator()
    w.coord = (w.files.root / "coordinator" / "coordinator.key", w.files.root / "coordinator" / "coordinator.pem")
    return w


def test_genuine_manifest_pulls(wire: Any, tmp_path: Path, capsys: Any) -> None:
    _publish(wire, "v0001", *wire.coord)
    code, err = _pull(wire, "v0001", tmp_path / "out", capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["contributors"] == 3


@pytest.mark.parametrize("signer", ["site", "admin", "revoked-coordinator", "expired-coordinator"])
def test_altered_manifest_re_signed_by_another_key_is_refused(wire: Any, tmp_path: Path, capsys: Any,
                                                             signer: str) -> None:
    if signer == "site":
        cert, key = wire.cert("site-0")
    elif signer == "admin":
        key, cert = wire.files.admin_key, wire.files.admin_cert
    else:
        paths = issue(wire.files.ca_dir, tmp_path / "rogue", "coordinator", Role.COORDINATOR,
                      days=0 if signer == "expired-coordinator" else 30, hosts=("localhost",))
        key, cert = paths.key, paths.cert
        if signer == "revoked-coordinator":
            revoke(wire.files.ca_dir, cert)
    _publish(wire, "v0002", key, cert, note="altered: 99 contributors claimed")
    code, err = _pull(wire, "v0002", tmp_path / "out", capsys)
    assert code == 1
    assert {"site": "role ['site'], not ['coordinator']", "admin": "role ['admin'], not ['coordinator']",
            "revoked-coordinator": "is revoked", "expired-coordinator": "is not valid at"}[signer] in err, err
    assert not (tmp_path / "out").exists()


def test_manifest_bytes_are_rfc8785(wire: Any) -> None:
    m = manifests.build(FILES, version="v9", round=1, rule="fedit", epsilon=1e-7, big=1e21, ratio=0.5, n=3.0)
    body = canonical(m).decode()
    assert '"big":1e+21' in body and '"epsilon":1e-7' in body and '"n":3' in body and '"ratio":0.5' in body
    assert body.startswith('{"big"') and " " not in body.replace(m["created"], "")
    assert canonical_json({"€": 1, "a": [True, None, "é\n"]}) == '{"a":[true,null,"é\\n"],"€":1}'
    with pytest.raises(ManifestError, match="non-finite"):
        canonical_json({"x": float("nan")})
