"""deploy/dev-certs.sh, run for real; openssl is the independent judge of the certificates it makes."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_harness import DEV_CERTS, run_dev_certs

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")

HOLDERS = ("coordinator", "admin", "site-1", "site-2", "site-3")


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run openssl, output captured, never raising."""
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30, check=False)


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_layout_one_folder_per_holder_keys_private(dev_pki: Path) -> None:
    assert sorted(p.name for p in dev_pki.iterdir()) == sorted(("ca", *HOLDERS))
    for holder in HOLDERS:
        names = sorted(p.name for p in (dev_pki / holder).iterdir())
        expected = ["ca.pem", f"{holder}.key", f"{holder}.pem"] + (["crl.pem"] if holder == "coordinator" else [])
        assert names == sorted(expected), holder
        assert (dev_pki / holder / f"{holder}.key").stat().st_mode & 0o077 == 0
        assert "ca.key" not in names


@pytest.mark.parametrize("holder", HOLDERS)
def test_every_certificate_chains_to_the_ca(dev_pki: Path, holder: str) -> None:
    purpose = "sslserver" if holder == "coordinator" else "sslclient"
    done = openssl("verify", "-CAfile", str(dev_pki / "ca" / "ca.pem"), "-purpose", purpose,
                   "-crl_check", "-CRLfile", str(dev_pki / "coordinator" / "crl.pem"),
                   str(dev_pki / holder / f"{holder}.pem"))
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr
    # The copy of ca.pem handed to each holder is the CA itself.
    assert (dev_pki / holder / "ca.pem").read_bytes() == (dev_pki / "ca" / "ca.pem").read_bytes()


@pytest.mark.parametrize(("holder", "role"), [("coordinator", "coordinator"), ("admin", "admin"), ("site-2", "site")])
def test_subject_names_holder_and_role(dev_pki: Path, holder: str, role: str) -> None:
    done = openssl("x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", str(dev_pki / holder / f"{holder}.pem"))
    fields = dict(part.split("=", 1) for part in done.stdout.strip().removeprefix("subject=").split(","))
    assert (fields["CN"], fields["OU"]) == (holder, role)


def test_site_certificate_cannot_serve(dev_pki: Path) -> None:
    done = openssl("verify", "-CAfile", str(dev_pki / "ca" / "ca.pem"), "-purpose", "sslserver",
                   str(dev_pki / "site-1" / "site-1.pem"))
    assert done.returncode != 0


def test_coordinator_names_the_compose_service(dev_pki: Path) -> None:
    done = openssl("x509", "-noout", "-ext", "subjectAltName", "-in", str(dev_pki / "coordinator" / "coordinator.pem"))
    assert {"DNS:coordinator", "DNS:localhost", "IP Address:127.0.0.1"} <= {
        s.strip() for s in done.stdout.splitlines()[1].split(",")}


def test_rerun_keeps_everything_and_adds_missing_sites(dev_pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "pki"
    shutil.copytree(dev_pki, out)
    before = digest(out)
    again = run_dev_certs(out, "3")
    assert again.returncode == 0, again.stderr
    assert digest(out) == before
    more = run_dev_certs(out, "4")
    assert more.returncode == 0, more.stderr
    after = digest(out)
    unchanged = {k: v for k, v in before.items() if k != "ca/index.json"}  # the index records site-4
    assert {k: after[k] for k in unchanged} == unchanged
    assert sorted(set(after) - set(before)) == ["site-4/ca.pem", "site-4/site-4.key", "site-4/site-4.pem"]


def test_rerun_after_revoke_refreshes_the_coordinators_crl(dev_pki: Path, tmp_path: Path) -> None:
    out = tmp_path / "pki"
    shutil.copytree(dev_pki, out)
    revoke = subprocess.run([sys.executable, "-m", "fedquilt.cli.main", "certs", "revoke", "--dir", str(out / "ca"),
                             "--cert", str(out / "site-2" / "site-2.pem")], capture_output=True, text=True, check=False)
    assert revoke.returncode == 0, revoke.stderr
    assert run_dev_certs(out, "3").returncode == 0
    args = ["verify", "-crl_check", "-CAfile", str(out / "ca" / "ca.pem"), "-CRLfile", str(out / "coordinator" / "crl.pem")]
    revoked = openssl(*args, str(out / "site-2" / "site-2.pem"))
    assert revoked.returncode != 0 and "revoked" in revoked.stdout + revoked.stderr
    assert openssl(*args, str(out / "site-1" / "site-1.pem")).returncode == 0


@pytest.mark.parametrize("args", [(), ("three",), ("3", "extra")])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = tmp_path / "pki"
    if args:
        done = run_dev_certs(out, *args)
    else:
        done = subprocess.run(["bash", str(DEV_CERTS)], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert not out.exists()
