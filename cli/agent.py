"""``fedquilt agent run``: the site's agent."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .. import __version__

log = logging.getLogger("fedquilt.agent")


def register(sub: Any) -> None:
    """Add ``agent`` and its subcommands."""
    p = sub.add_parser("agent", help="run a site's agent (trains locally, sends masked updates)")
    agent_sub = p.add_subparsers(dest="agent_command", metavar="ACTION")
    run = agent_sub.add_parser(
        "run", help="connect to the coordinator and serve rounds until the federation finishes",
        description="Load the local base model and data, enrol with the coordinator over mutual TLS, then train and "
                    "upload for every round this site is sampled into. Reconnects with backoff when the coordinator "
                    "goes away.")
    run.add_argument("--config", required=True, type=Path, help="agent TOML file (see docs/agent.md)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and services)")
    run.set_defaults(func=_run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def build_loop(config_path: Path, progress: bool = True) -> Any:
    """Everything an agent needs, built from its configuration file."""
    from ..agent.basemodel import federation_fingerprint
    from ..agent.config import load_agent_config
    from ..agent.data import load_dataset
    from ..agent.loop import AgentLoop, hello_request
    from ..agent.trainer import LoraTrainer
    from ..agent.transport import Transport, channel

    cfg = load_agent_config(config_path)
    privacy = None
    trainer: LoraTrainer
    if cfg.dp is not None:
        from ..agent.dp_trainer import DPLoraTrainer
        from ..agent.privacy_session import PrivacySite

        privacy = PrivacySite.from_config(cfg.dp, cfg.state_dir / "privacy.json")
        trainer = DPLoraTrainer(cfg.model.dir, cfg.model.task, cfg.model.target_modules, privacy,
                                device=cfg.model.device, seed=cfg.seed, num_labels=cfg.model.num_labels,
                                head_seed=cfg.model.head_seed)
    else:
        trainer = LoraTrainer(cfg.model.dir, cfg.model.task, cfg.model.target_modules, device=cfg.model.device,
                              seed=cfg.seed, num_labels=cfg.model.num_labels, head_seed=cfg.model.head_seed)
    data = load_dataset(cfg.data.train, trainer.tokenizer, cfg.model.task, cfg.model.max_length, cfg.model.num_labels)
    eval_data = None
    if cfg.data.eval is not None:
        eval_data = load_dataset(cfg.data.eval, trainer.tokenizer, cfg.model.task, cfg.model.max_length,
                                 cfg.model.num_labels)
        trainer.eval_data = eval_data
    chan = channel(cfg.coordinator.address, cfg.tls.ca.read_bytes(), cfg.tls.cert.read_bytes(), cfg.tls.key.read_bytes(),
                   cfg.coordinator.server_name)
    transport = Transport(chan, max_backoff=cfg.coordinator.max_backoff)
    fp = federation_fingerprint(cfg.model.dir, cfg.model.task, cfg.model.num_labels, cfg.model.head_seed)
    hello = hello_request(trainer, fp, data.n, cfg.model.rank, cfg.model.alpha, cfg.model.task,
                          __version__)
    from ..agent.secure_sum import SecureSumClient

    secure = SecureSumClient(cfg.tls.ca.read_bytes(), cfg.tls.cert.read_bytes(), cfg.tls.key.read_bytes())
    return AgentLoop(transport, trainer, data, hello, cfg.model.alpha, cfg.state_dir, eval_data=eval_data,
                     privacy=privacy, secure_sum=secure, progress=progress, keep_submissions=cfg.keep_submissions)


def _run(args: argparse.Namespace) -> int:
    loop = build_loop(args.config, progress=not args.no_progress)
    return int(loop.run())
