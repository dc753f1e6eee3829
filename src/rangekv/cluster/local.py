"""A whole rangekv cluster on one machine: what ``rangekv up`` runs and integration tests use.

    etcd ─▶ meta-1, meta-2 ─▶ node-1..N ─▶ rm-1..M ─▶ haproxy   (start order; stop is the reverse)

Ports (``docs/internals.md``), from ``base_port`` (default 8400):

    haproxy  base          the client endpoint (HTTP)
    haproxy  base+1        the native client endpoint (``rangekv://``: TCP, to the rms' below)
    rm i     base+1+i      i = 1..9: its native client protocol (``--native-listen``)
    rm i     base+10+i     i = 1..9
    meta i   base+19+i     i = 1..2: meta-1 on base+20, meta-2 on base+21
    node i   base+30+i     i = 1..9
    etcd     base+41 (client), base+42 (peer)
    node i   base+40+i     i = 10..29
    node i   base+70+i     i = 1..29: its Prometheus /metrics (--metrics-listen)
    meta i   base+100+i    i = 1..2: its Prometheus /metrics (--metrics-listen)

(An rm serves /metrics on its own port, and so does HAProxy's endpoint, which forwards it to
one rm.) ``LocalCluster.metrics_urls`` lists every /metrics URL, and ``cluster.json`` records
them under ``metrics``.

A node's place ``i`` above is its id, unless the cluster was given other ids (``node_ids``: a
restored cluster keeps the ids its backup holds, say 1, 2, 4, 7 or 101..105): then the ``i``-th
id in order takes the ``i``-th place, and ``node-ID`` is still its process, dir and ``--id``.

Data dir layout (the data dir and every dir in it 0700, the files ``up`` writes 0600:
:mod:`rangekv.perms`): ``etcd/``, ``node-i/``, ``backups/meta/`` (the meta's rolling metadata
backups), ``logs/NAME.log`` (stdout+stderr of each process),
``run/NAME.pid`` and ``run/NAME.argv`` (the pid and the exact argv it was started with),
``haproxy.cfg``, ``cluster.json`` (base port and sizes, and the log options and config file if
``up`` was given them, so that a later ``up`` reuses them).

Rules:

* A process counts as running only if its pid is alive AND ``/proc/PID/cmdline`` is the argv we
  recorded: a pid file left by a crash never makes us skip a start or signal a stranger.
* ``start()`` starts only what is not running, so it doubles as "restart what died".
* Every process runs in its own session: Ctrl-C in the terminal of ``rangekv up`` reaches only
  ``up``, which then stops the others in order; ``up --detach`` leaves them running.
* Two metas run: whichever wins the etcd election (``/rangekv/meta/active`` under a lease) is
  active, the other stands by and takes over when the active one's lease expires (about 2 s
  after it dies). Nodes heartbeat both addresses (``--meta A,B``) and follow ``not_active``
  hints; rms find the active meta in etcd.
* ``stop()`` sends SIGTERM phase by phase (haproxy, rms, nodes, metas, etcd), waits
  ``stop_timeout_s``, then SIGKILLs stragglers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from rangekv import limits, perms
from rangekv import log as rangekv_log
from rangekv.cluster import haproxy_errors, procs

HOST = "127.0.0.1"
PROCS_PER_KIND_MAX = 9  # the port layout has room for 9 rms
NODES_MAX = 29  # nodes 1..9 at base+31..39, nodes 10..29 at base+50..69
NODE_ID_MAX = 2**32 - 1
METAS = 2  # one active, one standby (ports base+20, base+21)
PORT_SPAN = 110  # base .. base+109 (metrics ports up to base+102)
NODE_METRICS_OFFSET = 70  # node i's /metrics on base+70+i
META_METRICS_OFFSET = 100  # meta i's /metrics on base+100+i
GROUP_SIZE = 3

READY_TIMEOUT_S_DEFAULT = 60.0
STOP_TIMEOUT_S_DEFAULT = 10.0
ETCD_START_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 30


_log = logging.getLogger("rangekv.cluster")


class ClusterError(RuntimeError):
    """The local cluster could not be started, became unhealthy, or was misconfigured."""


@dataclass(frozen=True)
class ProcSpec:
    """How one process of the cluster is started."""

    name: str
    argv: tuple[str, ...]
    ports: tuple[int, ...]


def haproxy_binary() -> str:
    for candidate in (shutil.which("haproxy"), "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ClusterError("HAProxy is not installed (Debian: apt-get install haproxy)")


@dataclass(frozen=True)
class HaproxyTimeouts:
    """HAProxy's timeouts, in seconds, set against the rm's (``haproxy_config`` says how)."""

    connect_s: float = 2.0
    client_s: float = 30.0
    server_s: float = 30.0
    http_request_s: float = limits.HTTP_HEAD_TIMEOUT_S
    http_keep_alive_s: float = 10.0
    queue_s: float = 5.0
    check_s: float = 2.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not 0 < value < 86_400:
                raise ValueError(f"HAProxy timeout {name} must be in (0, 86400) s, not {value}")
        # a client waiting for a slow answer must not be cut before HAProxy gives up on the rm
        if self.client_s < self.server_s:
            raise ValueError(f"timeout client ({self.client_s} s) must be at least timeout "
                             f"server ({self.server_s} s)")


def _haproxy_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _haproxy_path(path: Path | str) -> str:
    text = str(path)
    if '"' in text or "\\" in text:
        raise ClusterError(f"HAProxy cannot be given the path {text!r} (a quote or backslash)")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def haproxy_config(
    base_port: int,
    rm_ports: Iterable[int],
    rm_hosts: Iterable[str] | None = None,
    *,
    errorfiles_dir: Path | str = haproxy_errors.ERRORFILES_DIR,
    timeouts: HaproxyTimeouts | None = None,
    rm_native_ports: Iterable[int] | None = None,
) -> str:
    """HAProxy in front of the rms: health-checked, retrying only what is safe to retry.

    ``retry-on conn-failure empty-response`` with ``option redispatch`` moves a request to the
    other rm when the connection fails or an rm dies without answering. Replaying a write that
    reached an rm is not safe (it may have been applied; a conditional write would then fail
    against itself), so ``disable-l7-retry`` keeps only connection-failure retries for
    anything but GET/HEAD.

    Requests go to the rms that are ready (``/healthz``: routing map loaded and followed). When
    none is, which is what an etcd outage looks like, they go to every rm that still holds a map
    (``/livez``): it serves from that map (the groups do not need etcd, the map cannot change
    without it, a node refuses a stale route), so reads and writes to existing tables go on.

    HAProxy's own error answers are the files in ``errorfiles_dir`` (``haproxy_errors``): the
    rms' JSON error shape. Its timeouts against the rm's (``HaproxyTimeouts``, defaults):

    * ``http-request`` (10 s) is the rm's head deadline (``limits.HTTP_HEAD_TIMEOUT_S``), a
      total like it: HAProxy forwards only whole heads, so a slow head gets HAProxy's 408;
    * a body is streamed to the rm as it comes, and the rm's body deadline (20 s) answers a
      trickle with 408; ``server`` (30 s) is above that plus the rm's longest deadline for a
      data operation (5 s; 10 s for a table), so an rm that is merely slow is never cut off
      by a 504; ``client`` is no less than ``server``;
    * ``http-keep-alive`` (10 s) is below the rm's idle time (75 s): HAProxy, not the rm,
      closes an idle connection, so it never reuses one the rm is closing.

    There is no ``maxconn`` per server: an rm bounds its own connections and requests in
    flight and answers 503 with ``Retry-After`` at once; HAProxy queueing in front of it would
    only add up to ``timeout queue`` of waiting to every request beyond the bound.

    With ``rm_native_ports``, a second frontend on ``base_port + 1`` passes the native client
    protocol's connections (TCP mode: HAProxy balances connections, a client multiplexes many
    requests on each) to the rms that are ready, checked on their HTTP port as above. Nothing
    is retried there: a connection that fails is the client's to re-open (its writes carry a
    session, and the group applies a resent one at most once). Idle native connections are
    kept (``timeout client``/``server`` 1 h: a client with nothing to do holds its few
    connections open; TCP keepalive notices dead peers).
    """
    t = timeouts if timeouts is not None else HaproxyTimeouts()
    ports = list(rm_ports)
    hosts = list(rm_hosts) if rm_hosts is not None else [HOST] * len(ports)
    servers = "\n".join(
        f"    server rm{i} {host}:{port} check inter 500ms fall 2 rise 1"
        for i, (host, port) in enumerate(zip(hosts, ports, strict=True), start=1)
    )
    native = ""
    if rm_native_ports is not None:
        native_servers = "\n".join(
            f"    server rm{i} {host}:{nport} check port {port} inter 500ms fall 2 rise 1"
            for i, (host, nport, port) in enumerate(
                zip(hosts, list(rm_native_ports), ports, strict=True), start=1))
        native = f"""
