"""`fedquilt certs` round trip through the real entry point."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from fedquilt.cli.main import main
from fedquilt.coordinator import pki
from fedquilt.coordinator.identity import Authorizer, Unauthenticated


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_round_trip_init_issue_rotate_revoke_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, out = tmp_path / "ca", tmp_path / "out"
    assert main(["certs", "init", "--dir", str(ca), "--name", "test federation"]) == 0
    assert main(["certs", "init", "--dir", str(ca)]) == 1  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["certs", "issue", "--dir", str(ca), "--out", str(out), "--name", "coord", "--role", "coordinator",
                 "--host", "fq.example.org", "--host", "10.1.2.3"]) == 0
    assert main(["certs", "issue", "--dir", str(ca), "--out", str(out), "--name", "hospital-a", "--role", "site"]) == 0
    assert main(["certs", "issue", "--dir", str(ca), "--out", str(out), "--name", "lab-b", "--role", "site",
                 "--days", "7"]) == 0
    assert stat.S_IMODE((out / "hospital-a.key").stat().st_mode) == 0o600
    first = _serial(out / "hospital-a.pem")
    x509.load_pem_x509_certificate((out / "coord.pem").read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes())
    )

    assert main(["certs", "rotate", "--dir", str(ca), "--out", str(out), "--name", "hospital-a"]) == 0
    second = _serial(out / "hospital-a.pem")
    assert second != first and set(pki.revoked_serials(ca)) == {first}

    lab = _serial(out / "lab-b.pem")
    assert main(["certs", "revoke", "--dir", str(ca), "--serial", hex(lab), "--reason", "key_compromise"]) == 0
    assert "lab-b" in capsys.readouterr().out
    assert set(pki.revoked_serials(ca)) == {first, lab}
    with pytest.raises(Unauthenticated, match="revoked"):
        Authorizer.from_ca_dir(ca).check({"x509_pem_cert": [(out / "lab-b.pem").read_bytes()]}, pki.Role.SITE)

    assert main(["certs", "list", "--dir", str(ca)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines[1:] if not line.startswith("warning")]
    rows = {(cols[0], cols[2]): cols[-1] for cols in table}
    assert rows == {
        ("coord", hex(_serial(out / "coord.pem"))): "valid",
        ("hospital-a", hex(first)): "revoked",
        ("hospital-a", hex(second)): "valid",
        ("lab-b", hex(lab)): "revoked",
    }
    assert not [line for line in lines if line.startswith("warning")]  # the only short-lived cert is revoked

    index = json.loads((ca / "index.json").read_text())
    assert [c["name"] for c in index["certs"]] == ["coord", "hospital-a", "lab-b", "hospital-a"]


def test_list_warns_about_certs_expiring_within_30_days(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, out = str(tmp_path / "ca"), str(tmp_path / "out")
    main(["certs", "init", "--dir", ca])
    main(["certs", "issue", "--dir", ca, "--out", out, "--name", "soon", "--role", "site", "--days", "29"])
    main(["certs", "issue", "--dir", ca, "--out", out, "--name", "later", "--role", "site", "--days", "31"])
    capsys.readouterr()
    assert main(["certs", "list", "--dir", ca]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: soon ") and "expires in 29.0 days" in warnings[0]


def test_revoke_by_cert_file_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, out = str(tmp_path / "ca"), tmp_path / "out"
    main(["certs", "init", "--dir", ca])
    main(["certs", "issue", "--dir", ca, "--out", str(out), "--name", "a", "--role", "admin"])
    assert main(["certs", "revoke", "--dir", ca, "--cert", str(out / "a.pem")]) == 0
    assert set(pki.revoked_serials(Path(ca))) == {_serial(out / "a.pem")}
    capsys.readouterr()
    assert main(["certs", "issue", "--dir", ca, "--out", str(out), "--name", "Bad!", "--role", "site"]) == 1
    assert "'Bad!'" in capsys.readouterr().err
    assert main(["certs", "rotate", "--dir", ca, "--out", str(out), "--name", "ghost"]) == 1
    assert "'ghost'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["certs", "revoke", "--dir", ca])  # needs --cert or --serial
    with pytest.raises(SystemExit):
        main(["certs", "issue", "--dir", ca, "--out", str(out), "--name", "x", "--role", "root"])


def test_help_mentions_every_action(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs"]) == 2
    text = capsys.readouterr().out
    for action in ("init", "issue", "revoke", "rotate", "list"):
        assert action in text


def test_issue_refuses_an_existing_name_without_force(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fedquilt.cli.main import main
    from fedquilt.coordinator import pki

    ca = tmp_path / "ca"
    assert main(["certs", "init", "--dir", str(ca)]) == 0
    assert main(["certs", "issue", "--dir", str(ca), "--out", str(tmp_path / "a"), "--name", "hospital-a",
                 "--role", "site"]) == 0
    assert main(["certs", "issue", "--dir", str(ca), "--out", str(tmp_path / "b"), "--name", "hospital-a",
                 "--role", "site"]) == 1
    err = capsys.readouterr().err
    assert "'hospital-a' already has a valid site certificate" in err and "rotate" in err and "--force" in err
    assert len([c for c in pki.issued(ca) if c.name == "hospital-a"]) == 1 and not (tmp_path / "b").exists()
    assert main(["certs", "issue", "--dir", str(ca), "--out", str(tmp_path / "b"), "--name", "hospital-a",
                 "--role", "site", "--force"]) == 0
    assert len([c for c in pki.issued(ca) if c.name == "hospital-a"]) == 2


def test_ca_exists_error_names_the_flag(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fedquilt.cli.main import main

    assert main(["certs", "init", "--dir", str(tmp_path / "ca")]) == 0
    assert main(["certs", "init", "--dir", str(tmp_path / "ca")]) == 1
    err = capsys.readouterr().err
    assert "pass --force" in err and "force=True" not in err


def test_fingerprint_of_a_missing_folder(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fedquilt.cli.main import main

    assert main(["fingerprint", str(tmp_path / "nonexistent")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "safetensors" not in err
