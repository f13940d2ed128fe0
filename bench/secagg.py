"""Benchmark: fedquilt.secure_agg against Flower 1.41 SecAgg+ on the same vectors, side by side.

    python bench/secagg.py [--quick]

Vectors: 8,388,608 float32 values per site (LoRA r=16 on q_proj and v_proj of Llama-2-7B:
32 layers x 2 modules x (16x4096 + 4096x16)), uniform in [-clip/2, clip/2], generated from a
per-site AES-CTR stream so both sides see bit-identical inputs. Configurations: n in {10, 100}
sites, 0 % and 10 % of them dropping after sharing keys (the costly case: the server must rebuild
their mask keys and strip their pairwise masks), equal neighbour degree k on both sides (k = 9,
the full graph, for n = 10; k = 20 for n = 100), equal Shamir thresholds and clip range, and each
side's 32-bit modulus with as many quantization levels as n summed values allow.

fedquilt runs the real protocol (ClientSession / ServerSession, signed key advertisements, every
client masking its real vector) and reports the median over all clients of the masking stage and
the server's ``finish()`` (Shamir reconstruction, ECDH for dropped pairs, every mask, decoding).
Flower, run in its own virtual environment through ``bench/_flower_secagg.py``, is timed at the
primitive level for ONE representative client and the server (all n Flower clients would take
minutes); its summed masked vector is built by mask cancellation. Both sides run with
OMP_NUM_THREADS=1 and report medians; times are process CPU seconds (the 2-core machine is shared
with other work, which inflates wall time unevenly; wall times are kept in the JSON). The
AES-256-CTR keystream rate, sampled throughout the same run, is the physical limit for masking:
the bound for a client is ``(k + 1) * vector_bytes / keystream_rate``.

Prints a table and, as the last line, one JSON object (also written to bench/results/secagg.json).
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import cryptography  # noqa: E402
import numpy as np  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from fedquilt.secure_agg import (  # noqa: E402
    ClientSession, MaskedInput, ServerSession, SiteId, VectorLayout, default_params,
)
from fedquilt.secure_agg.graph import neighbours  # noqa: E402
from fedquilt.secure_agg.transcript import derive_graph_seed  # noqa: E402
from fedquilt.secure_agg.prg import CHUNK_BYTES  # noqa: E402

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
_PAIRED_SAMPLE = 64 * CHUNK_BYTES  # keystream measured just before and after each client: same machine state
FLOWER_VERSION = "1.41.0"
VENV = Path(os.environ.get("FEDQUILT_BENCH_CACHE", Path.home() / ".cache" / "fedquilt-bench")) / "flwr-venv"
CLIP = 1.0
FULL_SIZE = 32 * 2 * (16 * 4096 + 4096 * 16)  # 8,388,608
NOW = dt.datetime.now(dt.timezone.utc)


def log(msg: str) -> None:
    print(f"[secagg-bench] {msg}", file=sys.stderr, flush=True)


# Inputs and environment ----------------------------------------------------------------------
def site_vector(index: int, size: int, clip: float) -> np.ndarray:
    """Site ``index``'s float32 input (same recipe as _flower_secagg.py)."""
    key = hashlib.sha256(b"fedquilt-bench-vector|%d" % index).digest()
    words = np.frombuffer(Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * size)), "<u4")
    return ((words * 2.0**-32 - 0.5) * clip).astype(np.float32)


def ensure_flower_venv() -> Path:
    """Flower's own venv (flwr pins protobuf < 7); created on first use, same cryptography as here."""
    python = VENV / "bin" / "python"
    probe = "import flwr, cryptography; from importlib.metadata import version; print(version('flwr'), cryptography.__version__)"
    want = f"{FLOWER_VERSION} {cryptography.__version__}"
    if python.exists():
        got = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip()
        if got == want:
            return python
    log(f"creating Flower venv at {VENV} (one-off, a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", VENV], check=True)
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"flwr=={FLOWER_VERSION}"], check=True)
    # flwr 1.41 declares cryptography>=50; we pin the version this side uses so both run the same OpenSSL.
    subprocess.run([*pip, "--no-deps", f"cryptography=={cryptography.__version__}"], check=True)
    return python


