"""A federated round over real mutual-TLS gRPC, and the connections that must be refused."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import torch
from peft import PeftModel

from fedquilt.agent.basemodel import load_base
from fedquilt.agent.pull import pull
from fedquilt.agent.transport import channel
from fedquilt.coordinator.pki import Role, init_ca, issue
from fedquilt.proto import federation_pb2 as pb
from fedquilt.proto import federation_pb2_grpc as pb_grpc
from fedquilt.strategies.adapters import load_peft


def _hello_with(address: str, ca: bytes, cert: bytes | None, key: bytes | None) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    chan = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    try:
        pb_grpc.FederationStub(chan).Hello(pb.HelloRequest(), timeout=5)
    finally:
        chan.close()


def test_client_without_certificate_is_refused(federation) -> None:
    fed = federation(sites=2, secagg=False)
    ca = (fed.files.ca_dir / "ca.pem").read_bytes()
    with pytest.raises(grpc.RpcError) as err:
        _hello_with(fed.address, ca, None, None)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE  # the TLS handshake itself fails


def test_certificate_from_another_ca_is_refused(federation, tmp_path: Path) -> None:
    fed = federation(sites=2, secagg=False)
    init_ca(tmp_path / "rogue-ca")
    rogue = issue(tmp_path / "rogue-ca", tmp_path / "rogue", "site-0", Role.SITE)
    ca = (fed.files.ca_dir / "ca.pem").read_bytes()
    with pytest.raises(grpc.RpcError) as err:
        _hello_with(fed.address, ca, rogue.cert.read_bytes(), rogue.key.read_bytes())
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_admin_rpc_refused_to_a_site_certificate(federation) -> None:
    fed = federation(sites=2, secagg=False)
    site_dir = fed.files.agent_configs[0].parent
    chan = channel(fed.address, (fed.files.ca_dir / "ca.pem").read_bytes(), (site_dir / "site-0.pem").read_bytes(),
                   (site_dir / "site-0.key").read_bytes(), "localhost")
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.AdminStub(chan).Status(pb.StatusRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_full_fedit_round_publishes_an_adapter_peft_loads_exactly(federation, tmp_path: Path) -> None:
    fed = federation(sites=2, secagg=False, rounds=2)
    fed.start_agents()
    history = fed.wait_rounds()
    assert [h["version"] for h in history] == ["v0001", "v0002"]
    assert all(h["contributors"] == 2 for h in history)

    ca = (fed.files.ca_dir / "ca.pem").read_bytes()
    chan = channel(fed.address, ca, fed.files.admin_cert.read_bytes(), fed.files.admin_key.read_bytes(), "localhost")
    manifest = pull(chan, fed.files.model, "latest", tmp_path / "pulled", ca)
    assert manifest["version"] == "v0002" and manifest["rule"] == "fedit" and manifest["contributors"] == 2
    assert json.loads((tmp_path / "pulled" / "manifest.json").read_text())["signature"]["alg"] == "ecdsa-p256-sha256"

    # PEFT's output equals the base model with ΔW = s·B·A merged by hand.
    base, tok = load_base(fed.ws.model_dir, "causal-lm", device="cpu")
    manual, _ = load_base(fed.ws.model_dir, "causal-lm", device="cpu")
    ids = tok(["a sentence to score"], return_tensors="pt")["input_ids"]
    adapter = load_peft(tmp_path / "pulled")
    modules = dict(manual.named_modules())
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits.clone()
        for name, f in adapter.items():
            modules[name].weight += f.delta().to(torch.float32)
        expected = manual(input_ids=ids).logits
        got = PeftModel.from_pretrained(base, str(tmp_path / "pulled")).eval()(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - base_logits).abs().max() > 1e-3  # the federation changed the model


def test_operator_and_consumer_commands(federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedquilt admin status|sites|stop`, `fedquilt pull` and `fedquilt merge` against a live federation."""
    from fedquilt.agent.basemodel import fingerprint
    from fedquilt.cli.main import main

    fed = federation(sites=2, secagg=True, rounds=1)
    fed.start_agents()
    fed.wait_rounds()
    creds = ["--coordinator", fed.address, "--ca", str(fed.files.ca_dir / "ca.pem"), "--cert", str(fed.files.admin_cert),
             "--key", str(fed.files.admin_key)]
    assert main(["admin", *creds, "--server-name", "localhost", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["rounds_done"] == 1 and status["history"][0]["version"] == "v0001"
    assert main(["admin", *creds, "--server-name", "localhost", "sites"]) == 0
    assert "site-0" in capsys.readouterr().out
    assert main(["admin", *creds, "--server-name", "localhost", "stop"]) == 0
    assert "paused" in capsys.readouterr().out and not fed.running.orchestrator.running

    assert main(["pull", f"{fed.files.model}:v0001", "--out", str(tmp_path / "adapter"), *creds]) == 0
    assert main(["merge", "--base", str(fed.ws.model_dir), "--adapter", str(tmp_path / "adapter"),
                 "--out", str(tmp_path / "merged")]) == 0
    assert main(["fingerprint", str(tmp_path / "merged")]) == 0
    assert capsys.readouterr().out.strip().endswith(fingerprint(tmp_path / "merged"))
    base, tok = load_base(fed.ws.model_dir, "causal-lm", device="cpu")
    merged, _ = load_base(tmp_path / "merged", "causal-lm", device="cpu")
    ids = tok(["merged weights serve without peft"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        via_peft = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()(input_ids=ids).logits
        via_merge = merged(input_ids=ids).logits
    assert torch.allclose(via_peft, via_merge, atol=1e-5)


def test_second_coordinator_on_the_same_state_dir_is_refused(federation) -> None:
    from fedquilt.coordinator import server
    from fedquilt.coordinator.config import load_config
    from fedquilt.coordinator.lock import StateDirInUse

    fed = federation(sites=2, secagg=False)
    with pytest.raises(StateDirInUse, match="another coordinator"):
        server.start(load_config(fed.files.coordinator_config))
    assert fed.running.orchestrator.status()["running"]  # the first one is untouched


def test_clipped_values_are_counted_not_silent(federation) -> None:
    """A declared clip range far below the values: sites report how many they clipped; metrics show it.

    The clip range here also clips the sample counts, so the summed count no longer matches the assigned
    ones and the round is discarded with that reason instead of publishing factors divided by a tiny count.
    """
    import time

    fed = federation(sites=2, secagg=True, rounds=1, secagg_options={"clip": 1e-4})
    fed.start_agents()
    deadline = time.monotonic() + 240
    while not (history := fed.running.orchestrator.status()["history"]):
        assert time.monotonic() < deadline, "no round finished"
        time.sleep(0.2)
    assert history[0]["version"] is None and "summed sample count" in history[0]["discarded"], history[0]
    text = fed.running.metrics.exposition().decode()
    counted = [line for line in text.splitlines() if line.startswith("fedquilt_clipped_values_total ")]
    assert counted and float(counted[0].split()[-1]) > 0, counted
