"""A local cluster whose processes are separate hosts: one network namespace each.

Like :class:`rangekv.cluster.local.LocalCluster` (same processes, same start and stop rules,
same data dir layout), except:

* every etcd member, meta, node and rm runs in its own namespace with its own address on a
  bridge (:mod:`rangekv.chaos.net`), listening on its usual port of the layout;
* etcd runs as 3 members (``etcd-1..3``), and metas and rms are given all three client URLs;
* HAProxy runs in the host namespace on ``127.0.0.1:base_port`` and reaches the rms over the
  bridge, so the client endpoint is the same as ``rangekv up``'s;
* with ``hostile``, one more namespace (``hostile``, address ``.250``) where no process of the
  cluster runs: the hostile nemesis's actor sends from there (:mod:`rangekv.chaos.hostile`);
* rms can run under libfaketime with a per-rm offset file (``clock_file``) that the nemesis
  rewrites to skew their wall clocks (the clock that stamps seqs) while they run; monotonic
  clocks are left alone, as a skewed NTP clock would leave them.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from rangekv.chaos.net import Net
from rangekv.cluster import procs
from rangekv.cluster.local import (
    ETCD_START_TIMEOUT_S,
    PROBE_TIMEOUT_S,
    ClusterError,
    LocalCluster,
    ProcSpec,
)

ETCD_MEMBERS = 3
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
_OCTET_BASE = {"etcd": 10, "meta": 20, "rm": 40, "node": 100}  # nodes: .101 to .129
# The hostile nemesis's actor (``rangekv.chaos.hostile``): a host of its own, no process of the
# cluster; only made when that family is on.
HOSTILE = "hostile"
HOSTILE_OCTET = 250


def faketime_library() -> str | None:
    """libfaketime's multi-threaded build (Debian package ``faketime``), or None."""
    for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1",
                    "/usr/lib/faketime/libfaketimeMT.so.1",
                    "/usr/lib/*/faketime/libfaketime.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


class NetCluster(LocalCluster):
    def __init__(
        self,
        data_dir: Path | str,
        base_port: int,
        nodes: int = 5,
        rms: int = 2,
        *,
        prefix: str = "rkv",
        subnet: str = "10.77.0",
        skew_rms: bool = False,
        hostile: bool = False,
        extra_env: dict[str, dict[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, base_port, nodes, rms, **kwargs)
        hosts = {f"etcd-{i}": _OCTET_BASE["etcd"] + i for i in range(1, ETCD_MEMBERS + 1)}
        hosts |= {f"meta-{i}": _OCTET_BASE["meta"] + i for i in range(1, 3)}
        hosts |= {f"node-{i}": _OCTET_BASE["node"] + i for i in range(1, nodes + 1)}
        hosts |= {f"rm-{i}": _OCTET_BASE["rm"] + i for i in range(1, rms + 1)}
        if hostile:
            hosts[HOSTILE] = HOSTILE_OCTET
        self.net = Net(prefix, subnet, hosts)
        self.skew_rms = skew_rms
        self._extra_env = extra_env or {}
        if skew_rms and faketime_library() is None:
            raise ClusterError("clock skew needs libfaketime (Debian: apt-get install faketime)")

    # --- layout -------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [f"etcd-{i}" for i in range(1, ETCD_MEMBERS + 1)] + [
            n for n in super().names if n != "etcd"
        ]

    def host_of(self, name: str) -> str:
        if name == "haproxy":
            return "127.0.0.1"
        return self.net.ip(name)

    def launch_prefix(self, name: str) -> tuple[str, ...]:
        inner = self.wrappers.get(name, ())
        if name == "haproxy":
            return inner
        return (*self.net.exec_prefix(name), *inner)

    def ports_to_check(self, spec: ProcSpec) -> tuple[int, ...]:
        # Only HAProxy listens in the host namespace; every other port is in a fresh namespace.
        return spec.ports if spec.name == "haproxy" else ()

    def etcd_client_url(self, name: str) -> str:
        return f"http://{self.net.ip(name)}:{ETCD_CLIENT_PORT}"

    @property
    def etcd_endpoint(self) -> str:
        return ",".join(self.etcd_client_url(f"etcd-{i}") for i in range(1, ETCD_MEMBERS + 1))

    def clock_file(self, name: str) -> Path:
        """The libfaketime offset of an rm (e.g. ``+3s``, ``-1.5s``), read on every clock call."""
        return self.data_dir / "run" / f"{name}.faketime"

    def extra_env(self, name: str) -> dict[str, str]:
        env = dict(self._extra_env.get(name, {}))
        if self.skew_rms and name.startswith("rm-"):
            lib = faketime_library()
            assert lib is not None
            clock = self.clock_file(name)
            if not clock.exists():
                clock.write_text("+0\n")
            env |= {
                "LD_PRELOAD": lib,
                "FAKETIME_TIMESTAMP_FILE": str(clock),
                "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            }
        return env

    def spec(self, name: str) -> ProcSpec:
        kind, _, num = name.partition("-")
        if kind == "etcd" and num.isdigit() and 1 <= int(num) <= ETCD_MEMBERS:
            ip = self.net.ip(name)
            client, peer = f"http://{ip}:{ETCD_CLIENT_PORT}", f"http://{ip}:{ETCD_PEER_PORT}"
            initial = ",".join(
                f"etcd-{i}=http://{self.net.ip(f'etcd-{i}')}:{ETCD_PEER_PORT}"
                for i in range(1, ETCD_MEMBERS + 1)
            )
            argv = (
                procs.etcd_binary(),
                "--name", name,
                "--data-dir", str(self.data_dir / name),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", f"rangekv-{self.net.prefix}",
                "--logger", "zap",
                "--log-outputs", "stderr",
            )
            return ProcSpec(name, argv, (ETCD_CLIENT_PORT, ETCD_PEER_PORT))
        if name == "etcd":
            raise KeyError("this cluster runs etcd as etcd-1..3")
        return super().spec(name)

    def _wait_etcd(self, name: str = "etcd") -> None:
        """A member alone cannot serve: wait once the last member is started, for a quorum."""
        if name != f"etcd-{ETCD_MEMBERS}":
            return
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        with httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False) as http:
            while True:
                healthy = 0
                for i in range(1, ETCD_MEMBERS + 1):
                    member = f"etcd-{i}"
                    if not self.alive(member):
                        raise ClusterError(f"{member} exited at start:\n{self.log_tail(member)}")
                    try:
                        resp = http.get(self.etcd_client_url(member) + "/health")
                        healthy += resp.status_code == 200 and b"true" in resp.content
                    except httpx.HTTPError:
                        pass
                if healthy == ETCD_MEMBERS:
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(f"etcd not healthy after {ETCD_START_TIMEOUT_S}s:\n"
                                       + self.log_tails())
                time.sleep(0.1)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, skip: Iterable[str] = ()) -> list[str]:
        if not self.net._up:
            self.net.up()
        return super().start(skip)

    def teardown(self) -> None:
        """Stop every process, then remove the namespaces and the bridge."""
        try:
            self.stop()
        finally:
            self.net.down()
