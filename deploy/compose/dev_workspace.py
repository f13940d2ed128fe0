"""Dev-only: a tiny local base model and per-site data for the compose stack, plus its coordinator.toml.

Run by the ``dev-workspace`` job of ``deploy/compose.yaml`` inside the coordinator image::

    python dev_workspace.py --template coordinator.toml --config-out /etc/fedquilt/config/coordinator.toml \
        --owner 10001:10001 /data/site-1 /data/site-2 /data/site-3

Each DATA_DIR (one volume per agent) receives ``model/`` (the same tiny Llama for every site, built
from a config with random weights: nothing is downloaded), ``train.jsonl`` and ``eval.jsonl`` (that
site's non-IID text). The coordinator config is the template with ``federation.base_fingerprint``
set to the model's fingerprint. Idempotent: data dirs that already hold a model and data are kept,
and the config is rewritten from the template (so edits to the template apply on the next run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Sequence

import tomli_w

from fedquilt.agent.basemodel import fingerprint
from fedquilt.cli.workspace import build_workspace

_DATA_FILES = ("train.jsonl", "eval.jsonl")


def is_complete(data_dir: Path) -> bool:
    """Whether ``data_dir`` already holds a model (weights present) and both data files."""
    has_model = any((data_dir / "model").glob("*.safetensors"))
    return has_model and all((data_dir / name).is_file() for name in _DATA_FILES)


def fill_data_dirs(data_dirs: Sequence[Path], seed: int) -> None:
    """Build one workspace with ``len(data_dirs)`` sites and copy model + site i's data into data_dirs[i]."""
    with tempfile.TemporaryDirectory(prefix="fedquilt-ws-") as tmp:
        ws = build_workspace(Path(tmp), sites=len(data_dirs), task="causal-lm", seed=seed)
        for site, target in zip(ws.sites, data_dirs):
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(ws.model_dir, target / "model", dirs_exist_ok=True)
            shutil.copyfile(site.train, target / "train.jsonl")
            shutil.copyfile(site.eval, target / "eval.jsonl")


def write_coordinator_config(template: Path, out: Path, base_fingerprint: str) -> None:
    """Write ``template`` with ``federation.base_fingerprint`` set, atomically, to ``out``."""
    config = tomllib.loads(template.read_text())
    if "federation" not in config:
        raise ValueError(f"{template} has no [federation] table")
    config["federation"]["base_fingerprint"] = base_fingerprint
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(tomli_w.dumps(config))
    os.replace(tmp, out)


def chown_tree(paths: Sequence[Path], owner: str) -> None:
    """``chown -R owner`` over ``paths`` (owner is ``uid:gid``, numeric)."""
    try:
        uid, gid = (int(part) for part in owner.split(":"))
    except ValueError:
        raise ValueError(f"--owner must be numeric uid:gid, got {owner!r}") from None
    for top in paths:
        os.chown(top, uid, gid)
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid)


def main(argv: Sequence[str] | None = None) -> int:
    """Fill the data dirs (unless already complete) and write the coordinator config; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, required=True, help="coordinator TOML template")
    parser.add_argument("--config-out", type=Path, required=True, help="where to write coordinator.toml")
    parser.add_argument("--owner", help="numeric uid:gid to chown the outputs to (when run as root)")
    parser.add_argument("--seed", type=int, default=0, help="workspace seed (default 0)")
    parser.add_argument("data_dirs", type=Path, nargs="+", metavar="DATA_DIR", help="one per site, in order")
    args = parser.parse_args(argv)
    data_dirs: list[Path] = args.data_dirs
    if all(is_complete(d) for d in data_dirs):
        print(f"workspace: kept {len(data_dirs)} data dir(s)")
    else:
        fill_data_dirs(data_dirs, args.seed)
        print(f"workspace: built a tiny model and data for {len(data_dirs)} site(s)")
    fp = fingerprint(data_dirs[0] / "model")
    for d in data_dirs[1:]:
        if fingerprint(d / "model") != fp:
            raise ValueError(f"{d / 'model'} differs from {data_dirs[0] / 'model'}; remove the data volumes and rerun")
    write_coordinator_config(args.template, args.config_out, fp)
    if args.owner:
        chown_tree([*data_dirs, args.config_out.parent], args.owner)
    print(f"coordinator config: {args.config_out} (base_fingerprint {fp[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