frontend rangekv_native
    mode tcp
    bind {HOST}:{base_port + 1}
    option tcpka
    timeout client 1h
    default_backend rms_native

backend rms_native
    mode tcp
    balance roundrobin
    option tcpka
    timeout server 1h
    option httpchk GET /healthz
    http-check expect status 200
{native_servers}
"""
    errorfiles = "\n".join(
        f"    errorfile {status} {_haproxy_path(haproxy_errors.errorfile(status, errorfiles_dir))}"
        for status in haproxy_errors.STATUSES
    )
    return f"""\
# Written by `rangekv up` (rangekv.cluster.local); rewritten on every start.
global
    log stderr format raw local0 notice
    maxconn 4096
    # one thread: on a machine whose cores also run the rms and nodes, a second HAProxy thread
    # costs more in synchronization than it adds (CPU per request 0.035-0.046 -> 0.028-0.030 ms)
    nbthread 1

defaults
    mode http
    log global
    option dontlognull
    # set against the rms' own limits: see rangekv.cluster.local.haproxy_config
    timeout connect {_haproxy_time(t.connect_s)}
    timeout client {_haproxy_time(t.client_s)}
    timeout server {_haproxy_time(t.server_s)}
    timeout http-request {_haproxy_time(t.http_request_s)}
    timeout http-keep-alive {_haproxy_time(t.http_keep_alive_s)}
    timeout queue {_haproxy_time(t.queue_s)}
    timeout check {_haproxy_time(t.check_s)}
    retries 2
    retry-on conn-failure empty-response
    option redispatch 1
    # HAProxy's own answers in the rms' JSON error shape (rangekv.cluster.haproxy_errors)
{errorfiles}

