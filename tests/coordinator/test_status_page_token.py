"""With a bearer token configured, the status page and /metrics refuse anyone without it; /healthz stays open."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

from fedquilt.coordinator.metrics import Metrics
from fedquilt.coordinator.status_page import start_http

STATUS = {"federation": "f", "model": "m", "rule": "fedit", "running": True, "rounds_done": 0, "rounds_planned": 1,
          "global_version": None, "current_round": None, "sites": [{"site": "hospital-a", "online": True,
                                                                     "num_samples": 10, "rank": 4}], "history": []}


def _get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def page() -> Any:
    metrics = Metrics()
    metrics.bind(lambda: STATUS)
    server, port = start_http("127.0.0.1:0", metrics, lambda: STATUS, token="s3cret-token")
    yield port
    server.stop()


@pytest.mark.parametrize("path", ["/status", "/status.json", "/metrics", "/"])
@pytest.mark.parametrize("token", [None, "wrong", "s3cret-token-and-more", ""])
def test_without_the_token_nothing_is_shown(page: int, path: str, token: str | None) -> None:
    code, body = _get(page, path, token)
    assert code == 401 and b"hospital-a" not in body


@pytest.mark.parametrize("path", ["/status", "/status.json", "/metrics"])
def test_with_the_token_the_page_is_served(page: int, path: str) -> None:
    code, body = _get(page, path, "s3cret-token")
    assert code == 200 and body


def test_healthz_needs_no_token_for_the_probes(page: int) -> None:
    assert _get(page, "/healthz") == (200, b"ok")
