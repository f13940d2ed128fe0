"""Flower 1.41 SecAgg+ primitives, timed the way ``bench/secagg.py`` times fedquilt (run in Flower's venv).

Usage: ``python _flower_secagg.py CONFIG.json RESULT.json`` (progress goes to stderr).

Mirrors what a Flower client and server compute in ``secaggplus_mod`` / ``SecAggPlusWorkflow``:
client = quantize + self mask + one ECDH/HKDF and one ``pseudo_rand_gen`` mask per neighbour +
mod; server = ``combine_shares`` + regenerate every survivor's self mask + rebuild each dropped
client's key, redo ECDH with its surviving neighbours and remove those masks + mod + dequantize.
One representative client (node 0) is timed (process CPU time and wall time, median of repeats). The server's summed masked vector is built by
cancellation (pairwise masks between survivors cancel mod 2^32, so only self masks and masks shared
with dropped clients are materialised), which is exactly the vector the server would hold.
Self-contained: imports only numpy, cryptography and flwr (fedquilt is not installed here).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from flwr.common import ndarray_to_bytes
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    parameters_addition, parameters_mod, parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key, bytes_to_public_key, generate_key_pairs, private_key_to_bytes, public_key_to_bytes,
)

MOD = 2**32


def log(msg: str) -> None:
    print(f"  [flower] {msg}", file=sys.stderr, flush=True)


def site_vector(index: int, size: int, clip: float) -> np.ndarray:
    """The benchmark's float32 input of site ``index`` (same recipe as bench/secagg.py)."""
    key = hashlib.sha256(b"fedquilt-bench-vector|%d" % index).digest()
    words = np.frombuffer(Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * size)), "<u4")
    return ((words * 2.0**-32 - 0.5) * clip).astype(np.float32)


def neighbours(n: int, k: int) -> dict[int, set[int]]:
    """Flower's SecAgg+ graph: ``num_shares = k + 1`` consecutive node ids around each node."""
    half = (k + 1) >> 1
    return {i: {(i + off) % n for off in range(-half, half + 1)} - {i} for i in range(n)}


class Node:
    """One Flower client's keys and secret shares."""

    def __init__(self, nid: int, holders: list[int], threshold: int) -> None:
        sk1, pk1 = generate_key_pairs()
        self.nid, self.sk1, self.pk1 = nid, private_key_to_bytes(sk1), public_key_to_bytes(pk1)
        self.rd_seed = os.urandom(32)
        self.seed_shares = dict(zip(holders, create_shares(self.rd_seed, threshold, len(holders))))
        self.sk1_shares = dict(zip(holders, create_shares(self.sk1, threshold, len(holders))))


def client_mask(x: np.ndarray, node: Node, peers: list[Node], clip: float, target: int) -> np.ndarray:
    """What ``secaggplus_mod`` does to a fitted vector in the collect-masked-vectors stage."""
    q = quantize([x], clip, target)
    dims = [a.shape for a in q]
    q = parameters_addition(q, pseudo_rand_gen(node.rd_seed, MOD, dims))
    for peer in peers:
        key = generate_shared_key(bytes_to_private_key(node.sk1), bytes_to_public_key(peer.pk1))
        mask = pseudo_rand_gen(key, MOD, dims)
        q = parameters_addition(q, mask) if node.nid > peer.nid else parameters_subtraction(q, mask)
    return parameters_mod(q, MOD)[0]


def server_unmask(masked: np.ndarray, nodes: list[Node], alive: set[int], dead: set[int], graph: dict[int, set[int]],
                  clip: float, target: int) -> np.ndarray:
    """What ``SecAggPlusWorkflow.unmask_stage`` does once the masked vectors are summed."""
    vec = [masked]
    dims = [masked.shape]
    for nid in sorted(alive | dead):
        node = nodes[nid]
        pool = node.seed_shares if nid in alive else node.sk1_shares
        secret = combine_shares([share for holder, share in pool.items() if holder in alive])
        if nid in alive:
            vec = parameters_subtraction(vec, pseudo_rand_gen(secret, MOD, dims))
            continue
        for peer in sorted(graph[nid] & alive):
            key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(nodes[peer].pk1))
            mask = pseudo_rand_gen(key, MOD, dims)
            vec = parameters_addition(vec, mask) if nid > peer else parameters_subtraction(vec, mask)
    recon = parameters_mod(vec, MOD)
    out = dequantize(recon, clip, target)[0]
    out += -(len(alive) - 1) * clip
    return out


