"""``fedquilt pull MODEL[:VERSION] --out DIR``: fetch a published adapter for inference."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .connection import add_connection_args, connection_of


def register(sub: Any) -> None:
    """Add ``pull``."""
    p = sub.add_parser(
        "pull", help="download a published adapter version as a PEFT folder",
        description="Stream a published version over mutual TLS, check every file's sha256 and the coordinator's "
                    "signature (a current, unrevoked coordinator certificate of the federation CA), and write a folder that "
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
    p.add_argument("--crl", type=Path, help="the CA's signed revocation list (PEM) held locally; the coordinator "
                                            "also streams one, and the newer valid one is used")
    add_connection_args(p)
    p.set_defaults(func=_pull)


def _pull(args: argparse.Namespace) -> int:
    import json

    from ..agent.pull import parse_ref, pull

    conn = connection_of(args)
    model, ref = parse_ref(args.ref)
    with conn.plain_errors(f"pull {model}:{ref}"):
        manifest = pull(conn.channel(), model, ref, args.out, conn.ca.read_bytes(),
                        args.crl.read_bytes() if args.crl else None, force=args.force, base=args.base)
    print(f"pulled {model}:{manifest['version']} (round {manifest['round']}, rule {manifest['rule']}, "
          f"{manifest['contributors']} contributors) into {args.out}")
    if args.base is None:
        named = json.loads((args.out / "adapter_config.json").read_text()).get("base_model_name_or_path")
        print(f"note: adapter_config.json names the base {named!r} (the federation pins its base by fingerprint); "
              "load with PeftModel.from_pretrained(base, DIR), or pull again with --base PATH_OR_NAME so that "
              "AutoPeftModelForCausalLM.from_pretrained(DIR) finds it")
    return 0
