"""`fedquilt admin stop` interrupts local training within seconds; a finished federation says "finished" everywhere."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from typing import Any

import pytest

from fedquilt.cli.main import main


def _admin(fed: Any, *action: str) -> list[str]:
    return ["admin", "--coordinator", fed.address, "--server-name", "localhost", "--ca",
            str(fed.files.ca_dir / "ca.pem"), "--cert", str(fed.files.admin_cert), "--key", str(fed.files.admin_key),
            *action]


class _Lines(logging.Handler):
    """Every fedquilt log line (the CLI's logging setup stops propagation to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, words: str) -> int:
        return sum(words in line for line in list(self.lines))


@pytest.fixture
def logs() -> Any:
    handler, logger = _Lines(), logging.getLogger("fedquilt")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def _wait(what: str, check: Any, within: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise TimeoutError(f"{what} not within {within}s")
        time.sleep(0.1)
    return time.monotonic() - started


def test_admin_stop_interrupts_local_training(federation: Any, logs: Any) -> None:
    fed = federation(sites=2, rule="fedit", secagg=False, rounds=1, timeouts=(600.0, 60.0),
                     train={"local_steps": 100000, "batch_size": 8, "lr": 3e-3})
    fed.start_agents()

    def training() -> bool:
        return logs.count("training (rule fedit") >= 2

    _wait("both sites training", training, within=120.0)
    time.sleep(1.0)
    assert main(_admin(fed, "stop")) == 0
    took = _wait("training stopped at both sites",
                 lambda: logs.count("local training stopped") >= 2, within=15.0)
    assert took < 10.0
    assert all(loop.rounds_trained == 0 and loop.work is None for loop in fed.loops)
    status = fed.running.orchestrator.status()
    assert status["state"] == "paused" and status["history"][-1]["discarded"] == "federation paused by the operator"


def test_finished_federation_says_finished(federation: Any, logs: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fed = federation(sites=2, rule="fedit", secagg=False, rounds=1,
                     train={"local_steps": 2, "batch_size": 8, "lr": 3e-3, "eval_batches": 1})
    fed.start_agents()
    fed.wait_rounds()
    assert fed.running.orchestrator.status()["state"] == "finished"
    _wait("final log line", lambda: logs.count("federation demo finished: 1 of 1 rounds published") == 1, within=10.0)
    capsys.readouterr()
    assert main(_admin(fed, "status")) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "finished"
    assert main(["status", "--coordinator", fed.address, "--server-name", "localhost", "--ca",
                 str(fed.files.ca_dir / "ca.pem"), "--cert", str(fed.files.admin_cert), "--key",
                 str(fed.files.admin_key)]) == 0
    assert ": finished, round 1 of 1 done" in capsys.readouterr().out
    base = f"http://127.0.0.1:{fed.running.http_port}"
    page = urllib.request.urlopen(f"{base}/status", timeout=10).read().decode()
    assert "finished" in page and ">running<" not in page
    metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    assert "fedquilt_finished 1.0" in metrics and 'fedquilt_federation_state{state="finished"} 1.0' in metrics
    assert 'fedquilt_stage_seconds_count{stage="training"} 1.0' in metrics
    assert 'fedquilt_stage_seconds_count{stage="phase0"} 1.0' in metrics
    assert "fedquilt_build_info{version=" in metrics and "fedquilt_site_last_seen_seconds{site=" in metrics
    last = [line for line in metrics.splitlines() if line.startswith("fedquilt_last_publish_timestamp_seconds ")]
    assert last and abs(float(last[0].split()[1]) - time.time()) < 300
    sites = fed.running.orchestrator.status()["sites"]
    manifest = fed.running.store.manifest(fed.files.model, "v0001")
    assert manifest["samples"] == sum(s["num_samples"] for s in sites) and manifest["samples"] > 2
    entry = fed.running.orchestrator.status()["history"][-1]
    assert entry["round_id"].startswith("r0001-") and entry["published_at"] and "epsilon" in entry
