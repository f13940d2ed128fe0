"""``fedquilt pull MODEL[:VERSION] --out DIR``: fetch a published adapter for inference."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``pull``."""
    p = sub.add_parser(
        "pull", help="download a published adapter version as a PEFT folder",
        description="Stream a published version over mutual TLS, check every file's sha256 and the coordinator's "
                    "signature (a current, unrevoked coordinator certificate of the federation CA), and write a folder that "
                    "peft.PeftModel.from_pretrained(base, DIR) loads as it is.")
    p.add_argument("ref", metavar="MODEL[:VERSION]", help="model name, optionally with a version or tag (default latest)")
    p.add_argument("--out", required=True, type=Path, help="folder to write (replaced atomically)")
    p.add_argument("--coordinator", default="localhost:7443", help="coordinator address (default localhost:7443)")
    p.add_argument("--ca", type=Path, help="federation CA certificate (PEM)")
    p.add_argument("--cert", type=Path, help="your certificate (PEM) issued by `fedquilt certs issue`")
    p.add_argument("--key", type=Path, help="your private key (PEM)")
    p.add_argument("--crl", type=Path, help="the CA's signed revocation list (PEM) held locally; the coordinator "
                                            "also streams one, and the newer valid one is used")
    p.add_argument("--agent-config", type=Path, help="take address and certificates from an agent TOML instead")
    p.set_defaults(func=_pull)


def _pull(args: argparse.Namespace) -> int:
    from ..agent.pull import parse_ref, pull
    from ..agent.transport import channel

    address, server_name = args.coordinator, None
    ca, cert, key = args.ca, args.cert, args.key
    if args.agent_config:
        from ..agent.config import load_agent_config

        cfg = load_agent_config(args.agent_config)
        address, server_name = cfg.coordinator.address, cfg.coordinator.server_name
        ca, cert, key = cfg.tls.ca, cfg.tls.cert, cfg.tls.key
    if not (ca and cert and key):
        raise ValueError("give --ca, --cert and --key (or --agent-config)")
    model, ref = parse_ref(args.ref)
    chan = channel(address, ca.read_bytes(), cert.read_bytes(), key.read_bytes(), server_name)
    manifest = pull(chan, model, ref, args.out, ca.read_bytes(), args.crl.read_bytes() if args.crl else None)
    print(f"pulled {model}:{manifest['version']} (round {manifest['round']}, rule {manifest['rule']}, "
          f"{manifest['contributors']} contributors) into {args.out}")
    return 0
