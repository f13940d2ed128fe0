"""``fedquilt certs``: run the federation CA (init, issue, revoke, rotate, list)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from cryptography import x509

from ..coordinator import pki

_WARN_DAYS = 30
_REASONS = {flag.name: flag for flag in x509.ReasonFlags if flag not in (x509.ReasonFlags.remove_from_crl,)}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``certs`` command group to the ``fedquilt`` parser."""
    certs = sub.add_parser(
        "certs",
        help="run the federation certificate authority (mutual-TLS identities)",
        description=(
            "Create the federation CA, enrol sites, the coordinator and admins, rotate and revoke "
            "their certificates. A certificate's CN is the site id and its OU the role. "
            "Keep the CA directory (ca.key!) on the operator's machine only."
        ),
    )
    certs.set_defaults(func=lambda _args: _print_help(certs))
    cmds = certs.add_subparsers(dest="certs_command", metavar="ACTION")

    init = cmds.add_parser("init", help="create a new CA (ca.pem, ca.key, crl.pem, index.json)")
    _ca_dir(init)
    init.add_argument("--name", default="fedquilt federation CA", help="CA common name (default: %(default)s)")
    init.add_argument("--days", type=int, default=3650, help="CA validity in days (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace an existing CA (invalidates every issued cert)")
    init.set_defaults(func=_init)

    issue = cmds.add_parser(
        "issue", help="issue a certificate and key for a site, the coordinator or an admin",
        description="Writes OUT/NAME.pem, OUT/NAME.key (mode 0600) and OUT/ca.pem; hand OUT to the holder.",
    )
    _ca_dir(issue)
    _leaf_args(issue, role_required=True)
    issue.add_argument("--force", action="store_true",
                       help="issue although NAME already has a valid certificate (both stay valid; prefer `rotate`)")
    issue.set_defaults(func=_issue)

    revoke = cmds.add_parser(
        "revoke", help="revoke a certificate (adds it to the signed crl.pem)",
        description="The coordinator re-reads crl.pem on change; the revoked holder is refused on its next call.",
    )
    _ca_dir(revoke)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--cert", type=Path, help="PEM file of the certificate to revoke")
    which.add_argument("--serial", type=_serial, help="serial number (decimal, or hex with 0x; see `certs list`)")
    revoke.add_argument(
        "--reason", choices=sorted(_REASONS), default="unspecified", help="CRL reason code (default: %(default)s)"
    )
    revoke.set_defaults(func=_revoke)

    rotate = cmds.add_parser(
        "rotate", help="issue a replacement certificate and revoke the old one (reason: superseded)",
        description="Role and hosts default to those of the current certificate for NAME.",
    )
    _ca_dir(rotate)
    _leaf_args(rotate, role_required=False)
    rotate.set_defaults(func=_rotate)

    listing = cmds.add_parser(
        "list", help="list issued certificates with expiry and revocation status",
        description=f"Prints one line per issued certificate and a warning for any expiring within {_WARN_DAYS} days.",
    )
    _ca_dir(listing)
    listing.set_defaults(func=_list)


def _ca_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, required=True, dest="ca_dir", metavar="CA_DIR", help="the CA directory")


def _leaf_args(parser: argparse.ArgumentParser, *, role_required: bool) -> None:
    parser.add_argument("--out", type=Path, required=True, help="directory to write NAME.pem, NAME.key, ca.pem into")
    parser.add_argument("--name", required=True, help="site id / holder name, e.g. hospital-a (becomes the CN)")
    parser.add_argument(
        "--role", choices=[r.value for r in pki.Role], required=role_required,
        help="site (data site agent), coordinator (server; gets serverAuth), admin (operator RPCs) or consumer "
             "(list and pull published versions only)",
    )
    parser.add_argument(
        "--host", action="append", default=[], metavar="H",
        help="DNS name or IP for subjectAltName, repeatable (coordinator default: localhost 127.0.0.1 ::1)",
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default: %(default)s)")