frontend rangekv
    bind {HOST}:{base_port}
    # no rm ready (etcd out of reach): the rms that hold a routing map serve from it
    use_backend rms if {{ nbsrv(rms) gt 0 }}
    default_backend rms_holding_map

backend rms
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    http-request disable-l7-retry unless METH_GET
{servers}

backend rms_holding_map
    balance roundrobin
    option httpchk GET /livez
    http-check expect status 200
    http-request disable-l7-retry unless METH_GET
{servers}
{native}"""


def ports_free(ports: Iterable[int], host: str = HOST) -> bool:
    return all(_port_free(p, host) for p in ports)


def _port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as our servers do: TIME_WAIT leftovers must not count as "in use"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def node_port_offset(i: int) -> int:
    """Node i's port is base + this (the layout keeps nodes 1..9 where they always were)."""
    return 30 + i if i <= 9 else 40 + i


def nodes_for(groups: int) -> int:
    """The default node count for ``groups`` groups: three each, plus two spares."""
    return GROUP_SIZE * groups + 2


def _node_ids(nodes: int, given: Sequence[int] | None) -> tuple[int, ...]:
    """1..nodes; or the ids ``given`` in order, then (a cluster grown since) new ids above
    them up to ``nodes`` ids in all."""
    if given is None:
        return tuple(range(1, nodes + 1))
    ids = sorted(set(given))
    if len(ids) != len(given) or not ids or ids[0] < 1 or ids[-1] > NODE_ID_MAX:
        raise ClusterError(f"node ids must be distinct, in 1..{NODE_ID_MAX}: {list(given)}")
    ids += range(ids[-1] + 1, ids[-1] + 1 + nodes - len(ids))
    return tuple(ids)


def cluster_ports(base_port: int, nodes: int = 5, rms: int = 2) -> list[int]:
    return (
        [base_port, base_port + 1]
        + [base_port + 1 + i for i in range(1, rms + 1)]
        + [base_port + 10 + i for i in range(1, rms + 1)]
        + [base_port + 19 + i for i in range(1, METAS + 1)]
        + [base_port + node_port_offset(i) for i in range(1, nodes + 1)]
        + [base_port + 41, base_port + 42]
        + [base_port + NODE_METRICS_OFFSET + i for i in range(1, nodes + 1)]
        + [base_port + META_METRICS_OFFSET + i for i in range(1, METAS + 1)]
    )


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the source ports of outgoing connections (Linux default)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def find_free_base_port(
    nodes: int = 5, rms: int = 2, low: int = 20000, high: int = 60000, attempts_max: int = 200
) -> int:
    """A random base port whose whole layout is free right now (for tests).

    Layouts that overlap the ephemeral port range are avoided when any other fits: while a
    process of the cluster is down (a test killed it), any outgoing connection on the machine
    may take its port as a source port (or connect to itself on it), and the restart then fails
    with "address already in use".
    """
    rng = random.Random()
    eph_lo, eph_hi = ephemeral_port_range()
    bases = list(range(low, high - PORT_SPAN, 50))
    outside = [b for b in bases if b + PORT_SPAN < eph_lo or b > eph_hi]
    bases = outside or bases
    for _ in range(attempts_max):
        base = rng.choice(bases)
        if ports_free(cluster_ports(base, nodes, rms)):
            return base
    raise ClusterError(f"no free port range of {PORT_SPAN} in {low}..{high}")


def _read_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:
        return []  # a zombie, or a kernel thread
    return raw.rstrip(b"\0").decode(errors="surrogateescape").split("\0")


