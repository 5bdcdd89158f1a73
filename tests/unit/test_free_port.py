"""Ports for the servers mlplane starts (MLflow, Ray, the control plane, health endpoints)."""

from __future__ import annotations

from pathlib import Path

from mlplane.operator import embedded


def test_ports_never_come_from_the_range_outgoing_connections_use() -> None:
    # A port from that range can be taken by any outgoing connection before the server binds it.
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {embedded.free_port() for _ in range(200)}
    assert not {p for p in ports if low <= p <= high}