def _serial(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"serial must be an integer (decimal or 0x-hex), got {text!r}") from None


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _init(args: argparse.Namespace) -> int:
    if not args.force:
        for existing in (args.ca_dir / pki.CA_CERT, args.ca_dir / pki.CA_KEY):
            if existing.exists():
                raise FileExistsError(f"a CA already exists at {existing}; pass --force to replace it (every "
                                      "certificate it issued stops working)")
    paths = pki.init_ca(args.ca_dir, args.name, args.days, force=args.force)
    print(f"CA created: {paths.cert} (key {paths.key}, mode 0600; keep it offline)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    revoked = pki.revoked_serials(args.ca_dir) if (args.ca_dir / pki.CA_CERT).exists() else {}
    now = dt.datetime.now(dt.timezone.utc)
    current = [c for c in pki.issued(args.ca_dir) if c.name == args.name and c.serial not in revoked
               and c.not_after > now] if (args.ca_dir / pki.INDEX_FILE).exists() else []
    if current and not args.force:
        raise FileExistsError(f"{args.name!r} already has a valid {current[-1].role.value} certificate (serial "
                              f"{current[-1].serial:#x}, until {current[-1].not_after:%Y-%m-%d}); use `fedquilt certs "
                              f"rotate --name {args.name}` to replace it, or --force to issue a second one")
    paths = pki.issue(args.ca_dir, args.out, args.name, pki.Role(args.role), args.days, args.host)
    print(f"issued {args.name} ({args.role}): {paths.cert}, key {paths.key}, CA {paths.ca}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    target = args.cert if args.cert is not None else args.serial
    serial = pki.revoke(args.ca_dir, target, _REASONS[args.reason])
    names = [c.name for c in pki.issued(args.ca_dir) if c.serial == serial]
    print(f"revoked serial {serial:#x} ({', '.join(names) or 'not in index.json'}); CRL: {args.ca_dir / pki.CRL_FILE}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    current = [c for c in pki.issued(args.ca_dir) if c.name == args.name]
    if args.role is not None:
        role = pki.Role(args.role)
    elif current:
        role = current[-1].role
    else:
        raise LookupError(f"no certificate named {args.name!r} in {args.ca_dir / pki.INDEX_FILE}; use `certs issue`")
    paths = pki.rotate(args.ca_dir, args.out, args.name, role, args.days, args.host)
    print(f"rotated {args.name} ({role.value}): new {paths.cert}; previous certificate revoked (superseded)")
    return 0


def _list(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.timezone.utc)
    revoked = pki.revoked_serials(args.ca_dir)
    certs = pki.issued(args.ca_dir)
    print(f"{'NAME':<24} {'ROLE':<12} {'SERIAL':<42} {'NOT AFTER':<20} STATUS")
    for c in certs:
        status = "revoked" if c.serial in revoked else "expired" if c.not_after < now else "valid"
        print(f"{c.name:<24} {c.role.value:<12} {c.serial:<#42x} {c.not_after:%Y-%m-%d %H:%M}Z     {status}")
    for c in certs:
        left = c.not_after - now
        if c.serial not in revoked and left <= dt.timedelta(days=_WARN_DAYS):
            days = abs(left / dt.timedelta(days=1))
            when = f"expired {days:.1f} days ago" if left < dt.timedelta(0) else f"expires in {days:.1f} days"
            print(f"warning: {c.name} ({c.serial:#x}) {when} ({c.not_after:%Y-%m-%d}); run `fedquilt certs rotate`")
    ca_cert, _ = pki.load_ca(args.ca_dir)
    if ca_cert.not_valid_after_utc - now <= dt.timedelta(days=_WARN_DAYS):
        print(f"warning: the CA itself expires {ca_cert.not_valid_after_utc:%Y-%m-%d}; plan a new federation CA")
    return 0
