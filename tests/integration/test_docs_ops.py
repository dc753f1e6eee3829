"""docs/operations.md, rehearsed: the three-machine cluster it describes, run for real.

The page cannot drift from what works, because this test takes everything from it:

* every fenced block whose info string has ``file=PATH`` (env files, unit files, haproxy.cfg),
  per machine (``machine=A``; none means every machine);
* every block marked ``rehearse`` (``machine=A,B`` says where): its ``systemctl enable --now``
  / ``start`` / ``stop`` lines start or stop units, every other line runs in bash (one shell
  per block, ``set -e``); a block also marked ``wait`` is retried until it succeeds;
  ``systemctl stop`` takes globs (``'rangekv-node@*'``) over the machine's running units;
* a block marked ``rehearse-copy from=A to=B,C path=PATH`` (copying between machines, which
  the page does with rsync) is done as a local copy of PATH from one machine's root to the
  others'; its text must name each target machine's address and PATH.

There is no systemd here, so a unit is started the way systemd would: its
``EnvironmentFile=``s read, ``%i`` and ``${VAR}`` expanded in ``ExecStartPre=`` and
``ExecStart=``, ``StateDirectory=`` created, and the process spawned. ``User=`` is not
applied (the test runs as whoever runs it). The "machines" are loopback addresses; the text
of the page is mapped before use:

    10.0.0.1, .2, .3                 ->  127.0.0.2, .3, .4
    ports 2379 2380 8400 8411 8420 8431 8432  ->  16379 16380 16400 16411 16420 16431 16432
    metrics 9420 9431 9432                    ->  16520 16531 16532
    /etc/ /var/lib/                  ->  <tmp>/<machine>/etc/, <tmp>/<machine>/var/lib/
    /opt/rangekv/bin/                ->  this checkout's .venv/bin/; /usr/bin/etcd, /usr/sbin/haproxy
                                         ->  wherever they are installed

After the page's own steps (which end with the cluster restored from its backup) the test
checks that the restore ran and brought back a key written before the backup, then runs the curl tour of docs/api.md through HAProxy, kills
the group's leader with SIGKILL while writing, checks that writes go on and that every
acknowledged write reads back, restarts the node as ``Restart=on-failure`` would, and waits
until it is a member again. Every process is stopped by its pid at the end.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from rangekv.cluster.local import haproxy_binary, haproxy_config
from rangekv.request_manager import apidoc
from rangekv.testing import procs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
OPS_MD = ROOT / "docs" / "operations.md"
MACHINES = {"A": "127.0.0.2", "B": "127.0.0.3", "C": "127.0.0.4"}
DOC_IPS = {"10.0.0.1": "A", "10.0.0.2": "B", "10.0.0.3": "C"}
PORTS = {2379: 16379, 2380: 16380, 8400: 16400, 8411: 16411, 8420: 16420, 8431: 16431,
         8432: 16432, 9420: 16520, 9431: 16531, 9432: 16532}
BIN = str(Path(sys.executable).parent)  # this checkout's venv: rangekv, pip, python
RANGEKV = str(Path(BIN) / "rangekv")
WAIT_S = 90.0  # a `wait` block, or a condition below: generous, only turns a hang into a failure
COMMAND_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


# --- the page --------------------------------------------------------------------------------


@dataclass
class Block:
    lang: str
    attrs: dict[str, str]
    flags: set[str]
    text: str

    @property
    def machines(self) -> list[str]:
        value = self.attrs.get("machine")
        return value.split(",") if value else list(MACHINES)


def blocks(markdown: str) -> list[Block]:
    """Every fenced block, also those indented in a list item (their indent removed)."""
    out = []
    for m in re.finditer(r"^( *)```(\S+)([^\n]*)\n(.*?)^\1```\s*$", markdown,
                         re.MULTILINE | re.DOTALL):
        attrs, flags = {}, set()
        indent = len(m.group(1))
        text = "".join(line[indent:] for line in m.group(4).splitlines(keepends=True))
        for word in m.group(3).split():
            key, eq, value = word.partition("=")
            if eq:
                attrs[key] = value
            else:
                flags.add(word)
        out.append(Block(m.group(2), attrs, flags, text))
    return out


def tools() -> dict[str, str]:
    return {"/opt/rangekv/bin": BIN, "/usr/bin/etcd": procs.etcd_binary(),
            "/usr/sbin/haproxy": haproxy_binary()}


def mapped(text: str, root: Path, machine: str) -> str:
    """The page's text as it applies on the rehearsal's ``machine``."""
    for doc_ip, m in DOC_IPS.items():
        text = re.sub(rf"(?<![\d.]){re.escape(doc_ip)}(?![\d])", MACHINES[m], text)
    text = re.sub(r"(?<![\d.])(\d{4})(?![\d.])",
                  lambda m: str(PORTS.get(int(m.group(1)), m.group(1))), text)
    for path, real in tools().items():
        text = text.replace(path, real)
    home = root / machine
    text = re.sub(r"(?<![\w/.])/etc/", f"{home}/etc/", text)
    return re.sub(r"(?<![\w/.])/var/lib/", f"{home}/var/lib/", text)


# --- a tiny systemd --------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, eq, value = line.partition("=")
        assert eq, f"{path}: not NAME=value: {line!r}"
        env[key.strip()] = value.strip()
    return env


def parse_unit(text: str) -> dict[str, list[str]]:
    """The [Service] section's settings (each a list: settings may repeat)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    section, out = "", {}
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def expand(command: str, instance: str, env: dict[str, str]) -> list[str]:
    """systemd's command line rules, as far as the page uses them: %i and %%, ``${VAR}`` as
    (part of) one word, ``$VAR`` as a word split at whitespace."""
    argv = []
    for word in shlex.split(command):
        word = word.replace("%i", instance).replace("%%", "%")
        whole = re.fullmatch(r"\$([A-Za-z_]\w*)", word)
        if whole:
            argv.extend(env.get(whole.group(1), "").split())
            continue
        argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return argv


