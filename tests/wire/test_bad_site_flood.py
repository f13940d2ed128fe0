"""One site cannot stall the coordinator: stalled streams, long-poll floods, malformed bytes, a 1 GiB upload."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from fedquilt.coordinator import server
from fedquilt.coordinator.config import load_config
from fedquilt.proto import federation_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _raw(w: Any, who: str, method: str, stream: str = "unary_unary") -> Any:
    """A call that sends raw bytes (no client-side serialisation)."""
    return getattr(w.channel(who), stream)(method, request_serializer=None, response_deserializer=None)


def _stalled(release: threading.Event) -> Iterator[pb.UploadChunk]:
    release.wait(60)  # sends nothing until the test ends
    return
    yield  # pragma: no cover  (makes this a generator)


def test_stalled_uploads_and_a_long_poll_flood_leave_an_honest_hello_answered_within_a_second(coordinator) -> None:
    w = coordinator(long_poll_seconds=30.0, max_calls_per_peer=512)  # the per-peer limit is tested on its own
    w.hello("site-1")
    release = threading.Event()
    calls: list[Any] = []
    try:
        for _ in range(64):
            calls.append(w.fed("site-2").Upload.future(_stalled(release), timeout=30))
        for _ in range(200):
            calls.append(w.fed("site-1").WaitForTask.future(pb.WaitRequest(after_step=2**62, wait_seconds=30),
                                                           timeout=30))
        time.sleep(1.0)  # let every call reach the server
        started = time.monotonic()
        reply = w.fed("site-0").Hello(w.hello_request(), timeout=5)
        took = time.monotonic() - started
        assert reply.site_id == "site-0"
        assert took < 1.0, f"an honest Hello took {took:.2f}s behind 64 stalled uploads and 200 long polls"
        assert not any(c.done() for c in calls[64:])  # the long polls are still waiting: they hold no thread
    finally:
        release.set()
        for c in calls:
            c.cancel()


def test_calls_over_the_per_peer_limit_are_resource_exhausted_and_others_are_served(coordinator) -> None:
    w = coordinator(long_poll_seconds=30.0, max_calls_per_peer=4)
    w.hello("site-1")
    polls = [w.fed("site-1").WaitForTask.future(pb.WaitRequest(after_step=2**62, wait_seconds=30), timeout=30)
             for _ in range(6)]
    try:
        time.sleep(0.5)
        codes = sorted(p.exception().code().name for p in polls if p.done())
        assert codes == ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"], codes
        assert w.hello("site-0").site_id == "site-0"
    finally:
        for p in polls:
            p.cancel()


def test_a_second_upload_stream_from_the_same_site_is_refused(coordinator) -> None:
    w = coordinator()
    release = threading.Event()
    first = w.fed("site-0").Upload.future(_stalled(release), timeout=30)
    try:
        time.sleep(0.3)
        assert w.refused(lambda: w.fed("site-0").Upload(iter([]), timeout=5)) is EXHAUSTED
    finally:
        release.set()
        first.cancel()


def test_an_upload_that_sends_nothing_is_cut_at_the_idle_deadline(coordinator) -> None:
    w = coordinator(upload_idle_seconds=0.3)
    release = threading.Event()
    started = time.monotonic()
    try:
        assert w.refused(lambda: w.fed("site-0").Upload(_stalled(release), timeout=20)) is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("method", ["/fedquilt.v1.Federation/Hello", "/fedquilt.v1.Federation/Submit",
                                    "/fedquilt.v1.Models/Pull", "/fedquilt.v1.Admin/Status"])
def test_malformed_protobuf_is_invalid_argument_with_one_log_line(coordinator, caplog: pytest.LogCaptureFixture,
                                                                  method: str) -> None:
    w = coordinator()
    stream = "unary_stream" if method.endswith("Pull") else "unary_unary"
    call = _raw(w, "site-0", method, stream)
    before = w.snapshot()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for _ in range(50):
            assert w.refused(lambda: call(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)) is INVALID
    assert w.snapshot() == before
    lines = [r for r in caplog.records if r.name.startswith(("fedquilt.coordinator", "grpc"))]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in lines)


@pytest.mark.parametrize("version, code", [("tags", grpc.StatusCode.NOT_FOUND), ("../tags", INVALID),
                                           ("v0001.json", grpc.StatusCode.NOT_FOUND), ("", None)])
def test_pull_of_reserved_or_odd_version_names_is_refused_precisely(coordinator, version: str,
                                                                    code: grpc.StatusCode | None) -> None:
    w = coordinator()
    w.publish_one_round()
    pull = lambda: list(w.models("site-0").Pull(pb.PullRequest(model=w.files.model, version=version), timeout=5))  # noqa: E731
    if code is None:
        assert {c.path for c in pull()} >= {"manifest.json"}
    else:
        assert w.refused(pull) is code


def test_a_second_coordinator_on_the_same_port_fails_with_address_in_use(coordinator, tmp_path: Path) -> None:
    w = coordinator()
    cfg = load_config(w.files.coordinator_config)
    other = cfg.model_copy(update={"state_dir": tmp_path / "other-state",
                                   "server": cfg.server.model_copy(update={"listen": f"127.0.0.1:{w.running.port}",
                                                                           "metrics_listen": None})})
    with pytest.raises(OSError, match="address already in use"):  # AddressInUse
        server.start(other)
    assert w.hello("site-0").site_id == "site-0"  # the first one still serves


class _Remote:
    """The coordinator in its own process, as far as ``Wire`` needs it."""

    def __init__(self, port: int) -> None:
        self.port = port

    def stop(self, grace: float = 0.0) -> None:
        """The test terminates the process itself."""


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_never_enrolled_site_streaming_1_gib_does_not_grow_coordinator_memory(coordinator, tmp_path: Path) -> None:
    w = coordinator()  # only for its files: the coordinator under test runs in its own process
    w.running.stop(grace=0.1)
    cfg = w.files.coordinator_config
    text = cfg.read_text().replace("max_upload_bytes = 8192", f"max_upload_bytes = {2 * 1024**3}")
    cfg.write_text(text)
    (w.files.coordinator_config.parent / "state" / "coordinator.port").unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "fedquilt.cli.main", "coordinator", "serve", "--config", str(cfg)],
                            stdout=(tmp_path / "coord.log").open("wb"), stderr=subprocess.STDOUT, env=env)
    try:
        port_file = load_config(cfg).state_dir / "coordinator.port"
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "coord.log").read_text()
            time.sleep(0.1)
        w.running = _Remote(int(port_file.read_text()))  # type: ignore[assignment]
        w._channels.clear()
        time.sleep(1.0)
        idle = _rss_mib(proc.pid)
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(_rss_mib(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        block = b"\0" * (128 * 1024)
        total = 1024**3

        def body() -> Iterator[pb.UploadChunk]:
            yield pb.UploadChunk(header=pb.UploadHeader(round_id="r0001-x", step=1, total_bytes=total))
            for _ in range(total // len(block)):
                yield pb.UploadChunk(data=block)

        with pytest.raises(grpc.RpcError) as err:
            w.fed("site-2").Upload(body(), timeout=120)
        time.sleep(0.5)
        done.set()
        sampler.join()
        assert max(peak) - idle < 100, f"coordinator RSS went from {idle:.0f} MiB to {max(peak):.0f} MiB"
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_calls_over_the_global_cap_are_resource_exhausted(coordinator) -> None:
    w = coordinator(long_poll_seconds=30.0, maximum_concurrent_rpcs=8, max_calls_per_peer=64)
    w.hello("site-1")
    polls = [w.fed("site-1").WaitForTask.future(pb.WaitRequest(after_step=2**62, wait_seconds=30), timeout=30)
             for _ in range(10)]
    try:
        time.sleep(0.5)
        codes = sorted(p.exception().code().name for p in polls if p.done())
        assert codes == ["RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"], codes
    finally:
        for p in polls:
            p.cancel()
    time.sleep(0.3)
    assert w.hello("site-0").site_id == "site-0"  # once the polls are gone, calls are served again
