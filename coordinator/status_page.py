"""The coordinator's read-only HTTP side: Prometheus metrics, a status page, a health check.

``start_http`` serves, from a stdlib ``ThreadingHTTPServer`` on a daemon thread:

- ``/metrics``: the Prometheus text exposition of the coordinator's private registry;
- ``/status``: an HTML page (no scripts, no external assets; the loss plot is an SVG drawn here);
- ``/status.json``: ``status_fn()`` as JSON;
- ``/healthz``: ``200 ok``.

Only GET is served; every other method gets 405. Every value placed in the page goes through
``html.escape``: site names come from certificates and model names from configuration, and neither
is trusted to be markup-free.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import math
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Final, Mapping, Sequence
from urllib.parse import urlsplit

from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("fedquilt.coordinator.http")

StatusFn = Callable[[], Mapping[str, Any]]

SERIES: Final = (
    ("loss_before", "mean training loss before", "#1f77b4", ""),
    ("loss_after", "mean training loss after", "#d62728", "6 3"),
    ("eval_loss", "evaluation loss", "#2ca02c", "2 3"),
)
"""The plotted history fields: (key, label, colour, dash pattern)."""

_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 720, 320, 60, 20, 40, 44
_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


class StatusServer(ThreadingHTTPServer):
    """The HTTP server returned by ``start_http``; ``stop()`` shuts it down."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, metrics: Metrics,
                 status_fn: StatusFn) -> None:
        self.address_family = family
        super().__init__(address, _Handler)
        self.metrics, self.status_fn = metrics, status_fn
        self.thread: threading.Thread | None = None
        self.token: str | None = None
        """When set, every route but /healthz needs ``Authorization: Bearer <token>`` (401 otherwise)."""

    def stop(self) -> None:
        """Stop serving, close the socket and join the serving thread."""
        self.shutdown()
        self.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5)


def start_http(listen: str, metrics: Metrics, status_fn: StatusFn,
               token: str | None = None) -> tuple[StatusServer, int]:
    """Serve /metrics, /status, /status.json and /healthz on ``listen`` ("host:port", port 0 = any).

    With ``token``, every route but /healthz (the probes') needs ``Authorization: Bearer <token>``.
    """
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        server = StatusServer((host, port), family, metrics, status_fn)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve metrics and the status page on {listen} (server.metrics_listen): "
                                 f"{exc.strerror}") from None
    server.token = token
    server.thread = threading.Thread(target=server.serve_forever, args=(0.1,), name="status-http", daemon=True)
    server.thread.start()
    bound = int(server.server_address[1])
    log.info("metrics and status page on http://%s:%d/status", listen.rpartition(":")[0], bound,
             extra={"port": bound})
    return server, bound


def parse_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into (host, port)."""
    from ..address import parse_address

    try:
        return parse_address(listen)
    except ValueError as exc:
        raise ValueError(f"metrics_listen {exc}") from None


class _Handler(BaseHTTPRequestHandler):
    """GET-only routes; every other standard method is answered 405."""

    server: StatusServer
    server_version = "fedquilt-status"

    def do_GET(self) -> None:
        """Route one GET request."""
        path = urlsplit(self.path).path
        if not self._authorised(path):
            self._send(HTTPStatus.UNAUTHORIZED, b"a bearer token is required\n", "text/plain",
                       {"WWW-Authenticate": 'Bearer realm="fedquilt"'})
            return
        try:
            if path == "/metrics":
                self._send(HTTPStatus.OK, self.server.metrics.exposition(), CONTENT_TYPE)
            elif path == "/status":
                page = render_html(self.server.status_fn())
                self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
            elif path == "/status.json":
                body = json.dumps(_finite(self.server.status_fn()), default=str, allow_nan=False)
                self._send(HTTPStatus.OK, body.encode(), "application/json")
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok", "text/plain; charset=utf-8")
            elif path == "/":
                self._send(HTTPStatus.FOUND, b"", "text/plain", {"Location": "/status"})
            else:
                self._send(HTTPStatus.NOT_FOUND, f"no page {path}\n".encode(), "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError):
            log.debug("status page client went away during %s", path)
        except Exception:  # the page must answer 500, not drop the connection, when the status fails
            log.exception("status page error on %s", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error (see coordinator log)\n", "text/plain")

    def _authorised(self, path: str) -> bool:
        token = self.server.token
        if token is None or path == "/healthz":
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _not_allowed(self) -> None:
        """Answer 405: this server is read-only."""
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: only GET is allowed\n", "text/plain",
                   {"Allow": "GET"})

    # every standard method but GET is refused the same way (unknown methods get http.server's 501)
    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _send(self, code: HTTPStatus, body: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(code)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Cache-Control": "no-store",
                   "X-Content-Type-Options": "nosniff", "Content-Security-Policy": _CSP, **(extra or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access lines go to the debug log, not to stderr."""
        log.debug("%s " + format, self.address_string(), *args)


