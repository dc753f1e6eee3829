"""Start real processes for tests on loopback, and always clean them up by pid.

The mechanism is production code (:mod:`rangekv.cluster.procs`: ``rangekv up``, ``chaos`` and
``bench`` start their processes with it); the tests take it from here, with one etcd member
for a test beside it."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from rangekv.cluster.procs import Proc, etcd_binary, free_port, spawn, wait_until

__all__ = ["Proc", "etcd_binary", "free_port", "spawn", "start_etcd", "wait_until"]


def start_etcd(data_dir: Path, client_port: int, peer_port: int, name: str = "rangekv") -> Proc:
    """One local etcd member; returns once it answers on its client port."""
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    argv = [
        etcd_binary(), "--name", name, "--data-dir", str(data_dir),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}", "--initial-cluster-state", "new",
        "--logger", "zap", "--log-outputs", "stderr",
    ]
    proc = spawn("etcd", argv, data_dir.parent / f"{name}-etcd.log")

    def healthy() -> bool:
        with urllib.request.urlopen(client + "/health", timeout=1) as resp:
            return resp.status == 200 and b"true" in resp.read()

    try:
        wait_until(healthy, 20, f"etcd on {client}")
    except TimeoutError:
        proc.kill()
        raise RuntimeError(f"etcd did not start:\n{proc.log()[-3000:]}") from None
    return proc
