"""The status page as a browser renders it: headless Chromium's DOM and a screenshot.

Needs Debian's ``chromium`` (``apt-get install -y chromium``); skipped with that reason otherwise.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest

from fedquilt.coordinator.metrics import Metrics
from fedquilt.coordinator.status_page import SERIES, start_http

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed: apt-get install -y chromium")


def three_rounds() -> dict[str, Any]:
    """A plain status dict as ``Orchestrator.status()`` returns it, with three published rounds."""
    return {
        "federation": "clinics", "model": "notes-lora", "rule": "secure-stack", "secure_aggregation": True,
        "running": True, "rounds_done": 3, "rounds_planned": 5, "global_version": "v0003",
        "current_round": {"round": 4, "id": "r0004-9f8e7d6c", "stage": "training", "phase": 0,
                          "cohort": ["st-marys", "north-lab", "riverside"], "participants": ["st-marys", "north-lab",
                                                                                              "riverside"]},
        "sites": [
            {"site": "north-lab", "online": True, "num_samples": 80, "rank": 8, "last_seen_seconds_ago": 1.2},
            {"site": "riverside", "online": False, "num_samples": 50, "rank": 4, "last_seen_seconds_ago": 301.0},
            {"site": "st-marys", "online": True, "num_samples": 120, "rank": 8, "last_seen_seconds_ago": 0.4},
        ],
        "history": [
            {"round": 1, "version": "v0001", "contributors": 3, "dropouts": 0, "seconds": 41.3,
             "loss_before": 2.41, "loss_after": 1.93, "eval_loss": 2.02},
            {"round": 2, "version": "v0002", "contributors": 2, "dropouts": 1, "seconds": 39.8,
             "loss_before": 1.95, "loss_after": 1.52, "eval_loss": 1.71},
            {"round": 3, "version": "v0003", "contributors": 3, "dropouts": 0, "seconds": 40.1,
             "loss_before": 1.55, "loss_after": 1.21, "eval_loss": 1.44},
        ],
    }


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    status = three_rounds()
    server, port = start_http("127.0.0.1:0", Metrics(), lambda: status)
    yield f"http://127.0.0.1:{port}/status"
    server.stop()


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_rendered_dom_has_the_site_rows_and_one_polyline_per_series(page_url: str, tmp_path: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", page_url).stdout
    rows = re.findall(r'<tr class="site"><td>([^<]*)</td><td class="(?:on|off)">(online|offline)</td>', dom)
    assert rows == [("north-lab", "online"), ("riverside", "offline"), ("st-marys", "online")]
    svg = re.search(r"<svg[^>]*>.*?</svg>", dom, re.S)
    assert svg is not None
    series = re.findall(r'<polyline[^>]*data-series="(\w+)"[^>]*points="([^"]+)"', svg.group(0))
    assert [k for k, _ in series] == [key for key, *_ in SERIES]
    assert all(len(points.split()) == 3 for _, points in series)
    assert len(re.findall(r'<tr class="version">', dom)) == 3


def test_screenshot_shows_every_series_colour(page_url: str, tmp_path: Path) -> None:
    png = tmp_path / "status.png"
    chromium(tmp_path, f"--screenshot={png}", "--window-size=1200,900", page_url)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height, pixels = decode_png(data)
    assert (width, height) == (1200, 900)
    colours = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for _, _, c, _ in SERIES}
    seen = {colour: sum(1 for p in pixels if p == colour) for colour in colours}
    assert all(n > 50 for n in seen.values()), seen  # each line is drawn, not just present in the markup


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """A minimal PNG decoder (8-bit RGB/RGBA, not interlaced), enough for Chromium's screenshots."""
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        header = chunk if kind == b"IHDR" else header
        idat += chunk if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, out = bytearray(stride), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out.extend(tuple(line[x:x + 3]) for x in range(0, stride, bpp))
        prev = line
    return width, height, out  # type: ignore[return-value]
