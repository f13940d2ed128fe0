"""``HOST:PORT`` as every fedquilt config and command writes it (IPv6 as ``[::1]:PORT``)."""

from __future__ import annotations


def parse_address(text: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; a ValueError that shows the expected form otherwise."""
    host, sep, port = text.rpartition(":")
    low = 0 if allow_port_zero else 1
    if not sep or not host.strip("[]") or not port.isdigit() or not low <= int(port) <= 65535:
        example = port if port.isdigit() else "7443"
        raise ValueError(f"must be HOST:PORT with a port in {low}..65535 (e.g. 0.0.0.0:{example} or "
                         f"coord.example.org:{example}), got {text!r}")
    return host.strip("[]"), int(port)