def pid_is(pid: int, argv: Iterable[str]) -> bool:
    """True if ``pid`` is alive and is the process started with ``argv``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: not ours
    if not Path("/proc").is_dir():  # no procfs: the liveness check is all we have
        return True
    return _read_cmdline(pid) == list(argv)


class LocalCluster:
    """etcd, two metas, ``nodes`` storage nodes, ``rms`` request managers and HAProxy.

    The handle is cheap and stateless apart from the children it started: another
    ``LocalCluster`` on the same data dir (``rangekv down``) finds the processes by pid file.
    """

    def __init__(
        self,
        data_dir: Path | str,
        base_port: int = 8400,
        nodes: int = 5,
        rms: int = 2,
        *,
        groups: int = 1,
        command: Sequence[str] | None = None,
        stop_timeout_s: float = STOP_TIMEOUT_S_DEFAULT,
        extra_args: dict[str, tuple[str, ...]] | None = None,
        compact_entries: int | None = None,
        compact_retain: int | None = None,
        meta_args: Sequence[str] = (),
        log_format: str | None = None,
        log_level: str | None = None,
        config_file: Path | None = None,
        haproxy_timeouts: HaproxyTimeouts | None = None,
        node_ids: Sequence[int] | None = None,
    ) -> None:
        if node_ids is not None:
            nodes = max(nodes, len(node_ids))
        if not 1 <= nodes <= NODES_MAX:
            raise ClusterError(f"nodes must be in 1..{NODES_MAX}")
        if not 1 <= rms <= PROCS_PER_KIND_MAX:
            raise ClusterError(f"rms must be in 1..{PROCS_PER_KIND_MAX}")
        if groups < 1:
            raise ClusterError("groups must be at least 1")
        if groups > 1 and nodes < GROUP_SIZE * groups:
            raise ClusterError(f"{groups} group(s) of {GROUP_SIZE} need at least "
                               f"{GROUP_SIZE * groups} nodes, not {nodes}")
        if not 1024 <= base_port <= 65535 - PORT_SPAN:
            raise ClusterError(f"base port must be in 1024..{65535 - PORT_SPAN}")
        self.data_dir = Path(data_dir).absolute()
        self.base_port = base_port
        #: the nodes' ids in port order (see the module docstring): 1..nodes by default
        self.node_ids = _node_ids(nodes, node_ids)
        self._node_places = {nid: i for i, nid in enumerate(self.node_ids, start=1)}
        self.nodes = nodes
        self.rms = rms
        #: the meta forms groups of three from spares until there are this many
        self.groups = groups
        # How our own processes are started: the same interpreter (so the same venv) running
        # the console script's module. Tests substitute stand-ins here.
        self.command: tuple[str, ...] = tuple(command or (sys.executable, "-m", "rangekv.cli.main"))
        self.stop_timeout_s = stop_timeout_s
        #: the nodes' ``--compact-entries`` / ``--compact-retain`` (None: the node's default)
        self.compact_entries = compact_entries
        self.compact_retain = compact_retain
        #: a command prefix per process name (e.g. ``("fiu-run", "-x")``), put before its argv
        #: when it is started; it must exec the argv, so that the pid and /proc cmdline are
        #: the process's own (see ``pid_is``).
        self.wrappers: dict[str, tuple[str, ...]] = {}
        #: more flags per kind of process ("meta", "node", "rm"), put after its own (e.g.
        #: low split thresholds for a test)
        self.extra_args: dict[str, tuple[str, ...]] = dict(extra_args or {})
        if meta_args:  # extra flags for both metas (e.g. ``("--replace-grace-ms", "2000")``)
            self.extra_args["meta"] = (*self.extra_args.get("meta", ()), *meta_args)
        #: given to every meta, node and rm (None: not passed, the process's own default)
        self.log_format = log_format
        self.log_level = log_level
        self.config_file = config_file
        #: HAProxy's timeouts (None: ``HaproxyTimeouts()``, set against the rms' defaults);
        #: tests lower them together with the rms' own (``extra_args["rm"]``)
        self.haproxy_timeouts = haproxy_timeouts
        self._popens: dict[str, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[str, int] = {}  # of children that exited, for error messages

    @classmethod
    def open(
        cls,
        data_dir: Path | str,
        base_port: int | None = None,
        nodes: int | None = None,
        rms: int | None = None,
        groups: int | None = None,
        **kwargs: Any,
    ) -> LocalCluster:
        """The cluster of ``data_dir`` with the settings it was created with (``cluster.json``).

        Ports cannot change once a cluster has data: nodes and etcd remember addresses. More
        groups (and nodes) may be asked for later; the meta forms the new groups from spares.
        """
        saved: dict[str, Any] = {}
        path = Path(data_dir) / "cluster.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if base_port is not None and base_port != saved.get("base_port", base_port):
                raise ClusterError(
                    f"{data_dir} holds a cluster on base port {saved['base_port']}, not "
                    f"{base_port}; use --base-port {saved['base_port']} or another data dir"
                )
        # how the processes log and the file they read, as the last `up` that said so asked:
        # a process restarted later must not write text into a log of JSON lines
        for key in ("log_format", "log_level", "config_file"):
            if kwargs.get(key) is None and saved.get(key) is not None:
                kwargs[key] = Path(saved[key]) if key == "config_file" else saved[key]
        groups_n = groups if groups is not None else int(saved.get("groups", 1))
        if nodes is None:
            nodes = int(saved.get("nodes", 5))
            if groups is not None:
                nodes = max(nodes, nodes_for(groups))
        if "node_ids" not in kwargs and saved.get("node_ids") is not None:
            kwargs["node_ids"] = [int(i) for i in saved["node_ids"]]
        return cls(
            data_dir,
            base_port if base_port is not None else int(saved.get("base_port", 8400)),
            nodes,
            rms if rms is not None else int(saved.get("rms", 2)),
            groups=groups_n,
            **kwargs,
        )

    # --- addresses ----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """HAProxy: the URL clients use."""
        return f"http://{HOST}:{self.base_port}"

    @property
    def rm_endpoints(self) -> list[str]:
        return [f"http://{self.host_of(f'rm-{i}')}:{self.rm_port(i)}"
                for i in range(1, self.rms + 1)]

    def rm_port(self, i: int) -> int:
        return self.base_port + 10 + i

    def rm_native_port(self, i: int) -> int:
        return self.base_port + 1 + i

    @property
    def native_endpoint(self) -> str:
        """HAProxy's native client endpoint (``rangekv://``), what the Python client uses."""
        return f"rangekv://{HOST}:{self.base_port + 1}"

    @property
    def rm_native_endpoints(self) -> list[str]:
        return [f"rangekv://{self.host_of(f'rm-{i}')}:{self.rm_native_port(i)}"
                for i in range(1, self.rms + 1)]

    def meta_port(self, i: int) -> int:
        return self.base_port + 19 + i

    @property
    def meta_addresses(self) -> dict[int, str]:
        """meta-i's address, i = 1..METAS (which one is active: ``/v1/cluster`` → ``meta``)."""
        return {i: f"{self.host_of(f'meta-{i}')}:{self.meta_port(i)}" for i in range(1, METAS + 1)}

    @property
    def meta_address(self) -> str:
        """Every meta, comma-separated: what nodes get as ``--meta``."""
        return ",".join(self.meta_addresses.values())

    def node_place(self, i: int) -> int:
        """Node ``i``'s place in the port layout (its id, unless ``node_ids`` says otherwise)."""
        if self.node_ids[-1] == self.nodes:  # ids 1..nodes: the place is the id
            return i
        return self._node_places[i]

    def node_port(self, i: int) -> int:
        return self.base_port + node_port_offset(self.node_place(i))

    @property
    def node_addresses(self) -> dict[int, str]:
        return {i: f"{self.host_of(f'node-{i}')}:{self.node_port(i)}" for i in self.node_ids}

    def node_metrics_port(self, i: int) -> int:
        return self.base_port + NODE_METRICS_OFFSET + self.node_place(i)

    def meta_metrics_port(self, i: int) -> int:
        return self.base_port + META_METRICS_OFFSET + i

    @property
    def metrics_urls(self) -> dict[str, str]:
        """Every process's Prometheus /metrics URL by process name (``lb``: through HAProxy,
        answered by one rm)."""
        urls = {"lb": f"{self.endpoint}/metrics"}
        urls.update({f"rm-{i}": f"{url}/metrics" for i, url in
                     enumerate(self.rm_endpoints, start=1)})
        for i in range(1, METAS + 1):
            urls[f"meta-{i}"] = (f"http://{self.host_of(f'meta-{i}')}:"
                                 f"{self.meta_metrics_port(i)}/metrics")
        for i in self.node_ids:
            urls[f"node-{i}"] = (f"http://{self.host_of(f'node-{i}')}:"
                                 f"{self.node_metrics_port(i)}/metrics")
        return urls

    @property
    def etcd_endpoint(self) -> str:
        """The etcd client URL(s), comma-separated (what metas and rms get as ``--etcd``)."""
        return f"http://{HOST}:{self.base_port + 41}"

    def host_of(self, name: str) -> str:
        """The IP address process ``name`` listens on (all on loopback here; see
        :mod:`rangekv.chaos.netcluster` for one network namespace per process)."""
        return HOST

    def launch_prefix(self, name: str) -> tuple[str, ...]:
        """What goes before process ``name``'s argv when it is started (``wrappers``)."""
        return self.wrappers.get(name, ())

    def ports_to_check(self, spec: ProcSpec) -> tuple[int, ...]:
        """The ports of ``spec`` that must be free on this machine's loopback to start it."""
        return spec.ports

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def haproxy_cfg(self) -> Path:
        return self.data_dir / "haproxy.cfg"

    @property
    def names(self) -> list[str]:
        """Every process, in start order."""
        return (
            ["etcd"]
            + [f"meta-{i}" for i in range(1, METAS + 1)]
            + [f"node-{i}" for i in self.node_ids]
            + [f"rm-{i}" for i in range(1, self.rms + 1)]
            + ["haproxy"]
        )

    def describe(self) -> dict[str, Any]:
        """Every address, for printing (``rangekv up``)."""
        return {
            "endpoint": self.endpoint,
            "native_endpoint": self.native_endpoint,
            "rms": self.rm_endpoints,
            "metas": list(self.meta_addresses.values()),
            "nodes": list(self.node_addresses.values()),
            "etcd": self.etcd_endpoint,
            "data_dir": str(self.data_dir),
            "log_dir": str(self.log_dir),
        }

    # --- processes ----------------------------------------------------------------------------

    def spec(self, name: str) -> ProcSpec:
        our = self.command
        argv: tuple[str, ...]
        if name == "etcd":
            client, peer = self.etcd_endpoint, f"http://{HOST}:{self.base_port + 42}"
            argv = (
                procs.etcd_binary(),
                "--name",
                "rangekv",
                "--data-dir",
                str(self.data_dir / "etcd"),
                "--listen-client-urls",
                client,
                "--advertise-client-urls",
                client,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                f"rangekv={peer}",
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            )
            return ProcSpec(name, argv, (self.base_port + 41, self.base_port + 42))
        kind, _, num = name.partition("-")
        i = int(num) if num.isdigit() else 0
        if kind == "meta" and 1 <= i <= METAS:
            argv = (
                *our,
                "meta",
                "--id",
                str(i),
                "--listen",
                self.meta_addresses[i],
                "--etcd",
                self.etcd_endpoint,
                # rolling metadata backups (rangekv.metadata.backups), by the active meta
                "--backup-dir",
                str(self.data_dir / "backups" / "meta"),
                "--metrics-listen",
                f"{self.host_of(name)}:{self.meta_metrics_port(i)}",
                "--groups-min",
                str(self.groups),
                *self._common_args(),
                *self.extra_args.get("meta", ()),
            )
            return ProcSpec(name, argv, (self.meta_port(i), self.meta_metrics_port(i)))
        if name == "haproxy":
            argv = (haproxy_binary(), "-f", str(self.haproxy_cfg), "-db")
            return ProcSpec(name, argv, (self.base_port, self.base_port + 1))
        if kind == "node" and i in self._node_places:
            argv = (
                *our,
                "node",
                "--id",
                str(i),
                "--listen",
                self.node_addresses[i],
                "--data-dir",
                str(self.data_dir / name),
                "--meta",
                self.meta_address,
                "--metrics-listen",
                f"{self.host_of(name)}:{self.node_metrics_port(i)}",
                *self._common_args(),
                *self.extra_args.get("node", ()),
            )
            if self.compact_entries is not None:
                argv += ("--compact-entries", str(self.compact_entries))
            if self.compact_retain is not None:
                argv += ("--compact-retain", str(self.compact_retain))
            return ProcSpec(name, argv, (self.node_port(i), self.node_metrics_port(i)))
        if kind == "rm" and 1 <= i <= self.rms:
            argv = (
                *our,
                "rm",
                "--id",
                str(i),
                "--listen",
                f"{self.host_of(name)}:{self.rm_port(i)}",
                "--native-listen",
                f"{self.host_of(name)}:{self.rm_native_port(i)}",
                "--etcd",
                self.etcd_endpoint,
                *self._common_args(),
                *self.extra_args.get("rm", ()),
            )
            return ProcSpec(name, argv, (self.rm_port(i), self.rm_native_port(i)))
        raise KeyError(f"no process {name!r} in this cluster (have {', '.join(self.names)})")

    def _common_args(self) -> tuple[str, ...]:
        """What every meta, node and rm gets: the config file and log options of ``up``."""
        out: tuple[str, ...] = ()
        if self.config_file is not None:
            out += ("--config", str(self.config_file))
        if self.log_format is not None:
            out += ("--log-format", self.log_format)
        if self.log_level is not None:
            out += ("--log-level", self.log_level)
        return out

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _argv_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.argv"

    def _recorded(self, name: str) -> tuple[int, list[str]] | None:
        try:
            pid = int(self._pid_file(name).read_text().split()[0])
            argv = json.loads(self._argv_file(name).read_text())
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid, argv

    def pid(self, name: str) -> int | None:
        """The pid of a running process of this cluster, or None."""
        popen = self._popens.get(name)
        if popen is not None:
            code = popen.poll()
            if code is None:
                return popen.pid
            self._exit_codes[name] = code
            del self._popens[name]  # reaped
        recorded = self._recorded(name)
        if recorded is not None and pid_is(*recorded):
            return recorded[0]
        return None

    def alive(self, name: str) -> bool:
        return self.pid(name) is not None

    def running(self) -> list[str]:
        return [name for name in self._all_names() if self.alive(name)]

    def _all_names(self) -> list[str]:
        """Our names plus any other pid file in run/ (a cluster once started bigger)."""
        names = list(self.names)
        if self.run_dir.is_dir():
            for path in sorted(self.run_dir.glob("*.pid")):
                if path.stem not in names:
                    names.append(path.stem)
        return names

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of every log, for error messages and failing tests."""
        out = []
        for name in self._all_names():
            state = f"pid {self.pid(name)}" if self.alive(name) else "not running"
            out.append(f"----- {self.log_path(name)} ({state}) -----\n{self.log_tail(name, lines)}")
        return "\n".join(out)

    @contextlib.contextmanager
    def logs_on_failure(self, lines: int = LOG_TAIL_LINES) -> Iterator[None]:
        """Print the end of every log when the body fails (pytest shows it with the failure)."""
        try:
            yield
        except BaseException:
            print(self.log_tails(lines))
            raise

    # --- start --------------------------------------------------------------------------------

    def start(self, skip: Iterable[str] = ()) -> list[str]:
        """Start every process that is not running (but those in ``skip``), in order; returns
        the names started."""
        skipped = set(skip)
        for d in (self.data_dir, self.log_dir, self.run_dir, self.data_dir / "backups"):
            perms.private_dir(d, logger=_log)  # keys and values live here: the owner's only
        self._save_settings()
        if self.alive("meta"):
            # The single meta of a data dir started before there were two holds meta-1's port;
            # meta-1 and meta-2 replace it (the metadata is in etcd, nothing is lost).
            self.stop(["meta"])
        started: list[str] = []
        for name in self.names:
            if self.alive(name) or name in skipped:
                continue
            spec = self.spec(name)
            busy = [p for p in self.ports_to_check(spec) if not _port_free(p)]
            if busy:
                raise ClusterError(
                    f"cannot start {name}: port {busy[0]} is in use by a process that is not "
                    f"part of the cluster in {self.data_dir}"
                )
            if name == "haproxy":
                self._write_haproxy_cfg()
            self._spawn(spec)
            started.append(name)
            if name.partition("-")[0] == "etcd":
                self._wait_etcd(name)
        return started

    def _save_settings(self) -> None:
        path = self.data_dir / "cluster.json"
        settings: dict[str, Any] = {"base_port": self.base_port, "nodes": self.nodes,
                                    "rms": self.rms, "groups": self.groups,
                                    "metrics": self.metrics_urls}
        if self.node_ids[-1] != self.nodes:  # ids other than 1..nodes (a restored cluster)
            settings["node_ids"] = list(self.node_ids)
        for key, value in (("log_format", self.log_format), ("log_level", self.log_level),
                           ("config_file", self.config_file)):
            if value is not None:
                settings[key] = str(value)
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("base_port") != self.base_port:
                raise ClusterError(
                    f"{self.data_dir} holds a cluster on base port {saved.get('base_port')}, "
                    f"not {self.base_port}"
                )
        tmp = path.with_suffix(".tmp")
        perms.write_private(tmp, json.dumps(settings, indent=2) + "\n")
        tmp.replace(path)

    def _write_haproxy_cfg(self) -> None:
        ports = [self.rm_port(i) for i in range(1, self.rms + 1)]
        hosts = [self.host_of(f"rm-{i}") for i in range(1, self.rms + 1)]
        perms.write_private(self.haproxy_cfg, haproxy_config(
            self.base_port, ports, hosts, timeouts=self.haproxy_timeouts,
            rm_native_ports=[self.rm_native_port(i) for i in range(1, self.rms + 1)]))
        check = subprocess.run(
            [haproxy_binary(), "-c", "-f", str(self.haproxy_cfg)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0:
            output = (check.stdout + check.stderr).decode(errors="replace")
            raise ClusterError(f"HAProxy refused {self.haproxy_cfg}:\n{output}")

    def _spawn(self, spec: ProcSpec) -> None:
        log = self.log_path(spec.name)
        ours = spec.argv[: len(self.command)] == self.command
        if ours and self.log_format == "json":
            # the process writes JSON lines here: so does the line that says how it started
            banner = json.dumps({
                "ts": rangekv_log.rfc3339_ms(time.time()), "level": "INFO", "component": "up",
                "logger": "rangekv.cluster", "msg": f"rangekv up: starting {spec.name}",
                "pid": os.getpid(), "argv": list(spec.argv)})
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            banner = f"=== {stamp} rangekv up: starting {spec.name}: {' '.join(spec.argv)}"
        with perms.open_private(log, append=True) as f:  # before the child opens it: 0600
            f.write(f"{banner}\n".encode())
        proc = procs.spawn(
            spec.name,
            [*self.launch_prefix(spec.name), *spec.argv],
            log,
            env={"PYTHONUNBUFFERED": "1", **self.extra_env(spec.name)},
        )
        self._popens[spec.name] = proc.popen
        perms.write_private(self._argv_file(spec.name), json.dumps(list(spec.argv)) + "\n")
        perms.write_private(self._pid_file(spec.name), f"{proc.pid}\n")

    def extra_env(self, name: str) -> dict[str, str]:
        """Environment variables for process ``name`` beyond the inherited ones."""
        return {}

    def etcd_client_url(self, name: str) -> str:
        """The client URL of etcd member ``name``."""
        return self.etcd_endpoint

    def _wait_etcd(self, name: str = "etcd") -> None:
        url = self.etcd_client_url(name) + "/health"

        def healthy() -> bool:
            if not self.alive(name):
                raise ClusterError("etcd exited")
            resp = httpx.get(url, timeout=PROBE_TIMEOUT_S, trust_env=False)
            return resp.status_code == 200 and b"true" in resp.content

        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        while True:
            try:
                if healthy():
                    return
            except ClusterError:
                raise ClusterError(f"{name} exited at start:\n{self.log_tail(name)}") from None
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{name} not healthy after {ETCD_START_TIMEOUT_S}s:\n{self.log_tail(name)}"
                )
            time.sleep(0.1)

    # --- ready --------------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S_DEFAULT) -> dict[str, Any]:
        """Return the topology once the cluster serves writes; raise ClusterError after timeout_s.

        Ready means: every process runs, HAProxy and every rm answer ``/healthz`` with 200,
        every rm's ``/v1/cluster`` shows at least ``groups`` groups, each with a leader of
        epoch > 0, and HAProxy's native port answers.
        """
        deadline = time.monotonic() + timeout_s
        reason = "not checked yet"
        with httpx.Client(timeout=PROBE_TIMEOUT_S, trust_env=False) as http:
            while True:
                dead = [n for n in self.names if not self.alive(n)]
                if dead:
                    codes = {n: self._exit_code(n) for n in dead}
                    raise ClusterError(
                        "exited: "
                        + ", ".join(f"{n} (code {c})" for n, c in codes.items())
                        + "\n"
                        + self.log_tails()
                    )
                try:
                    ready, reason, info = self._probe(http)
                except httpx.HTTPError as exc:
                    ready, reason, info = False, f"{type(exc).__name__}: {exc}", {}
                if ready:
                    return info
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"cluster in {self.data_dir} not ready after {timeout_s}s: {reason}\n"
                        + self.log_tails()
                    )
                time.sleep(0.2)

    def _probe(self, http: httpx.Client) -> tuple[bool, str, dict[str, Any]]:
        for url in [self.endpoint, *self.rm_endpoints]:
            resp = http.get(url + "/healthz")
            if resp.status_code != 200:
                return False, f"{url}/healthz answered {resp.status_code}", {}
        info: dict[str, Any] = {}
        for url in self.rm_endpoints:
            resp = http.get(url + "/v1/cluster")
            if resp.status_code != 200:
                return False, f"{url}/v1/cluster answered {resp.status_code}", {}
            info = resp.json()
            ok, why = cluster_ready(info, self.groups)
            if not ok:
                return False, f"{url}: {why}", info
        # the native port through HAProxy, which checks the rms on its own schedule
        from rangekv import errors
        from rangekv.client import Client

        with Client(self.native_endpoint, timeout_s=PROBE_TIMEOUT_S, retries=0) as db:
            try:
                db.tables()
            except errors.RangeKVError as exc:
                return False, f"{self.native_endpoint}: {exc}", info
        return True, "ready", info

    def _exit_code(self, name: str) -> int | None:
        return self._exit_codes.get(name)

    # --- stop and kill ------------------------------------------------------------------------

    def _phases(self) -> list[list[str]]:
        order = ["haproxy", "rm-", "node-", "meta-", "etcd-"]
        phases: list[list[str]] = [[] for _ in order]
        others: list[str] = []
        for name in self._all_names():
            for i, prefix in enumerate(order):
                # "meta" alone: the single meta of a data dir started before there were two
                if name in (prefix, prefix.rstrip("-")) or (
                    prefix.endswith("-") and name.startswith(prefix)
                ):
                    phases[i].append(name)
                    break
            else:
                others.append(name)
        return [others, *phases]

    def stop(self, names: Iterable[str] | None = None) -> list[str]:
        """SIGTERM everything (reverse start order), SIGKILL stragglers; returns names stopped.

        ``names``: only these (still in reverse start order).
        """
        only = None if names is None else set(names)
        stopped: list[str] = []
        for phase in self._phases():
            if only is not None:
                phase = [name for name in phase if name in only]
            pids = {name: pid for name in phase if (pid := self.pid(name)) is not None}
            for name, pid in pids.items():
                self._signal(name, pid, signal.SIGTERM)
            left = self._wait_gone(pids, self.stop_timeout_s)
            for name, pid in left.items():
                self._signal(name, pid, signal.SIGKILL)
            left = self._wait_gone(left, STOP_TIMEOUT_S_DEFAULT)
            if left:
                raise ClusterError(f"could not stop {', '.join(left)}")
            stopped.extend(pids)
            for name in phase:
                self._forget(name)
        return stopped

    def kill(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` to one process (``kill -9`` by default); False if it was not running.

        For SIGKILL/SIGTERM/SIGINT, waits until it is gone. ``start()`` brings it back.
        """
        self.spec(name)  # KeyError for a name that is not ours
        pid = self.pid(name)
        if pid is None:
            return False
        self._signal(name, pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            if self._wait_gone({name: pid}, self.stop_timeout_s):
                raise ClusterError(f"{name} (pid {pid}) did not exit on signal {sig}")
            self._forget(name)
        return True

    def pause(self, name: str) -> bool:
        """SIGSTOP: the process hangs (a stand-in for a slow or partitioned machine)."""
        return self.kill(name, signal.SIGSTOP)

    def resume(self, name: str) -> bool:
        return self.kill(name, signal.SIGCONT)

    def _signal(self, name: str, pid: int, sig: int) -> None:
        popen = self._popens.get(name)
        with contextlib.suppress(ProcessLookupError):
            if popen is not None and popen.pid == pid:
                popen.send_signal(sig)
            else:
                os.kill(pid, sig)
        if sig in (signal.SIGTERM, signal.SIGINT):
            # a stopped (paused) process only acts on SIGTERM once continued
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _wait_gone(self, pids: dict[str, int], timeout_s: float) -> dict[str, int]:
        """Wait until the processes exit (reaping our children); returns those still alive."""
        deadline = time.monotonic() + timeout_s
        left = dict(pids)
        while left:
            for name in list(left):
                if self.pid(name) != left[name]:
                    del left[name]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return left

    def _forget(self, name: str) -> None:
        popen = self._popens.pop(name, None)
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=1)
        for path in (self._pid_file(name), self._argv_file(name)):
            path.unlink(missing_ok=True)

    def release(self) -> None:
        """Leave the started processes running without this handle (``up --detach``)."""
        for popen in self._popens.values():
            # Popen warns when collected while its process runs; it is meant to outlive us.
            popen.returncode = 0
        self._popens.clear()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.data_dir)!r}, base_port={self.base_port})"