# ---- the page --------------------------------------------------------------------------------

def render_html(status: Mapping[str, Any]) -> str:
    """The status page for one ``Orchestrator.status()`` snapshot (every value escaped)."""
    history = list(status.get("history") or [])
    secure = bool(status.get("secure_aggregation"))
    title = f"fedquilt · {_e(status.get('federation'))}"
    facts = [
        ("federation", _e(status.get("federation"))), ("model", _e(status.get("model"))),
        ("rule", _e(status.get("rule"))),
        ("secure aggregation", '<span class="on">on</span>' if secure
         else '<span class="off">OFF</span> (the coordinator sees every site&#x27;s update)'),
        ("state", _state(status)),
        ("rounds", f"{_e(status.get('rounds_done'))} done of {_e(status.get('rounds_planned'))} planned"),
        ("global version", _e(status.get("global_version"))),
        ("current round", _current(status.get("current_round"))),
    ]
    progress = _progress_table(status.get("current_round"))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>\n<h1>{title}</h1>\n"
        + '<table class="facts">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>\n"
        + (f"<h2>Current round</h2>\n{progress}\n" if progress else "")
        + "<h2>Loss per round</h2>\n" + render_plot(history) + "\n"
        + "<h2>Sites</h2>\n" + _wide(_sites_table(status.get("sites") or [])) + "\n"
        + "<h2>Versions</h2>\n" + _wide(_versions_table(history)) + "\n</body></html>\n"
    )


def _state(status: Mapping[str, Any]) -> str:
    state = status.get("state") or ("running" if status.get("running") else "paused")
    if state == "finished":
        return '<span class="done" id="state">finished</span> (every planned round is published)'
    return f'<span id="state">{_e(state)}</span>'


def _wide(table: str) -> str:
    """A table that scrolls sideways on a narrow screen instead of widening the page."""
    return f'<div class="wide">{table}</div>'


def _current(rnd: Mapping[str, Any] | None) -> str:
    if not rnd:
        return "none in flight"
    stage = _e(rnd.get("stage"))
    if rnd.get("stage") == "phase":
        stage += f" {_e(rnd.get('phase'))}"
        if rnd.get("secure_sum_step"):
            stage += f" · secure sum: {_e(rnd.get('secure_sum_step'))}"
    deadline = f", deadline {_e(_clock(rnd.get('deadline_utc')))} UTC" if rnd.get("deadline_utc") else ""
    return (f"round {_e(rnd.get('round'))} (<code>{_e(rnd.get('id'))}</code>): <b>{stage}</b>, "
            f"{len(rnd.get('participants') or [])} of {len(rnd.get('cohort') or [])} cohort sites participating"
            f"{deadline}")


def _clock(iso: Any) -> str:
    """``2026-12-01T20:04:17+00:00`` -> ``2026-12-01 20:04:17``."""
    return str(iso or "")[:19].replace("T", " ")


_PROGRESS_CLASS: Final = {"trained": "on", "sent": "on", "training": "", "waiting": "", "dropped": "off"}


def _progress_table(rnd: Mapping[str, Any] | None) -> str:
    progress = (rnd or {}).get("progress") or {}
    if not progress:
        return ""
    rows = "".join(f'<tr class="progress"><td>{_e(site)}</td><td class="{_PROGRESS_CLASS.get(str(state), "")}">'
                   f"{_e(state)}</td></tr>" for site, state in sorted(progress.items()))
    return f'<table id="progress"><tr><th>cohort site</th><th>this stage</th></tr>{rows}</table>'


def _sites_table(sites: Sequence[Mapping[str, Any]]) -> str:
    if not sites:
        return "<p>No site has enrolled yet.</p>"
    rows = "".join(
        f'<tr class="site"><td>{_e(s.get("site"))}</td>'
        + ('<td class="on">online</td>' if s.get("online") else '<td class="off">offline</td>')
        + f'<td class="num">{_e(s.get("num_samples"))}</td><td class="num">{_e(s.get("rank"))}</td>'
        f'<td class="num">{_e(s.get("last_seen_seconds_ago"))} s</td></tr>'
        for s in sites)
    return ('<table id="sites"><tr><th>site</th><th>status</th><th>samples</th><th>rank</th><th>last seen</th></tr>'
            + rows + "</table>")


