"""Pulls count in ``fedquilt_sent_bytes_total`` (they are most of what a coordinator serves to consumers)."""

from __future__ import annotations

from typing import Any

from fedquilt.proto import federation_pb2 as pb


def _sent(wire: Any) -> float:
    text = wire.running.metrics.exposition().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("fedquilt_sent_bytes_total ")))


def test_a_pull_adds_the_bytes_it_streamed(coordinator: Any) -> None:
    wire = coordinator()
    wire.publish_one_round()
    before = _sent(wire)
    chunks = list(wire.models("admin").Pull(pb.PullRequest(model=wire.files.model, version="latest"), timeout=30))
    streamed = sum(len(c.data) for c in chunks)
    assert streamed > 0
    assert _sent(wire) - before == streamed