def masked_sum(q_sum: np.ndarray, nodes: list[Node], alive: set[int], dead: set[int],
               graph: dict[int, set[int]]) -> np.ndarray:
    """The sum of all survivors' masked vectors, built by cancellation (untimed setup)."""
    total = q_sum.copy()
    dims = [total.shape]
    for nid in sorted(alive):
        total += pseudo_rand_gen(nodes[nid].rd_seed, MOD, dims)[0]
        for peer in sorted(graph[nid] & dead):
            key = generate_shared_key(bytes_to_private_key(nodes[nid].sk1), bytes_to_public_key(nodes[peer].pk1))
            mask = pseudo_rand_gen(key, MOD, dims)[0]
            total = total + mask if nid > peer else total - mask
    return total % MOD


def timed(fn: Any, repeats: int, budget: float) -> tuple[float, float, Any]:
    """Median CPU and wall seconds of up to ``repeats`` calls (fewer once ``budget`` s would be exceeded)."""
    cpu, wall, result = [], [], None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        if sum(wall) + wall[-1] > budget:
            break
    return statistics.median(cpu), statistics.median(wall), result


def run_group(n: int, configs: list[dict[str, Any]], size: int, clip: float, repeats: int,
              budget: float) -> list[dict[str, Any]]:
    """All configs with ``n`` sites share the sites' vectors and quantized sums."""
    k = configs[0]["k"]
    target = configs[0]["target_range"]
    threshold = configs[0]["share_threshold"]
    graph = neighbours(n, k)
    log(f"n={n}: keys and shares for {n} nodes")
    nodes = [Node(i, sorted(graph[i] | {i}), threshold) for i in range(n)]
    np.random.seed(0)  # Flower's stochastic rounding uses numpy's global generator
    q_sums = [np.zeros(size, np.int64) for _ in configs]
    f_sums = [np.zeros(size, np.float64) for _ in configs]
    x0 = None
    log(f"n={n}: quantizing {n} vectors of {size:,} values")
    for i in range(n):
        x = site_vector(i, size, clip)
        q = quantize([x], clip, target)[0]
        for cfg, q_sum, f_sum in zip(configs, q_sums, f_sums):
            if i not in cfg["dropped"]:
                q_sum += q
                f_sum += x
        if i == 0:
            x0 = x
    assert x0 is not None
    results = []
    for cfg, q_sum, f_sum in zip(configs, q_sums, f_sums):
        dead = set(cfg["dropped"])
        alive = set(range(n)) - dead
        peers = [nodes[j] for j in sorted(graph[0])]
        log(f"n={n} drop={len(dead)}: timing the client")
        client_s, client_wall, y0 = timed(lambda: client_mask(x0, nodes[0], peers, clip, target), repeats, budget)
        log(f"n={n} drop={len(dead)}: building the masked sum")
        total = masked_sum(q_sum, nodes, alive, dead, graph)
        add_s, _, _ = timed(lambda: parameters_addition([total], [y0]), repeats, budget)
        log(f"n={n} drop={len(dead)}: timing the server")
        server_s, server_wall, out = timed(lambda: server_unmask(total, nodes, alive, dead, graph, clip, target),
                                           repeats, budget)
        err = out - f_sum
        results.append({
            "n": n, "k": k, "dropped": len(dead), "client_s": client_s, "server_unmask_s": server_s,
            "client_wall_s": client_wall, "server_unmask_wall_s": server_wall,
            "accumulate_s_per_input": add_s, "bytes_per_value": len(ndarray_to_bytes(y0)) / size,
            "wire_dtype": str(y0.dtype), "client_masks": 1 + len(peers),
            "max_abs_err": float(np.abs(err).max()), "rms_err": float(np.sqrt(np.mean(err**2))),
            "input_sha256": hashlib.sha256(x0.tobytes()).hexdigest(),
        })
    return results


def main() -> None:
    config = json.loads(open(sys.argv[1]).read())
    groups: dict[int, list[dict[str, Any]]] = {}
    for cfg in config["configs"]:
        groups.setdefault(cfg["n"], []).append(cfg)
    results = []
    for n, cfgs in groups.items():
        results += run_group(n, cfgs, config["size"], config["clip"], config["repeats"], config["budget_s"])
    import cryptography
    import flwr  # noqa: F401
    from importlib.metadata import version
    meta = {"flwr": version("flwr"), "cryptography": cryptography.__version__, "numpy": np.__version__}
    with open(sys.argv[2], "w") as fh:
        json.dump({"versions": meta, "results": results}, fh)


if __name__ == "__main__":
    main()