def clocked(fn: Callable[[], T]) -> tuple[float, float, T]:
    """Run ``fn``; return (process CPU seconds, wall seconds, its result)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def keystream_rate(nbytes: int, repeats: int = 3) -> list[float]:
    """AES-256-CTR keystream bytes per CPU second into one reused chunk buffer (the masking limit)."""
    zeros, out = bytes(CHUNK_BYTES), bytearray(CHUNK_BYTES + 16)
    chunks = max(1, nbytes // CHUNK_BYTES)

    def fill() -> None:
        ctx = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
        for _ in range(chunks):
            ctx.update_into(zeros, out)

    return [chunks * CHUNK_BYTES / clocked(fill)[0] for _ in range(repeats)]


def make_identities(n: int) -> tuple[bytes, list[tuple[SiteId, ec.EllipticCurvePrivateKey, bytes]]]:
    """An in-memory federation CA and ``n`` site certificates (EC P-256)."""
    def name(cn: str, role: str | None = None) -> x509.Name:
        ou = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role)] if role else []
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), *ou])

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey,
             role: str | None = "site") -> bytes:
        built = (x509.CertificateBuilder().subject_name(name(subject, role)).issuer_name(name("bench CA"))
                 .public_key(key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=1))
                 .sign(issuer_key, hashes.SHA256()))
        return built.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_pem = cert("bench CA", ca_key, ca_key, role=None)
    sites = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        site = SiteId(f"site-{i:03d}")
        sites.append((site, key, cert(site, key, ca_key)))
    return ca_pem, sites


# fedquilt side -------------------------------------------------------------------------------
def run_session(n: int, k: int | None, dropped: set[int], size: int, identities: Any) -> dict[str, Any]:
    """One real secure sum: every client masks its real vector; drops happen after sharing keys."""
    ca_pem, sites = identities
    params = default_params(n, CLIP, degree=k)
    layout = VectorLayout.flat(size)
    server = ServerSession([s for s, _, _ in sites], params, layout, ca_cert_pem=ca_pem)
    clients = {s: ClientSession(s, key, cert, ca_pem) for s, key, cert in sites}
    announce = server.start()
    for site, client in clients.items():
        server.receive(site, client.handle(announce))
    relay = server.relay_advertisements()
    for site, client in clients.items():
        server.receive(site, client.handle(relay))
    routed = server.route_shares()
    assert server.session_id is not None  # the graph is seeded by the session id (every advertised key)
    graph = neighbours([s for s, _, _ in sites], params.degree, derive_graph_seed(server.session_id))
    client_times, client_walls, add_times, ratios, float_sum, wire = [], [], [], [], np.zeros(size), 0.0
    for i, (site, _, _) in enumerate(sites):
        if i in dropped:
            continue
        x = site_vector(i, size, CLIP)
        float_sum += x
        clients[site].set_input({"x": x})
        before = keystream_rate(_PAIRED_SAMPLE, repeats=1)[0]
        cpu, wall, masked = clocked(lambda: clients[site].handle(routed[site]))
        rate = (before + keystream_rate(_PAIRED_SAMPLE, repeats=1)[0]) / 2
        client_times.append(cpu)
        client_walls.append(wall)
        ratios.append(cpu * rate / ((1 + len(graph[site])) * 4 * size))
        assert isinstance(masked, MaskedInput)
        wire = masked.vector.nbytes / size
        add_times.append(clocked(lambda: server.receive(site, masked))[0])
        del masked, x
    # Consistency round (Bonawitz et al.): each survivor signs the survivor set; the server checks each
    # signature; each site checks >= t of them before revealing. Timed apart: what it adds to a session.
    consistency = server.request_consistency()
    sign_times, check_times = [], []
    for site in consistency.survivors:
        cpu, _, signed = clocked(lambda: clients[site].handle(consistency))
        sign_times.append(cpu)
        check_times.append(clocked(lambda: server.receive(site, signed))[0])
    request = server.request_unmask()
    reveal_times = []
    for site, _ in request.signatures:
        cpu, _, revealed = clocked(lambda: clients[site].handle(request))  # includes verifying the signatures
        reveal_times.append(cpu)
        server.receive(site, revealed)
    server_s, server_wall, result = clocked(server.finish)
    err = result.sums["x"].reshape(-1) - float_sum
    assert np.abs(err).max() <= len(result.contributors) / params.scale, "secure sum disagrees with the float sum"
    return {"client_times": client_times, "client_walls": client_walls, "server_s": server_s, "ratios": ratios,
            "consistency_client_s": statistics.median(sign_times), "consistency_server_s": sum(check_times),
            "reveal_client_s": statistics.median(reveal_times),
            "server_wall": server_wall, "add_s": statistics.median(add_times),
            "bytes_per_value": wire, "client_masks": 1 + len(graph[sites[0][0]]), "frac_bits": params.frac_bits,
            "max_abs_err": float(np.abs(err).max()), "rms_err": float(np.sqrt(np.mean(err**2))),
            "server_masks": len(request.survivors) + sum(len(graph[d] & set(request.survivors)) for d in request.dropped)}


def run_ours(cfg: dict[str, Any], size: int, sessions: int, identities: Any) -> dict[str, Any]:
    """Median over sessions of the server time; median over every client of every session."""
    runs = [run_session(cfg["n"], cfg["our_degree"], set(cfg["dropped"]), size, identities) for _ in range(sessions)]
    return {
        "client_s": statistics.median(t for r in runs for t in r["client_times"]),
        "server_unmask_s": statistics.median(r["server_s"] for r in runs),
        "client_wall_s": statistics.median(t for r in runs for t in r["client_walls"]),
        "server_unmask_wall_s": statistics.median(r["server_wall"] for r in runs),
        "accumulate_s_per_input": statistics.median(r["add_s"] for r in runs),
        "bytes_per_value": runs[0]["bytes_per_value"], "client_masks": runs[0]["client_masks"],
        "server_masks": runs[0]["server_masks"], "frac_bits": runs[0]["frac_bits"],
        "max_abs_err": max(r["max_abs_err"] for r in runs), "rms_err": statistics.median(r["rms_err"] for r in runs),
        "client_samples": sum(len(r["client_times"]) for r in runs), "server_samples": len(runs),
        "client_bound_ratio": statistics.median(x for r in runs for x in r["ratios"]),
        "consistency_client_s": statistics.median(r["consistency_client_s"] for r in runs),
        "consistency_server_s": statistics.median(r["consistency_server_s"] for r in runs),
        "reveal_client_s": statistics.median(r["reveal_client_s"] for r in runs),
    }


# Flower side ---------------------------------------------------------------------------------
def run_flower(python: Path, configs: list[dict[str, Any]], size: int, repeats: int) -> dict[str, Any]:
    """Run _flower_secagg.py in Flower's venv on the same configurations; return its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp, "config.json"), Path(tmp, "result.json")
        flower_cfgs = [{"n": c["n"], "k": c["k"], "dropped": c["dropped"], "share_threshold": c["share_threshold"],
                        "target_range": (2**32 - 1) // c["n"]} for c in configs]
        cfg_path.write_text(json.dumps({"size": size, "clip": CLIP, "repeats": repeats, "budget_s": 40.0,
                                        "configs": flower_cfgs}))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([python, HERE / "_flower_secagg.py", cfg_path, out_path], check=True, env=env)
        result: dict[str, Any] = json.loads(out_path.read_text())
        return result


# Report --------------------------------------------------------------------------------------
def make_configs(quick: bool) -> list[dict[str, Any]]:
    configs = []
    for n, k in ((10, 9), (100, 20)):
        for frac in ((0.1,) if quick else (0.0, 0.1)):
            drops = round(n * frac)
            dropped = [n - 1 - (n // drops) * j for j in range(drops)] if drops else []
            params = default_params(n, CLIP, degree=None if k >= n - 1 else k)
            configs.append({"n": n, "k": k, "our_degree": params.degree, "drop_frac": frac, "dropped": dropped,
                            "share_threshold": params.shares_needed(n)})
    return configs


def table(rows: list[dict[str, Any]], rate: float) -> str:
    head = (f"{'n':>4} {'k':>3} {'drop':>5} | {'client s':>18} {'x':>5} | {'server unmask s':>18} {'x':>5} | "
            f"{'add/input s':>13} | {'B/value':>9} | {'max |err|':>19} | {'client/bound':>12} | "
            f"{'consistency: sign/site, verify all (server), check+reveal/site s':>22}")
    lines = [f"AES-256-CTR keystream: {rate / 2**30:.2f} GiB/s per CPU second (one core, reused 128 KiB buffer)",
             "times: process CPU seconds, median of repeats (the 2-core machine is shared; wall times in the JSON)",
             head, "-" * len(head)]
    for r in rows:
        o, f = r["fedquilt"], r["flower"]
        lines.append(
            f"{r['n']:>4} {r['k']:>3} {r['drop_frac']:>5.0%} | {o['client_s']:>8.3f} {f['client_s']:>9.3f} "
            f"{r['client_speedup']:>5.1f} | {o['server_unmask_s']:>8.3f} {f['server_unmask_s']:>9.3f} "
            f"{r['server_speedup']:>5.1f} | {o['accumulate_s_per_input']:>6.3f} {f['accumulate_s_per_input']:>6.3f} | "
            f"{o['bytes_per_value']:>4.1f} {f['bytes_per_value']:>4.1f} | {o['max_abs_err']:>9.2e} {f['max_abs_err']:>9.2e} | "
            f"{o['client_bound_ratio']:>12.2f} | {o['consistency_client_s']:.4f} {o['consistency_server_s']:.4f} "
            f"{o['reveal_client_s']:.4f}")
    lines.append("columns: fedquilt then Flower; x = Flower time / fedquilt time; client/bound: each client's time over "
                 "(k+1) masks at the keystream rate measured just before and after it (median)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M values, 10 %% dropouts only (about a minute)")
    parser.add_argument("--size", type=int, default=None, help="values per vector (default 8,388,608; quick 1,048,576)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = args.size or (1 << 20 if args.quick else FULL_SIZE)
    configs = make_configs(args.quick)
    python = ensure_flower_venv()
    started = time.perf_counter()
    log(f"{size:,} values per vector; configs: {[(c['n'], c['k'], c['drop_frac']) for c in configs]}")
    rates = keystream_rate(8 * 4 * size)
    log(f"keystream {statistics.median(rates) / 2**30:.2f} GiB/s per CPU second")
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for n in sorted({c["n"] for c in configs}):  # each side in turn per cohort size, so both see similar load
        group = [c for c in configs if c["n"] == n]
        identities = make_identities(n)
        sessions = args.repeats if n <= 10 else 1  # at n=100 every session already yields 90-100 client samples
        for cfg in group:
            log(f"fedquilt n={n} k={cfg['k']} drop={cfg['drop_frac']:.0%}: {sessions} real session(s)")
            ours.append(run_ours(cfg, size, sessions, identities))
            rates += keystream_rate(8 * 4 * size)
        log(f"Flower n={n} (primitives, one representative client + server)")
        flower = run_flower(python, group, size, args.repeats)
        theirs += flower["results"]
        rates += keystream_rate(8 * 4 * size)
    rate = statistics.median(rates)
    rows = []
    for cfg, o, f in zip(configs, ours, theirs):
        assert f["input_sha256"] == hashlib.sha256(site_vector(0, size, CLIP).tobytes()).hexdigest()
        o["client_bound_s"] = o["client_masks"] * 4 * size / rate
        rows.append({"n": cfg["n"], "k": cfg["k"], "drop_frac": cfg["drop_frac"], "dropped": len(cfg["dropped"]),
                     "fedquilt": o, "flower": f, "client_speedup": f["client_s"] / o["client_s"],
                     "server_speedup": f["server_unmask_s"] / o["server_unmask_s"]})
    dropping = [r for r in rows if r["dropped"]]
    summary = {
        "benchmark": "secagg", "quick": args.quick, "values": size, "clip": CLIP,
        "keystream_gib_s": rate / 2**30, "keystream_samples_gib_s": [r / 2**30 for r in rates], "elapsed_s": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
                    "cryptography": cryptography.__version__, "load_avg": os.getloadavg()},
        "flower_versions": flower["versions"], "rows": rows,
        "targets": {
            "client_5x_with_drops": all(r["client_speedup"] >= 5 for r in dropping),
            "server_5x_with_drops": all(r["server_speedup"] >= 5 for r in dropping),
            "bytes_per_value_le_4": all(r["fedquilt"]["bytes_per_value"] <= 4 for r in rows),
            "client_within_3x_of_keystream": all(r["fedquilt"]["client_bound_ratio"] <= 3 for r in rows),
        },
        "method": "fedquilt: real ClientSession/ServerSession, median over all clients; Flower 1.41 primitives, "
                  "one representative client + server, masked sum by cancellation; drops after key sharing",
    }
    print(table(rows, rate))
    out = HERE / "results" / "secagg.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
