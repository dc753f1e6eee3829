"""Separate hosts on one machine: a network namespace per process, veth pairs and a bridge.

    host namespace: bridge <prefix>br  10.N.M.1/24   (HAProxy and the chaos client live here)
        ├── veth <prefix>v<i>  ──  eth0 in namespace <prefix>-<name>   10.N.M.<ip>/24
        └── ...

Every process of the cluster under test runs in its own namespace with its own address, so
faults act between real network stacks: a partition is ``iptables -A INPUT -s <peer> -j DROP``
inside each namespace of one side for each address of the other; packet loss is
``iptables -m statistic --mode random --probability P -j DROP``. The host end of the bridge
(HAProxy, the checker's probes) is never cut off: like Jepsen's control node, it always sees
every host, so faults never hide what the cluster answered.

Needs root (CAP_NET_ADMIN), ``ip`` (iproute2) and ``iptables``. :func:`check_support` says
clearly what is missing; nothing here falls back to pretending.
"""

from __future__ import annotations

import contextlib
import ipaddress
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


class NetError(RuntimeError):
    """Namespaces, links or firewall rules could not be set up."""


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(argv)} failed ({proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def check_support() -> str | None:
    """None if network namespaces can be made here, else why not (in words)."""
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt-get install iproute2 iptables)"
    probe = "rkvprobe"
    made = _run(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()} (needs root)"
    try:
        rule = _run(["ip", "netns", "exec", probe, "iptables", "-A", "INPUT", "-m", "statistic",
                     "--mode", "random", "--probability", "0.5", "-j", "DROP"], check=False)
        if rule.returncode != 0:
            return f"iptables does not work inside a namespace: {rule.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None


@dataclass
class Net:
    """The bridge and one namespace per host; ``hosts`` maps a host name to its last octet."""

    prefix: str  # short: interface names are at most 15 characters
    subnet: str  # "10.N.M" (a /24)
    hosts: dict[str, int]
    _up: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.prefix) > 8 or not self.prefix.isalnum():
            raise ValueError("prefix: at most 8 letters or digits")
        ipaddress.ip_network(f"{self.subnet}.0/24")  # validates
        octets = list(self.hosts.values())
        if len(set(octets)) != len(octets) or not all(2 <= o <= 254 for o in octets):
            raise ValueError("host octets must be distinct and in 2..254")

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def ip(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts[host]}"

    def netns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def exec_prefix(self, host: str) -> tuple[str, ...]:
        """Run a command inside ``host``'s namespace (``ip netns exec`` execs it: same pid)."""
        return ("ip", "netns", "exec", self.netns(host))

    # --- set up / tear down -------------------------------------------------------------------

    def up(self) -> None:
        """Create the bridge and every namespace; tears down what it made if a step fails."""
        self.down()  # leftovers of an earlier run with the same prefix
        routes = _run(["ip", "-4", "route", "show"]).stdout
        if f"{self.subnet}." in routes:
            raise NetError(f"{self.subnet}.0/24 is already routed on this machine; "
                           "choose another with --subnet")
        self._up = True
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            # Bridged frames pass the host's FORWARD chain when br_netfilter is loaded; a
            # default-drop policy there (Docker sets one) must not cut our hosts apart.
            _run(["iptables", "-I", "FORWARD", "-i", self.bridge, "-o", self.bridge,
                  "-j", "ACCEPT"], check=False)
            for host, octet in self.hosts.items():
                ns, veth = self.netns(host), f"{self.prefix}v{octet}"
                _run(["ip", "netns", "add", ns])
                _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                      "netns", ns])
                _run(["ip", "link", "set", veth, "master", self.bridge, "up"])
                _run(["ip", "-n", ns, "addr", "add", f"{self.ip(host)}/24", "dev", "eth0"])
                _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
                _run(["ip", "-n", ns, "route", "add", "default", "via", self.gateway])
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Remove every namespace and the bridge (processes in them must be gone first)."""
        for host, octet in self.hosts.items():
            _run(["ip", "netns", "del", self.netns(host)], check=False)
            _run(["ip", "link", "del", f"{self.prefix}v{octet}"], check=False)
        _run(["iptables", "-D", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"],
             check=False)
        _run(["ip", "link", "del", self.bridge], check=False)
        self._up = False

    # --- faults -------------------------------------------------------------------------------

    def _iptables(self, host: str, *args: str) -> None:
        _run([*self.exec_prefix(host), "iptables", *args])

    def partition(self, components: Iterable[Iterable[str]]) -> None:
        """Cut every link between hosts of different components (both directions).

        Hosts in no component keep every link (a bridge between the sides, for instance).
        """
        comps = [set(c) for c in components]
        side = {h: i for i, c in enumerate(comps) for h in c}
        for host, i in side.items():
            for other, j in side.items():
                if i != j:
                    self._iptables(host, "-A", "INPUT", "-s", self.ip(other), "-j", "DROP")

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Cut exactly these links (both directions): any partition shape, e.g. a ring."""
        for a, b in pairs:
            self._iptables(a, "-A", "INPUT", "-s", self.ip(b), "-j", "DROP")
            self._iptables(b, "-A", "INPUT", "-s", self.ip(a), "-j", "DROP")

    def lose(self, hosts: Iterable[str], probability: float) -> None:
        """Drop this fraction of the packets each of ``hosts`` receives from the other hosts."""
        if not 0.0 < probability < 1.0:
            raise ValueError("probability must be in (0, 1)")
        for host in hosts:
            self._iptables(host, "-A", "INPUT", "!", "-s", self.gateway, "-m", "statistic",
                           "--mode", "random", "--probability", f"{probability:.3f}",
                           "-j", "DROP")

    def heal(self) -> None:
        """Remove every fault rule in every namespace."""
        for host in self.hosts:
            with contextlib.suppress(NetError):
                self._iptables(host, "-F", "INPUT")

    def rules(self, host: str) -> str:
        return _run([*self.exec_prefix(host), "iptables", "-S", "INPUT"]).stdout
