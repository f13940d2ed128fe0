"""`versions`, `status`, `admin` over real mTLS: plain answers and plain errors, no gRPC dumps."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from fedquilt.cli.main import main
from test_pull_folder import _published


def _conn(w: Any, who: str = "admin") -> list[str]:
    cert, key = w.cert(who)
    return ["--coordinator", w.address, "--server-name", "localhost", "--ca", str(w.files.ca_dir / "ca.pem"),
            "--cert", str(cert), "--key", str(key)]


def test_versions_of_a_model(coordinator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    w = _published(coordinator, rounds=2)
    assert main(["versions", w.files.model, *_conn(w, "site-1")]) == 0
    out = capsys.readouterr().out
    assert f"{w.files.model}:v0001" in out and f"{w.files.model}:v0002" in out and "latest" in out
    assert "PUBLISHED" in out


def test_versions_without_model_lists_the_federations_models(coordinator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    w = _published(coordinator)
    assert main(["versions", *_conn(w)]) == 0
    out = capsys.readouterr().out
    assert f"models: {w.files.model}" in out and f"{w.files.model}:v0001" in out
    assert main(["versions", *_conn(w, "site-0")]) == 1  # a site may not ask the federation's status
    err = capsys.readouterr().err
    assert "needs an admin certificate" in err and "refused" in err and "_InactiveRpcError" not in err


def test_unknown_model_says_so(coordinator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    w = _published(coordinator)
    assert main(["versions", "demo-adaptr", *_conn(w)]) == 0
    assert "no published versions of model 'demo-adaptr'" in capsys.readouterr().out


def test_status_is_readable(coordinator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    w = coordinator()
    w.hello("site-0")
    assert main(["status", *_conn(w)]) == 0
    out = capsys.readouterr().out
    assert f"federation demo (fedit, model {w.files.model}): running, round 0 of 1 done" in out
    assert "sites: 1 of 1 online" in out and "site-0" in out


def test_admin_errors_are_plain(coordinator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    w = coordinator()
    assert main(["admin", *_conn(w, "site-0"), "status"]) == 1
    err = capsys.readouterr().err
    assert "fedquilt: error: admin status: the coordinator at" in err and "'site-0' has role 'site'" in err
    assert "_InactiveRpcError" not in err and "debug_error_string" not in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    args = _conn(w)
    args[1] = f"127.0.0.1:{free}"
    assert main(["admin", *args, "stop"]) == 1
    err = capsys.readouterr().err
    assert f"nothing is listening at 127.0.0.1:{free}" in err and "_InactiveRpcError" not in err


def test_status_shows_per_site_progress_and_secure_sum_step(coordinator: Any) -> None:
    w = coordinator(secagg=True)
    trained = w.open_round()
    rnd = w.running.orchestrator.status()["current_round"]
    assert rnd["progress"] == {"site-0": "training", "site-1": "training"} and rnd["deadline_utc"]
    w.train_done("site-0", trained["site-0"])
    assert w.running.orchestrator.status()["current_round"]["progress"]["site-0"] == "trained"
    from fedquilt.proto import federation_pb2 as pb

    w.next_stage(trained, pb.DECLARE_LAYOUT)
    rnd = w.running.orchestrator.status()["current_round"]
    assert rnd["stage"] == "phase" and rnd["secure_sum_step"] == "declare_layout"
    assert rnd["progress"] == {"site-0": "waiting", "site-1": "waiting"}


def test_admin_status_prints_what_the_coordinator_holds_in_the_layout_of_status_json(
        coordinator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """The typed reply decodes back to /status.json's layout, value for value (times to the tenth of a second)."""
    import json

    w = coordinator()
    w.publish_one_round()
    assert main(["admin", *_conn(w), "status"]) == 0
    printed = json.loads(capsys.readouterr().out)
    held = json.loads(json.dumps(w.running.orchestrator.status()))
    for got, want in zip(printed["sites"], held["sites"]):
        assert abs(got.pop("last_seen_seconds_ago") - want.pop("last_seen_seconds_ago")) < 2.0
    assert printed == held
    assert printed["history"][0]["version"] == "v0001" and printed["history"][0]["published_at"]


def test_admin_sites_prints_when_each_site_was_last_seen(coordinator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import calendar
    import re
    import time

    w = coordinator()
    w.hello("site-0")
    assert main(["admin", *_conn(w), "sites"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("site-0"))
    found = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \((\d+)s ago\)$", line)
    assert found, line
    seen = calendar.timegm(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S"))
    assert abs(seen - time.time()) < 10 and int(found.group(2)) <= 5


def test_versions_prints_the_publish_time_and_epsilon(coordinator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    w = _published(coordinator)
    assert main(["versions", w.files.model, *_conn(w, "site-1")]) == 0
    out = capsys.readouterr().out
    row = next(x for x in out.splitlines() if x.startswith(f"{w.files.model}:v0001"))
    assert "EPSILON" in out and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\s+-\s+latest$", row), row


def test_a_dp_version_lists_its_largest_epsilon_and_round_id(coordinator: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from fedquilt.coordinator.publish import publish
    from fedquilt.proto import federation_pb2 as pb
    from fedquilt.strategies.base import Aggregate
    from fedquilt.strategies.lora import LoraFactors
    from test_pull_folder import MODULE

    w = coordinator()
    coord_dir = w.files.root / "coordinator"
    key, cert = (coord_dir / "coordinator.key").read_bytes(), (coord_dir / "coordinator.pem").read_bytes()
    agg = Aggregate(adapter={MODULE: LoraFactors(A=torch.ones(2, 16), B=torch.ones(16, 2), scaling=2.0)})
    facts = {"base_fingerprint": w.fingerprint, "rule": "fedit", "contributors": 2, "cohort": 2, "dropouts": 0,
             "round_id": "r0001-deadbeef", "privacy": {"site-0": {"epsilon": 1.5, "delta": 1e-5},
                                                       "site-1": {"epsilon": 2.75, "delta": 1e-5}}}
    publish(w.running.store, w.files.model, 1, agg, "causal-lm", key, cert, facts)
    (info,) = w.models("site-0").ListVersions(pb.ListVersionsRequest(model=w.files.model), timeout=5).versions
    assert info.HasField("epsilon") and info.epsilon == 2.75 and info.round_id == "r0001-deadbeef"
    assert info.HasField("published_at") and info.published_at.seconds > 1_700_000_000
    assert main(["versions", w.files.model, *_conn(w, "site-1")]) == 0
    assert "2.75" in capsys.readouterr().out