def _versions_table(history: Sequence[Mapping[str, Any]]) -> str:
    if not history:
        return "<p>No round has finished yet.</p>"
    rows = []
    for h in reversed(history):
        if h.get("version") is None:
            rows.append(f'<tr class="discarded"><td class="num">{_e(h.get("round"))}</td>'
                        f'<td colspan="10">discarded: {_e(h.get("discarded"))}</td></tr>')
            continue
        cells = [h.get(k) for k in ("contributors", "dropouts", "seconds", "loss_before", "loss_after", "eval_loss",
                                    "epsilon")]
        rows.append(f'<tr class="version"><td class="num">{_e(h.get("round"))}</td><td>{_e(h.get("version"))}</td>'
                    f'<td>{_e(_clock(h.get("published_at")) or None)}</td><td><code>{_e(h.get("round_id"))}</code></td>'
                    + "".join(f'<td class="num">{_e(c)}</td>' for c in cells) + "</tr>")
    head = "".join(f"<th>{t}</th>" for t in ("round", "version", "published (UTC)", "round id", "contributors",
                                               "dropouts", "seconds", "loss before", "loss after", "eval loss", "ε"))
    return f'<table id="versions"><tr>{head}</tr>' + "".join(rows) + "</table>"


def render_plot(history: Sequence[Mapping[str, Any]]) -> str:
    """An inline SVG: one polyline per loss series over published rounds, discarded rounds marked."""
    series = {key: [(float(h["round"]), float(h[key])) for h in history
                    if h.get("version") is not None and _finite_number(h.get(key))] for key, *_ in SERIES}
    points = [p for pts in series.values() for p in pts]
    if not points:
        return '<p class="noplot">No losses reported yet.</p>'
    rounds = [float(h["round"]) for h in history if _finite_number(h.get("round"))]
    x0, x1 = min(rounds) - 0.3, max(rounds) + 0.3
    y0, y1 = _span([y for _, y in points], 0.08)

    def sx(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * (_W - _LEFT - _RIGHT)

    def sy(y: float) -> float:
        return _H - _BOTTOM - (y - y0) / (y1 - y0) * (_H - _TOP - _BOTTOM)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {_W} {_H}" '
           f'style="max-width:{_W}px;height:auto" role="img" aria-label="loss per round">',
           f'<rect x="{_LEFT}" y="{_TOP}" width="{_W - _LEFT - _RIGHT}" height="{_H - _TOP - _BOTTOM}" '
           'fill="#fafafa" stroke="#999"/>']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{_LEFT - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for r in sorted(set(rounds)):
        if r == int(r):
            out.append(f'<text x="{sx(r):.1f}" y="{_H - _BOTTOM + 16}" text-anchor="middle">{int(r)}</text>')
    out.append(f'<text x="{(_LEFT + _W - _RIGHT) / 2}" y="{_H - 6}" text-anchor="middle">round</text>')
    mid = (_TOP + _H - _BOTTOM) / 2
    out.append(f'<text class="ylabel" x="14" y="{mid:.1f}" text-anchor="middle" transform="rotate(-90 14 {mid:.1f})">'
               "mean cross-entropy loss</text>")
    for h in history:
        if h.get("version") is None and _finite_number(h.get("round")):
            x = sx(float(h["round"]))
            out.append(f'<g class="discarded"><title>round {_e(h["round"])} discarded: {_e(h.get("discarded"))}'
                       f'</title><line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{_H - _BOTTOM}" stroke="#c00" '
                       'stroke-dasharray="3 3"/></g>')
    for n, (key, label, colour, dash) in enumerate(SERIES):
        pts = series[key]
        if not pts:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline class="series" data-series="{key}" points="{coords}" fill="none" stroke="{colour}" '
                   f'stroke-width="2" stroke-dasharray="{dash or "none"}"/>')
        out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"><title>round {x:g}: {label} '
                   f'{y:.5g}</title></circle>' for x, y in pts)
        lx = _LEFT + 200 * n  # the legend is a row above the frame, so it never hides a line
        out.append(f'<line x1="{lx}" x2="{lx + 24}" y1="{_TOP - 18}" y2="{_TOP - 18}" stroke="{colour}" '
                   f'stroke-width="2" stroke-dasharray="{dash or "none"}"/>'
                   f'<text x="{lx + 30}" y="{_TOP - 14}">{label}</text>')
    out.append("</svg>")
    return "".join(out)


def _span(values: Sequence[float], margin: float) -> tuple[float, float]:
    """[min, max] widened by ``margin`` of its width (by ``margin`` of the value when all are equal)."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * margin if hi - lo > 1e-12 else max(abs(lo) * margin, margin)
    return lo - pad, hi + pad


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _e(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return html.escape(f"{value:.5g}")
    return html.escape(str(value))


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such floats (a diverged loss) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_STYLE: Final = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:960px}"
    "h1{font-size:20px}h2{font-size:16px;margin-top:28px}"
    "table{border-collapse:collapse}th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}"
    ".facts th{color:#555;font-weight:normal}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    ".on{color:#17803d;font-weight:bold}.off{color:#c00;font-weight:bold}tr.discarded td{color:#a00}"
    "svg text{font-size:11px;fill:#444}.done{color:#1f4fa0;font-weight:bold}"
    ".wide{overflow-x:auto;max-width:100%}.wide td{white-space:nowrap}"
    "@media (max-width:700px){body{margin:10px;font-size:13px}th,td{padding:2px 6px}}"
)
