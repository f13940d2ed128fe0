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
                    "goes away. Under torchrun --nproc-per-node=G (or accelerate launch) rank 0 alone talks to the "
                    "coordinator and every rank trains with DDP on its slice of each batch (docs/agent.md).")
    run.add_argument("--config", required=True, type=Path, help="agent TOML file (see docs/agent.md)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and services)")
    run.set_defaults(func=_run)
    check = agent_sub.add_parser(
        "check", help="validate a config, certificates, model folder and data; print what run would do (trains nothing)",
        description="Load the config strictly (an unknown key is refused, naming the keys allowed there), check the "
                    "site certificate (issued by the CA, role site, not expired, matching its key), fingerprint the "
                    "base model and look at the data files, then print what `agent run` would do. With --connect, "
                    "also open one TLS connection to the coordinator and say why it fails, if it does.")
    check.add_argument("--config", required=True, type=Path, help="agent TOML file (see docs/agent.md)")
    check.add_argument("--connect", action="store_true", help="also test the TLS connection to the coordinator")
    check.set_defaults(func=_check)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def build_loop(config_path: Path, progress: bool = True) -> Any:
    """Everything an agent needs, built from its configuration file."""
    from ..agent.config import load_agent_config
    from ..agent.trainer import LoraTrainer

    cfg = load_agent_config(config_path)
    ranks = _ranks(cfg)
    if ranks.distributed:
        return _build_distributed(cfg, ranks, progress)
    privacy = None
    trainer: LoraTrainer
    if cfg.dp is not None:
        from ..agent.dp_trainer import DPLoraTrainer
        from ..agent.privacy_session import PrivacySite

        privacy = PrivacySite.from_config(cfg.dp, cfg.state_dir / "privacy.json")
        trainer = DPLoraTrainer(cfg.model.dir, cfg.model.task, cfg.model.target_modules, privacy,
                                device=cfg.model.device, seed=cfg.seed, quantization=cfg.model.quantization,
                                num_labels=cfg.model.num_labels, head_seed=cfg.model.head_seed)
    else:
        trainer = LoraTrainer(cfg.model.dir, cfg.model.task, cfg.model.target_modules, device=cfg.model.device,
                              seed=cfg.seed, quantization=cfg.model.quantization, num_labels=cfg.model.num_labels,
                              head_seed=cfg.model.head_seed)
    data, eval_data = _local_data(cfg, trainer)
    return _agent_loop(cfg, trainer, data, eval_data, privacy, progress)


def _local_data(cfg: Any, trainer: Any) -> tuple[Any, Any]:
    """The site's training data and held-out data (``None`` without ``[data] eval``), set on ``trainer``."""
    from ..agent.data import load_dataset

    data = load_dataset(cfg.data.train, trainer.tokenizer, cfg.model.task, cfg.model.max_length, cfg.model.num_labels)
    eval_data = None
    if cfg.data.eval is not None:
        eval_data = load_dataset(cfg.data.eval, trainer.tokenizer, cfg.model.task, cfg.model.max_length,
                                 cfg.model.num_labels)
        trainer.eval_data = eval_data
    return data, eval_data