def cluster_ready(info: dict[str, Any], groups_min: int = 1) -> tuple[bool, str]:
    """Whether a ``/v1/cluster`` answer shows a cluster that can take writes (at least
    ``groups_min`` groups, each with a leader), and why not."""
    groups = info.get("groups")
    if not isinstance(groups, list) or not groups:
        return False, "no replication group yet"
    if len(groups) < groups_min:
        return False, f"{len(groups)} of {groups_min} groups formed"
    for group in groups:
        if not isinstance(group, dict):
            return False, "malformed group"
        if group.get("leader") is None:
            return False, f"group {group.get('id')} has no leader"
        if not int(group.get("epoch") or 0) > 0:
            return False, f"group {group.get('id')} is at epoch 0"
    return True, "ready"


@contextlib.contextmanager
def running_cluster(
    data_dir: Path | str, ready_timeout_s: float = READY_TIMEOUT_S_DEFAULT, **kwargs: Any
) -> Iterator[LocalCluster]:
    """A started, ready cluster that is always stopped afterwards (tests, benchmarks)."""
    if "base_port" not in kwargs:
        kwargs["base_port"] = find_free_base_port(kwargs.get("nodes", 5), kwargs.get("rms", 2))
    cluster = LocalCluster(data_dir, **kwargs)
    try:
        cluster.start()
        cluster.wait_ready(ready_timeout_s)
        yield cluster
    finally:
        cluster.stop()
