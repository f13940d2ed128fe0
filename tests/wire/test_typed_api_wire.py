"""A client written from the .proto files alone reads a round's spec and the federation's status over mutual TLS.

The .proto files are compiled afresh with protoc into a temporary folder, and a separate Python process
(``python -E -s``: no PYTHONPATH, no user site) imports only grpc and those generated modules; it asserts at its end that
no fedquilt module was loaded. It enrols as a site, long-polls its TRAIN task and prints the RoundSpec; then,
with the admin certificate, it prints Admin.Status and Admin.ListSites. Every value is compared with what the
coordinator holds, so a field that went back to JSON text, lost its type or its Timestamp fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import fedquilt.proto as proto_pkg

CLIENT = r'''
import json, sys, time
import grpc
import federation_pb2 as pb, federation_pb2_grpc as pb_grpc, tensors_pb2 as tpb

address, ca, site_cert, site_key, admin_cert, admin_key, fingerprint, shapes = sys.argv[1:9]
shapes = json.loads(shapes)


def stub(kind, cert, key):
    creds = grpc.ssl_channel_credentials(open(ca, "rb").read(), open(key, "rb").read(), open(cert, "rb").read())
    channel = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    return kind(channel)


fed = stub(pb_grpc.FederationStub, site_cert, site_key)
hello = fed.Hello(pb.HelloRequest(agent_version="proto-only", base_fingerprint=fingerprint, num_samples=10,
                                  lora_rank=2, lora_alpha=4.0, task="causal-lm",
                                  target_shapes={k: tpb.Shape(dims=v) for k, v in shapes.items()}), timeout=10)
after, deadline = hello.last_step, time.time() + 20
while True:
    task = fed.WaitForTask(pb.WaitRequest(after_step=after, wait_seconds=1.0), timeout=10)
    if task.kind == pb.TRAIN:
        break
    assert time.time() < deadline, "no TRAIN task"
spec = task.spec
train = spec.train
out = {"spec": {
    "round_id": spec.round_id, "round": spec.round, "rule": spec.rule, "nonce": spec.nonce.hex(),
    "ranks": dict(spec.ranks), "shapes": {k: list(v.dims) for k, v in spec.shapes.items()},
    "weights": dict(spec.weights), "global_version": spec.global_version,
    "params": {k: [v.WhichOneof("value"), getattr(v, v.WhichOneof("value"))] for k, v in spec.params.items()},
    "train": {f.name: v for f, v in train.ListFields()},
    "has_secagg": spec.HasField("secagg"), "weight_scale": spec.secagg.weight_scale,
    "min_contributors": spec.secagg.min_contributors,
}}

admin = stub(pb_grpc.AdminStub, admin_cert, admin_key)
status = admin.Status(pb.StatusRequest(), timeout=10).status
rnd = status.current_round
out["status"] = {
    "generated_at": status.generated_at.ToNanoseconds() / 1e9, "federation": status.federation,
    "model": status.model, "rule": status.rule, "state": pb.FederationState.Name(status.state),
    "secure_aggregation": status.secure_aggregation, "rounds_done": status.rounds_done,
    "rounds_planned": status.rounds_planned, "round_id": rnd.round_id, "stage": pb.RoundStage.Name(rnd.stage),
    "cohort": list(rnd.cohort), "deadline": rnd.deadline.ToNanoseconds() / 1e9,
    "progress": {s: pb.SiteProgress.Name(p) for s, p in rnd.progress.items()},
    "sites": {s.site_id: [s.online, s.num_samples, s.lora_rank, s.last_seen_at.ToNanoseconds() / 1e9]
              for s in status.sites},
}
listed = admin.ListSites(pb.ListSitesRequest(), timeout=10).sites
out["listed"] = {s.site_id: s.last_seen_at.ToNanoseconds() / 1e9 for s in listed}
assert not [m for m in sys.modules if m.startswith("fedquilt")], "the client must not use fedquilt"
print(json.dumps(out))
'''


def _compile_protos(out: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    src = out / "proto"
    src.mkdir(parents=True)
    for path in Path(proto_pkg.__file__).parent.glob("*.proto"):
        shutil.copy(path, src / path.name)
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{src}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
            *sorted(str(p) for p in src.glob("*.proto"))]
    assert protoc.main(args) == 0


def test_a_proto_only_client_reads_the_round_spec_and_the_status(coordinator, tmp_path: Path) -> None:
    from tests.wire.conftest import SHAPES

    w: Any = coordinator(secagg=True)
    gen = tmp_path / "gen"
    _compile_protos(gen)
    (gen / "client.py").write_text(CLIENT)
    w.hello("site-1")
    site_cert, site_key = w.cert("site-0")
    started = time.time()
    run = subprocess.run(
        [sys.executable, "-E", "-s", str(gen / "client.py"), w.address, str(w.files.ca_dir / "ca.pem"), str(site_cert),
         str(site_key), str(w.files.admin_cert), str(w.files.admin_key), w.fingerprint,
         json.dumps({k: list(v) for k, v in SHAPES.items()})],
        cwd=gen, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])

    orch = w.running.orchestrator
    spec, fed = orch.current.spec, orch.fed
    assert got["spec"]["round_id"] == spec.round_id and got["spec"]["round"] == 1
    assert got["spec"]["rule"] == fed.rule and got["spec"]["nonce"] == spec.nonce and len(spec.nonce) == 32
    assert got["spec"]["ranks"] == {"site-0": 2, "site-1": 2}
    assert got["spec"]["weights"] == {"site-0": 10, "site-1": 10} == spec.weights
    assert got["spec"]["shapes"] == {k: list(v) for k, v in SHAPES.items()}
    assert got["spec"]["train"] == {k: v for k, v in fed.train.items()}  # the operator's [federation] train, typed
    assert got["spec"]["has_secagg"] and got["spec"]["weight_scale"] == pytest.approx(spec.secagg["weight_scale"])
    assert got["spec"]["min_contributors"] == spec.secagg["min_contributors"] >= 2
    assert got["spec"]["params"] == {k: [_kind(v), v] for k, v in fed.rule_params.items()}

    status = got["status"]
    assert (status["federation"], status["model"], status["rule"]) == (fed.name, fed.model, fed.rule)
    assert status["state"] == "FEDERATION_STATE_RUNNING" and status["secure_aggregation"] is True
    assert (status["rounds_done"], status["rounds_planned"]) == (0, fed.rounds)
    assert status["round_id"] == spec.round_id and status["stage"] == "ROUND_STAGE_TRAINING"
    assert status["cohort"] == ["site-0", "site-1"]
    assert status["progress"] == {"site-0": "SITE_PROGRESS_TRAINING", "site-1": "SITE_PROGRESS_TRAINING"}
    assert started - 5 <= status["generated_at"] <= time.time() + 1
    assert status["deadline"] == pytest.approx(status["generated_at"] + fed.train_timeout, abs=5)
    for site in ("site-0", "site-1"):
        online, n, rank, seen = status["sites"][site]
        assert (online, n, rank) == (True, 10, 2)
        assert started - 5 <= seen <= status["generated_at"] + 0.5  # a wall-clock time, not "12.5s ago"
        assert started - 5 <= got["listed"][site] <= time.time() + 1


def _kind(value: Any) -> str:
    return {bool: "flag", int: "integer", float: "number", str: "text"}[type(value)]