@dataclass
class Rehearsal:
    root: Path
    page: str
    prelude: str = ""  # the last `rehearse-env` block: run before every shell block after it
    running: dict[tuple[str, str], subprocess.Popen[bytes]] = field(default_factory=dict)

    def path(self, machine: str, doc_path: str) -> Path:
        return Path(mapped(doc_path, self.root, machine))

    def install_files(self) -> None:
        for b in blocks(self.page):
            if "file" in b.attrs:
                for machine in b.machines:
                    target = self.path(machine, b.attrs["file"])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(mapped(b.text, self.root, machine))

    def unit_text(self, machine: str, unit: str) -> tuple[str, str]:
        name = unit if unit.endswith(".service") else unit + ".service"
        base, at, instance = name.removesuffix(".service").partition("@")
        template = f"{base}@.service" if at else name
        path = self.path(machine, f"/etc/systemd/system/{template}")
        return path.read_text(), instance

    def start(self, machine: str, unit: str) -> None:
        if (machine, unit) in self.running and self.running[machine, unit].poll() is None:
            return
        text, instance = self.unit_text(machine, unit)
        service = parse_unit(text)
        env: dict[str, str] = {}
        for f in service.get("EnvironmentFile", []):
            env.update(read_env_file(Path(f.replace("%i", instance))))
        for d in service.get("StateDirectory", []):
            state = self.root / machine / "var" / "lib" / d.replace("%i", instance)
            state.mkdir(parents=True, exist_ok=True)
            state.chmod(int(service.get("StateDirectoryMode", ["0755"])[0], 8))
        for pre in service.get("ExecStartPre", []):
            done = subprocess.run(expand(pre, instance, env), capture_output=True,
                                  timeout=COMMAND_TIMEOUT_S, check=False)
            assert done.returncode == 0, f"{unit} on {machine}: ExecStartPre {pre}: {done}"
        (exec_start,) = service["ExecStart"]
        argv = expand(exec_start, instance, env)
        log = self.log_path(machine, unit)
        with open(log, "ab") as out:
            self.running[machine, unit] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})

    def log_path(self, machine: str, unit: str) -> Path:
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return logs / f"{machine}-{unit}.log"

    def stop(self, machine: str, unit: str, sig: int = signal.SIGTERM) -> None:
        proc = self.running.pop((machine, unit), None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        order = ["rangekv-haproxy", "rangekv-rm", "rangekv-node", "rangekv-meta", "rangekv-etcd"]
        for prefix in order:
            for machine, unit in [k for k in self.running if k[1].startswith(prefix)]:
                self.stop(machine, unit)

    def systemctl(self, machine: str, line: str) -> None:
        words = shlex.split(line)[1:]
        verb = words[0]
        units = [w for w in words[1:] if not w.startswith("-")]
        if verb in ("enable", "start", "restart") and (verb != "enable" or "--now" in words):
            for unit in units:
                if verb == "restart":
                    self.stop(machine, unit)
                self.start(machine, unit)
        elif verb == "stop":
            for pattern in units:
                # a glob names the loaded (here: started) units it matches, as in systemctl
                names = sorted(u for m, u in self.running if m == machine and fnmatch.fnmatch(
                    u, pattern)) if set(pattern) & set("*?[") else [pattern]
                # systemctl accepts a glob that matches nothing; here every machine runs nodes,
                # so that would mean the page's stop leaves running what it means to stop
                assert names, f"`{line}` on {machine}: {pattern} matches no running unit"
                for unit in names:
                    self.stop(machine, unit)
        elif verb == "disable" and "--now" not in words:
            pass  # only what starts at boot changes
        else:
            raise AssertionError(f"the rehearsal does not know `{line}`")

    def shell(self, machine: str, script: str, wait: bool) -> str:
        deadline = time.monotonic() + (WAIT_S if wait else 0)
        while True:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                                  timeout=COMMAND_TIMEOUT_S, check=False, text=True)
            if done.returncode == 0:
                return done.stdout
            if time.monotonic() > deadline:
                raise AssertionError(f"on {machine}:\n{script}\nexit {done.returncode}\n"
                                     f"{done.stdout}\n{done.stderr}\n{self.log_tails()}")
            time.sleep(0.5)

    def copy_block(self, b: Block) -> None:
        """A copy between machines: done locally, after checking the page says it."""
        path = b.attrs["path"]
        assert path.startswith("/var/lib/"), f"rehearse-copy of {path}: not under /var/lib/"
        src = self.path(b.attrs["from"], path)
        assert src.is_dir(), f"rehearse-copy: {src} does not exist"
        for machine in b.attrs["to"].split(","):
            doc_ip = next(ip for ip, m in DOC_IPS.items() if m == machine)
            assert doc_ip in b.text and path.rsplit("/", 1)[0] in b.text, (
                f"the rehearse-copy block does not say how {path} reaches {machine}")
            dst = self.path(machine, path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, dst)

    def run_block(self, b: Block) -> list[str]:
        if "rehearse-copy" in b.flags:
            self.copy_block(b)
            return []
        if "rehearse-env" in b.flags:
            self.prelude = b.text
            return []
        outputs: list[str] = []
        for machine in b.machines:
            prelude = mapped(self.prelude, self.root, machine)
            script: list[str] = []
            # shell lines run in order with the systemctl lines around them
            for line in [*b.text.splitlines(), "systemctl (end of block)"]:
                if line.strip().startswith("systemctl "):
                    if script:
                        outputs.append(self.shell(machine, prelude + "\n".join(script),
                                                  "wait" in b.flags))
                        script = []
                    if line != "systemctl (end of block)":
                        self.systemctl(machine, line)
                elif line.strip():
                    script.append(mapped(line, self.root, machine))
        return outputs

    def log_tails(self, lines: int = 25) -> str:
        out = []
        for path in sorted((self.root / "logs").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)


