"""The read-only HTTP side: /metrics, /status, /status.json, /healthz, escaping, 405 for writes."""

from __future__ import annotations

import html
import json
import re
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedquilt.coordinator.metrics import Metrics
from fedquilt.coordinator.status_page import StatusServer, parse_listen, render_html, render_plot, start_http

HOSTILE = '<script>alert("x")</script>&"><img src=x onerror=alert(1)>'


def fake_status() -> dict[str, Any]:
    """What ``Orchestrator.status()`` returns after three published rounds, a fourth in flight."""
    history = [
        {"round": r, "version": f"v{r:04d}", "contributors": 3, "dropouts": 0, "seconds": 10.0 + r,
         "loss_before": lb, "loss_after": la, "eval_loss": ev}
        for r, lb, la, ev in [(1, 2.4, 1.9, 2.0), (2, 1.9, 1.5, 1.7), (3, 1.5, 1.2, 1.4)]
    ]
    return {
        "federation": "clinics", "model": "notes-lora", "rule": "fedit", "secure_aggregation": True,
        "running": True, "rounds_done": 3, "rounds_planned": 5, "global_version": "v0003",
        "current_round": {"round": 4, "id": "r0004-0a1b2c3d", "stage": "phase", "phase": 0,
                          "cohort": ["site-a", "site-b", "site-c"], "participants": ["site-a", "site-b"]},
        "sites": [
            {"site": "site-a", "online": True, "num_samples": 120, "rank": 8, "last_seen_seconds_ago": 0.4},
            {"site": "site-b", "online": True, "num_samples": 80, "rank": 8, "last_seen_seconds_ago": 1.2},
            {"site": "site-c", "online": False, "num_samples": 50, "rank": 4, "last_seen_seconds_ago": 301.0},
        ],
        "history": history,
    }


@pytest.fixture
def served() -> Iterator[tuple[StatusServer, int, Metrics, dict[str, Any]]]:
    status = fake_status()
    metrics = Metrics()
    metrics.bind(lambda: status)
    server, port = start_http("127.0.0.1:0", metrics, lambda: status)
    yield server, port, metrics, status
    server.stop()


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    body = b"x" if method == "POST" else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_metrics_endpoint_serves_the_private_registry(served: Any) -> None:
    _, port, metrics, _ = served
    metrics.round_event("round_opened", round=4, cohort=3)
    metrics.round_event("round_published", round=4, version="v0004", contributors=2, dropouts=1, seconds=12.0)
    metrics.record_bytes("received", 4096)
    code, headers, body = get(port, "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    values = {s.name: s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    assert values["fedquilt_rounds_opened_total"] == 1
    assert values["fedquilt_rounds_published_total"] == 1
    assert values["fedquilt_dropouts_total"] == 1
    assert values["fedquilt_received_bytes_total"] == 4096
    assert values["fedquilt_sites_online"] == 2
    assert values["fedquilt_current_round"] == 4


def test_status_json_equals_the_status_function(served: Any) -> None:
    _, port, _, status = served
    code, headers, body = get(port, "/status.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == status
    status["history"].append({"round": 4, "version": None, "discarded": "secure sum failed"})
    assert json.loads(get(port, "/status.json?x=1")[2]) == status  # read live at every request


def test_healthz_and_unknown_paths(served: Any) -> None:
    _, port, _, _ = served
    assert get(port, "/healthz")[::2] == (200, b"ok")
    assert get(port, "/nope")[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_only_get_is_served(served: Any, method: str) -> None:
    _, port, _, _ = served
    code, headers, _ = get(port, "/status", method)
    assert code == 405 and headers["Allow"] == "GET"


def test_status_page_shows_the_facts(served: Any) -> None:
    _, port, _, _ = served
    code, headers, body = get(port, "/status")
    page = body.decode()
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in headers[
        "Content-Security-Policy"]
    for fact in ("clinics", "notes-lora", "fedit", ">on<", "3 done of 5 planned", "r0004-0a1b2c3d", "phase 0",
                 "2 of 3 cohort sites"):
        assert fact in page, fact
    rows = re.findall(r'<tr class="site"><td>([^<]*)</td><td class="(on|off)">', page)
    assert rows == [("site-a", "on"), ("site-b", "on"), ("site-c", "off")]
    versions = re.findall(r'<tr class="version"><td class="num">(\d+)</td><td>(v\d+)</td>', page)
    assert versions == [("3", "v0003"), ("2", "v0002"), ("1", "v0001")]
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_secure_aggregation_off_is_flagged() -> None:
    page = render_html(fake_status() | {"secure_aggregation": False, "running": False})
    assert '<span class="off">OFF</span>' in page and ">paused<" in page and ">on<" not in page


def test_every_value_is_escaped() -> None:
    status = fake_status()
    status["federation"] = status["model"] = HOSTILE
    status["sites"][0]["site"] = HOSTILE
    status["current_round"]["id"] = HOSTILE
    status["history"].append({"round": 4, "version": None, "discarded": HOSTILE})
    status["history"][0]["version"] = HOSTILE
    page = render_html(status)
    assert "<script" not in page and "<img" not in page
    assert page.count(html.escape(HOSTILE)) >= 6


def test_plot_has_a_polyline_per_series_through_the_right_points() -> None:
    history = fake_status()["history"]
    svg = render_plot(history)
    lines = dict(re.findall(r'<polyline class="series" data-series="(\w+)" points="([^"]+)"', svg))
    assert set(lines) == {"loss_before", "loss_after", "eval_loss"}
    pts = {k: [tuple(map(float, p.split(","))) for p in v.split()] for k, v in lines.items()}
    assert all(len(p) == 3 for p in pts.values())
    xs = [x for x, _ in pts["loss_before"]]
    assert xs == sorted(xs) and xs == [x for x, _ in pts["eval_loss"]]  # one x per round, left to right
    # SVG y grows downwards: higher loss is higher up, so the ordering of y flips the ordering of losses
    flat = [(h[k], y) for k in pts for h, (_, y) in zip(history, pts[k])]
    for (la, ya) in flat:
        for (lb, yb) in flat:
            if la < lb:
                assert ya > yb


def test_plot_skips_missing_and_non_finite_losses_and_marks_discarded_rounds() -> None:
    history: list[dict[str, Any]] = [
        {"round": 1, "version": "v1", "loss_before": 2.0, "loss_after": None, "eval_loss": None},
        {"round": 2, "version": None, "discarded": "timeout"},
        {"round": 3, "version": "v3", "loss_before": 1.0, "loss_after": float("nan"), "eval_loss": None},
    ]
    svg = render_plot(history)
    assert re.findall(r'data-series="(\w+)"', svg) == ["loss_before"]
    assert "round 2 discarded: timeout" in svg
    assert "No losses" in render_plot([{"round": 1, "version": None, "discarded": "x"}])


def test_status_json_turns_nan_into_null() -> None:
    status = fake_status()
    status["history"][0]["loss_after"] = float("nan")
    server, port = start_http("127.0.0.1:0", Metrics(), lambda: status)
    try:
        assert json.loads(get(port, "/status.json")[2])["history"][0]["loss_after"] is None
    finally:
        server.stop()


def test_a_failing_status_answers_500_and_the_server_lives_on() -> None:
    calls = []

    def flaky() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return fake_status()

    server, port = start_http("127.0.0.1:0", Metrics(), flaky)
    try:
        assert get(port, "/status")[0] == 500
        assert get(port, "/status")[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize("listen, expected", [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)),
                                              ("0.0.0.0:80", ("0.0.0.0", 80))])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ""])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(listen))):
        parse_listen(listen)