def _agent_loop(cfg: Any, trainer: Any, data: Any, eval_data: Any, privacy: Any, progress: bool) -> Any:
    """The agent loop of the process that talks to the coordinator (the only one that opens a channel)."""
    from ..agent.basemodel import federation_fingerprint
    from ..agent.loop import AgentLoop, hello_request
    from ..agent.transport import Transport, channel

    log.info("opening the coordinator channel to %s", cfg.coordinator.address)
    chan = channel(cfg.coordinator.address, cfg.tls.ca.read_bytes(), cfg.tls.cert.read_bytes(), cfg.tls.key.read_bytes(),
                   cfg.coordinator.server_name)
    from ..agent.connection_diagnosis import diagnose

    def _diagnose() -> Any:
        return diagnose(cfg.coordinator.address, cfg.tls.ca, cfg.tls.cert, cfg.tls.key, cfg.coordinator.server_name,
                        role="site")

    transport = Transport(chan, max_backoff=cfg.coordinator.max_backoff, diagnose=_diagnose,
                          max_failed_handshakes=cfg.coordinator.max_failed_handshakes)
    fp = federation_fingerprint(cfg.model.dir, cfg.model.task, cfg.model.num_labels, cfg.model.head_seed)
    hello = hello_request(trainer, fp, data.n, cfg.model.rank, cfg.model.alpha, cfg.model.task,
                          __version__)
    from ..agent.secure_sum import SecureSumClient
    from ..secure_agg import ClientPolicy

    policy = ClientPolicy(min_sites=cfg.privacy.min_secure_sum_sites,
                          min_threshold_fraction=cfg.privacy.min_threshold_fraction)
    secure = SecureSumClient(cfg.tls.ca.read_bytes(), cfg.tls.cert.read_bytes(), cfg.tls.key.read_bytes(), policy)
    loop = AgentLoop(transport, trainer, data, hello, cfg.model.alpha, cfg.state_dir, eval_data=eval_data,
                     privacy=privacy, secure_sum=secure, progress=progress, keep_submissions=cfg.keep_submissions)
    loop.privacy_floor = cfg.privacy
    return loop


# ---- several processes per site (issue 16): torchrun / accelerate launch ---------------------------------


def _ranks(cfg: Any) -> Any:
    from ..agent.distributed import Ranks, refuse_dp

    ranks = Ranks.from_env()
    refuse_dp(ranks, cfg.dp)
    return ranks


def _build_distributed(cfg: Any, ranks: Any, progress: bool) -> Any:
    """Rank 0: the agent loop with a ``LeaderTrainer``; other ranks: a ``Follower`` (no coordinator channel)."""
    from ..agent.ddp_trainer import DDPLoraTrainer
    from ..agent.distributed import Follower, Leader, LeaderTrainer, Role, join

    backend = join(ranks)
    log.info("rank %d of %d (local rank %d, %s)", ranks.rank, ranks.world, ranks.local_rank, backend)
    trainer = DDPLoraTrainer(cfg.model.dir, cfg.model.task, cfg.model.target_modules, device=cfg.model.device,
                             seed=cfg.seed, quantization=cfg.model.quantization)
    data, eval_data = _local_data(cfg, trainer)  # every rank: evaluation is sharded too
    if ranks.role is Role.FOLLOWER:
        return Follower(trainer, data)
    leader = LeaderTrainer(trainer)
    return Leader(_agent_loop(cfg, leader, data, eval_data, None, progress), leader)


EXIT_CANNOT_CONNECT = 3
"""Exit code of ``agent run`` when the coordinator refuses this site or the TLS identities do not fit."""


def _run(args: argparse.Namespace) -> int:
    import grpc

    from ..agent.connection_diagnosis import ConnectionProblem

    from ..agent.config import load_agent_config
    from .preflight import PreflightError, check_tls

    cfg = load_agent_config(args.config)
    _ranks(cfg)  # a configuration no process can run (DP-SGD under several processes) is refused first
    try:
        check_tls(cfg.tls.ca, cfg.tls.cert, cfg.tls.key, "site")
    except PreflightError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_CANNOT_CONNECT
    loop = build_loop(args.config, progress=not args.no_progress)
    try:
        return int(loop.run())
    except ConnectionProblem as exc:
        log.error("giving up: %s", exc)
        return EXIT_CANNOT_CONNECT
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                          grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
            log.error("the coordinator refused this site: %s", exc.details())
            return EXIT_CANNOT_CONNECT
        raise


def _check(args: argparse.Namespace) -> int:
    from ..agent.config import load_agent_config
    from .preflight import agent_checks

    cfg = load_agent_config(args.config)
    print(f"config {args.config}: valid")
    for line in agent_checks(cfg, connect=args.connect):
        print(line)
    print("ok: `fedquilt agent run` would start")
    return 0