# --- helpers for the checks after the page's steps -------------------------------------------


def wait_for(what: str, check, rehearsal: Rehearsal, timeout_s: float = WAIT_S):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = check()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            got, last = None, exc
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{rehearsal.log_tails()}")


@contextlib.contextmanager
def rehearsal_of(root: Path) -> Iterator[Rehearsal]:
    r = Rehearsal(root, OPS_MD.read_text(encoding="utf-8"))
    try:
        yield r
    finally:
        r.stop_all()


def ports_free() -> bool:
    import socket

    for ip in MACHINES.values():
        for port in PORTS.values():
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((ip, port))
                except OSError:
                    return False
    return True


# --- tests -----------------------------------------------------------------------------------


def test_the_page_haproxy_cfg_is_the_one_rangekv_up_writes() -> None:
    (cfg,) = [b for b in blocks(OPS_MD.read_text()) if b.attrs.get("file", "").endswith(
        "haproxy.cfg")]
    ours = haproxy_config(8400, [8411, 8411, 8411], ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
                          errorfiles_dir="/etc/rangekv/haproxy-errors")
    strip = [ln for ln in ours.splitlines() if not ln.lstrip().startswith("#")]
    strip = [ln.replace("127.0.0.1:8400", "10.0.0.1:8400") for ln in strip]
    assert cfg.text.splitlines() == strip


