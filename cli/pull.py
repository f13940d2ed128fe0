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
                    "signature against the federation CA, and write a folder that "
                    "peft.PeftModel.from_pretrained(base, DIR) loads as it is. A new folder is written beside DIR and "
                    "renamed into place; an existing one must be empty or an earlier pull of the same model (or give "
                    "--force). Files pull did not write are never deleted.")
    p.add_argument("ref", metavar="MODEL[:VERSION]", help="model name, optionally with a version or tag (default latest)")
    p.add_argument("--out", required=True, type=Path,
                   help="folder to write: new, empty, or an earlier pull of the same model ('.' works)")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty folder that is not an earlier pull (its other files are kept)")
    p.add_argument("--base", metavar="PATH_OR_NAME",
                   help="base model for adapter_config.json's base_model_name_or_path, so that "
                        "AutoPeftModelForCausalLM.from_pretrained(DIR) loads it; a local folder is fingerprinted and "
                        "must be the federation's base")
    p.add_argument("--coordinator", default="localhost:7443", help="coordinator address (default localhost:7443)")
    p.add_argument("--server-name", help="TLS name to expect on the coordinator certificate (default: the host)")
    p.add_argument("--ca", type=Path, help="federation CA certificate (PEM)")
    p.add_argument("--cert", type=Path, help="your certificate (PEM) issued by `fedquilt certs issue`")
    p.add_argument("--key", type=Path, help="your private key (PEM)")
    p.add_argument("--agent-config", type=Path,
                   help="take address and certificates from a TOML with [coordinator] and [tls] (an agent's config, "
                        "or a consumer's with only those two sections)")
    p.set_defaults(func=_pull)


def connection_args(args: argparse.Namespace) -> tuple[str, str | None, Path, Path, Path]:
    """Address, TLS name, CA, certificate and key from the flags or from ``--agent-config``."""
    address, server_name = args.coordinator, args.server_name
    ca, cert, key = args.ca, args.cert, args.key
    if getattr(args, "agent_config", None):
        from ..agent.config import load_client_config

        cfg = load_client_config(args.agent_config)
        address, server_name = cfg.coordinator.address, server_name or cfg.coordinator.server_name
        ca, cert, key = cfg.tls.ca, cfg.tls.cert, cfg.tls.key
    if not (ca and cert and key):
        raise ValueError("give --ca, --cert and --key (or --agent-config)")
    for what, path in (("--ca", ca), ("--cert", cert), ("--key", key)):
        if not Path(path).is_file():
            raise ValueError(f"{what} {path} does not exist")
    return address, server_name, ca, cert, key


def _pull(args: argparse.Namespace) -> int:
    import json

    from ..agent.pull import parse_ref, pull
    from ..agent.transport import channel
    from .rpc_messages import plain_rpc_errors

    address, server_name, ca, cert, key = connection_args(args)
    model, ref = parse_ref(args.ref)
    chan = channel(address, ca.read_bytes(), cert.read_bytes(), key.read_bytes(), server_name)
    with plain_rpc_errors(address, ca, cert, key, server_name, f"pull {model}:{ref}"):
        manifest = pull(chan, model, ref, args.out, ca.read_bytes(), force=args.force, base=args.base)
    print(f"pulled {model}:{manifest['version']} (round {manifest['round']}, rule {manifest['rule']}, "
          f"{manifest['contributors']} contributors) into {args.out}")
    if args.base is None:
        named = json.loads((args.out / "adapter_config.json").read_text()).get("base_model_name_or_path")
        print(f"note: adapter_config.json names the base {named!r} (the federation pins its base by fingerprint); "
              "load with PeftModel.from_pretrained(base, DIR), or pull again with --base PATH_OR_NAME so that "
              "AutoPeftModelForCausalLM.from_pretrained(DIR) finds it")
    return 0