def test_the_unit_files_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze on this machine")
    units = tmp_path / "units"
    units.mkdir()
    for b in blocks(OPS_MD.read_text()):
        name = b.attrs.get("file", "")
        if name.startswith("/etc/systemd/system/"):
            # the tools at their real paths, so that verify finds them executable
            (units / Path(name).name).write_text(mapped_tools_only(b.text))
    names = sorted(p.name.replace("@.service", "@1.service") for p in units.iterdir())
    done = subprocess.run([analyze, "verify", "--man=no", *names], cwd=units,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"})
    # verify exits 0 even when it ignores a line it cannot parse: any output is a problem
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
        done.stdout + done.stderr)


def mapped_tools_only(text: str) -> str:
    for path, real in tools().items():
        text = text.replace(path, real)
    return text


def test_three_machine_rehearsal(tmp_path: Path) -> None:
    if not ports_free():
        pytest.skip("the rehearsal's ports on 127.0.0.2-4 are in use")
    page = OPS_MD.read_text(encoding="utf-8")
    with rehearsal_of(tmp_path) as r:
        r.install_files()
        for b in blocks(page):
            if b.flags & {"rehearse", "rehearse-env", "rehearse-copy"}:
                r.run_block(b)

        endpoint = f"http://{MACHINES['A']}:{PORTS[8400]}"
        # The page restored its backup: the restore is recorded, and the key written before
        # the backup (in "First start") reads back from the restored group through HAProxy.
        status = httpx.get(f"{endpoint}/v1/cluster/status", trust_env=False, timeout=15).json()
        assert [d for d in status["decisions"] if d["kind"] == "restored"], status["decisions"]
        got = httpx.get(f"{endpoint}/v1/tables/Stocks/keys/B", trust_env=False, timeout=15)
        assert (got.status_code, got.text) == (200, "100")
        # the tour wants a cluster without the table the page's own steps created
        assert httpx.delete(f"{endpoint}/v1/tables/Stocks", trust_env=False,
                            timeout=15).status_code == 200
        script = apidoc.tour_script().replace("/tmp/big.bin", str(tmp_path / "big.bin"))
        tour = subprocess.run(["bash", "-c", script], capture_output=True,
                              text=True, timeout=120, check=False,
                              env={**os.environ, "E": endpoint})
        got = [int(ln.split()[1]) for ln in tour.stdout.splitlines()]
        want = [ex.status for ex in apidoc.EXAMPLES]
        assert got == want, (tour.stdout, tour.stderr)

        with httpx.Client(base_url=endpoint, timeout=10, trust_env=False) as http:
            assert http.put("/v1/tables/Failover").status_code == 201
            info = http.get("/v1/cluster").json()
            (group,) = info["groups"]
            leader = group["leader"]
            where = {n["id"]: n["address"] for n in info["nodes"]}
            machine = {v: k for k, v in MACHINES.items()}[where[leader].split(":")[0]]
            acked: dict[str, str] = {}

            def put(i: int) -> bool:
                resp = http.put(f"/v1/tables/Failover/keys/k{i}", content=f"v{i}")
                if resp.status_code == 200:
                    acked[f"k{i}"] = f"v{i}"
                return resp.status_code == 200

            for i in range(20):
                assert put(i)
            r.stop(machine, f"rangekv-node@{leader}", signal.SIGKILL)
            counter = iter(range(20, 10_000))
            wait_for("a write after the leader was killed", lambda: put(next(counter)), r)
            new = http.get("/v1/cluster").json()["groups"][0]
            assert new["leader"] != leader and new["epoch"] > group["epoch"]
            for key, value in acked.items():
                resp = http.get(f"/v1/tables/Failover/keys/{key}")
                assert (resp.status_code, resp.text) == (200, value)

            # Restart=on-failure brings it back: a follower of the new epoch
            r.start(machine, f"rangekv-node@{leader}")
            status = [RANGEKV, "--endpoint", endpoint, "--json", "nodes"]

            def member_again() -> bool:
                out = subprocess.run(status, capture_output=True, text=True, timeout=30,
                                     check=True).stdout
                nodes = {n["id"]: n for n in json.loads(out)["nodes"]}
                return nodes[leader]["state"] == "member" and nodes[leader]["role"] == "follower"

            wait_for(f"node {leader} to be a follower again", member_again, r)
