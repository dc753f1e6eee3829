"""Scripted interaction tests for the replication core (after etcd-io/raft's datadriven tests).

A script drives a few ``Core`` instances through an in-memory network and disk, one command at a
time, and records everything each core asked its driver to do. The golden output is part of the
script; ``REWRITE=1`` regenerates it (only on purpose: read the diff before committing it).

File format
-----------
A file is a list of cases. Lines starting with ``#`` and blank lines before a command are
comments (kept as they are on rewrite). A case is one command line, a ``----`` line, then the
output, which ends at the next blank line or the end of the file. Output never contains a blank
line; a command with nothing to report prints ``ok``.

Commands (``ID`` is a node id, ``IDS`` a comma-separated list such as ``1,3``)
------------------------------------------------------------------------------
add-nodes N [heartbeat_ticks=T] [quorum_ticks=T] [campaign_ticks=T] [append_bytes_max=B]
    nodes 1..N, all members, empty logs, empty hard state (other Config fields as in
    core.Config; the no-op payload is ``noop``).
campaign ID epoch=E           what meta does for the chosen node: ``core.campaign(E)``.
propose ID DATA               ``core.propose(DATA)``; prints ``proposed E/I`` or the error.
read ID TOKEN                 ``core.read(TOKEN)``; prints the error, if any.
tick ID [N] / tick-all [N]    N ticks (default 1); each tick's Ready under ``> ID tick T``.
sync ID [ID ...]              complete the oldest pending fsync of each node (an id given twice
                              syncs twice): the log prefix and hard state of that Ready become
                              durable, its after-sync messages go on the wire, then on_synced.
deliver-msgs [ID ...] [from=IDS] [type=T] [drop=IDS]
                              deliver, in send order, the queued messages to the given nodes
                              (all if none), optionally only from ``from`` / of type ``T``;
                              those addressed to a node in ``drop`` are lost instead. Messages
                              sent during delivery stay queued for the next command.
drop-msgs [ID ...] [from=IDS] [type=T]    lose the selected queued messages.
net                           list the queued messages.
stabilize                     repeat {every fsync of every node; deliver everything queued}
                              until nothing is pending (an error after 50 rounds). No ticks.
crash ID                      the process dies: unsynced log suffix, unsynced hard state,
                              pending fsyncs, its inbox and all volatile state are lost.
restart ID                    a new Core from the durable log, hard state and applied index.
partition IDS/IDS[/...] / heal    messages across the cut are dropped when delivered.
status [ID]                   role, epoch, leader, last, commit, applied, stable per node.
log ID                        the node's log; entries not yet durable are marked.

Ready handling is automatic: after every input (campaign, propose, read, tick, a delivered
message, on_synced) the env takes ``core.ready()``, does what it asks and prints it:

    hardstate promised=E to=N     persisted with the next fsync
    truncate from=I               cut the log at I
    entries [E/I DATA, ...]       written, durable only after the next fsync
    send A->B ...                 on the wire now
    after-sync A->B ...           held until this Ready's fsync (``sync``)
    committed [E/I DATA, ...]     applied to the state machine at once (``on_applied``)
    read TOKEN@I answered         a confirmed read, answered once applied >= I
    read TOKEN@I waits for apply    (later printed as ``read TOKEN@I answered``)
    read TOKEN failed             leadership was lost before it was confirmed
    became-leader e=E             the epoch's no-op committed: the node serves
    lost-leadership

Layout: campaign, propose and read print the node's Ready lines as they are. Commands that
cause several events print each under a header at column 0 with its Ready lines indented: the
delivered message ``A->B ...`` (or ``dropped: ...`` under it), ``> ID fsync: log up to E/I[,
hardstate]`` (the after-sync messages it releases print as ``send``), ``> ID tick T``.

Messages print as ``A->B type e=EPOCH`` plus their fields: ``last=E/I`` (a log's last entry),
``prev=E/I`` (append/fetch position), ``match=I``, ``hint=I``, ``commit=I``, ``ctx=N``,
``entries=[...]``. Payloads print as text; the no-op payload is ``noop``.

The env also asserts, after every step: one leader per epoch, and every node applies the same
entry at a given index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rangekv.replication.core import LEADER, Config, Core, NotLeaderError, Ready
from rangekv.replication.messages import (
    APPEND,
    APPEND_RESP,
    FETCH,
    FETCH_RESP,
    HEARTBEAT,
    HEARTBEAT_RESP,
    NEW_EPOCH,
    NEW_EPOCH_RESP,
    TYPES,
    Entry,
    Msg,
)
from rangekv.storage.memlog import MemoryLog

NOOP = b"noop"
STABILIZE_ROUNDS_MAX = 50
IND = "  "


# ---------------------------------------------------------------------------------- formatting
def fmt_entries(entries: list[Entry]) -> str:
    return "[" + ", ".join(
        f"{e.epoch}/{e.index} {e.payload.decode('utf-8', 'backslashreplace')}" for e in entries
    ) + "]"


def fmt_msg(m: Msg) -> str:
    if m.type in (NEW_EPOCH, NEW_EPOCH_RESP):
        body = "reject" if m.reject else f"last={m.log_epoch}/{m.index}"
    elif m.type == APPEND:
        body = f"prev={m.log_epoch}/{m.index} commit={m.commit} entries={fmt_entries(m.entries)}"
    elif m.type == APPEND_RESP:
        body = f"reject hint={m.index}" if m.reject else f"match={m.index}"
    elif m.type == HEARTBEAT:
        body = f"commit={m.commit} ctx={m.ctx}"
    elif m.type == HEARTBEAT_RESP:
        body = f"ctx={m.ctx} " + ("reject" if m.reject else f"last={m.index}")
    elif m.type == FETCH:
        body = f"prev={m.log_epoch}/{m.index}"
    else:
        assert m.type == FETCH_RESP, m
        last = f"last={m.log_epoch}/{m.commit}"
        if m.reject:
            body = "reject done" if m.done else f"reject hint={m.index} {last}"
        else:
            body = f"prev={m.index} entries={fmt_entries(m.entries)} {last}"
            body += " done" if m.done else ""
    return f"{m.frm}->{m.to} {m.type} e={m.epoch} {body}"


# ---------------------------------------------------------------------------------- one node
@dataclass
class Persist:
    """One Ready's writes, waiting for their fsync."""

    last: int  # on_synced(last, epoch) once durable
    epoch: int
    durable_upto: int  # log prefix this fsync makes durable (lowered by a later truncation)
    hard: dict[str, int] | None
    after_sync: list[Msg]


@dataclass
class Node:
    id: int
    members: list[int]
    cfg: Config
    log: MemoryLog = field(default_factory=MemoryLog)
    hard: dict[str, int] = field(default_factory=dict)  # durable hard state
    applied: int = 0  # durable with the state machine (same batch as the data)
    core: Core | None = None
    pending: list[Persist] = field(default_factory=list)
    reads: list[tuple[Any, int]] = field(default_factory=list)  # confirmed, waiting for apply

    def start(self) -> None:
        assert self.log.durable == self.log.last_index
        self.core = Core(self.id, self.members, self.log, dict(self.hard), self.applied, self.cfg)

    def crash(self) -> list[str]:
        lost = self.log.crash()
        out = [f"lost entries {fmt_entries(lost)}"] if lost else []
        hard_lost = any(p.hard is not None for p in self.pending)
        held = sum(len(p.after_sync) for p in self.pending)
        if hard_lost:
            out.append("lost hardstate not yet synced")
        if held:
            out.append(f"lost {held} after-sync message(s)")
        self.core, self.pending, self.reads = None, [], []
        return out


# ---------------------------------------------------------------------------------- the env
class Env:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.net: list[Msg] = []
        self.groups: dict[int, int] | None = None  # node -> side of the partition
        self.leaders: dict[int, int] = {}  # epoch -> node that led it
        self.applied_at: dict[int, Entry] = {}  # index -> the entry every node applies there

    # --------------------------------------------------------------- Ready handling
    def handle_ready(self, node: Node) -> list[str]:
        core = node.core
        assert core is not None
        rd: Ready = core.ready()
        out: list[str] = []
        if rd.hardstate:
            out.append(f"hardstate promised={rd.hardstate['promised_epoch']} "
                       f"to={rd.hardstate['promised_to']}")
        if rd.truncate_from is not None:
            out.append(f"truncate from={rd.truncate_from}")
            node.log.truncate(rd.truncate_from)
            for p in node.pending:
                p.durable_upto = min(p.durable_upto, rd.truncate_from - 1)
        if rd.entries:
            out.append(f"entries {fmt_entries(rd.entries)}")
            node.log.append(rd.entries)
        out += [f"send {fmt_msg(m)}" for m in rd.messages]
        self.net += rd.messages
        out += [f"after-sync {fmt_msg(m)}" for m in rd.messages_after_sync]
        if rd.hardstate or rd.truncate_from is not None or rd.entries or rd.messages_after_sync:
            last = node.log.last_index
            node.pending.append(Persist(last, node.log.epoch_at(last), last,
                                        dict(rd.hardstate) if rd.hardstate else None,
                                        rd.messages_after_sync))
        if rd.committed:
            out.append(f"committed {fmt_entries(rd.committed)}")
            for e in rd.committed:
                assert e.index == node.applied + 1, ("applied out of order", node.id, e)
                assert e.index <= node.log.durable, ("applied a non-durable entry", node.id, e)
                seen = self.applied_at.setdefault(e.index, e)
                assert seen == e, ("replicas applied different entries", node.id, e, seen)
                node.applied = e.index
            core.on_applied(node.applied)
        for token, index in rd.reads:
            assert index <= core.commit, (token, index, core.commit)
            node.reads.append((token, index))
            if index > node.applied:
                out.append(f"read {token}@{index} waits for apply")
        out += [f"read {token} failed" for token in rd.failed_reads]
        answered = [(t, i) for t, i in node.reads if i <= node.applied]
        node.reads = [(t, i) for t, i in node.reads if i > node.applied]
        out += [f"read {t}@{i} answered" for t, i in answered]
        if rd.became_leader is not None:
            out.append(f"became-leader e={rd.became_leader}")
            led = self.leaders.setdefault(rd.became_leader, node.id)
            assert led == node.id, ("two leaders in one epoch", rd.became_leader, led, node.id)
        if rd.lost_leadership:
            out.append("lost-leadership")
        return out

    def live(self, node_id: int) -> Node:
        node = self.nodes[node_id]
        if node.core is None:
            raise ValueError(f"node {node_id} is down")
        return node

    def sync(self, node: Node) -> list[str]:
        if not node.pending:
            return [f"> {node.id} fsync: nothing pending"]
        p = node.pending.pop(0)
        node.log.make_durable(p.durable_upto)
        what = f"log up to {node.log.epoch_at(p.durable_upto)}/{p.durable_upto}"
        if p.hard is not None:
            node.hard = p.hard
            what += ", hardstate"
        out = [f"> {node.id} fsync: {what}"]
        out += [f"{IND}send {fmt_msg(m)}" for m in p.after_sync]
        self.net += p.after_sync
        assert node.core is not None
        if p.hard is not None:
            node.core.on_hardstate_synced(p.hard)
        node.core.on_synced(p.last, p.epoch)
        return out + [IND + line for line in self.handle_ready(node)]

    def deliver(self, m: Msg) -> list[str]:
        out = [fmt_msg(m)]
        target = self.nodes[m.to]
        if target.core is None:
            return out + [f"{IND}dropped: {m.to} is down"]
        if self.groups is not None and self.groups[m.frm] != self.groups[m.to]:
            return out + [f"{IND}dropped: partition"]
        target.core.step(m)
        return out + [IND + line for line in self.handle_ready(target)]

    def select(self, pos: list[str], kw: dict[str, str]) -> list[Msg]:
        to = {int(a) for a in pos}
        frm = ids(kw["from"]) if "from" in kw else None
        mtype = kw.get("type")
        if mtype is not None and mtype not in TYPES:
            raise ValueError(f"unknown message type {mtype!r}")
        return [m for m in self.net if (not to or m.to in to)
                and (frm is None or m.frm in frm) and (mtype is None or m.type == mtype)]

    def take(self, msgs: list[Msg]) -> None:
        chosen = {id(m) for m in msgs}
        self.net = [m for m in self.net if id(m) not in chosen]

    # --------------------------------------------------------------- commands
    def run(self, command: str) -> list[str]:
        name, *args = command.split()
        pos = [a for a in args if "=" not in a]
        kw = dict(a.split("=", 1) for a in args if "=" in a)
        handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown command {name!r}")
        out: list[str] = handler(pos, kw)
        return out or ["ok"]

    def cmd_add_nodes(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        if self.nodes:
            raise ValueError("add-nodes once per script")
        cfg = Config(noop_payload=NOOP, **{k: int(v) for k, v in kw.items()})
        members = list(range(1, int(pos[0]) + 1))
        for i in members:
            self.nodes[i] = Node(i, members, cfg)
            self.nodes[i].start()
        return []

    def cmd_campaign(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.live(int(pos[0]))
        assert node.core is not None
        node.core.campaign(int(kw["epoch"]))
        return self.handle_ready(node)

    def cmd_propose(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.live(int(pos[0]))
        assert node.core is not None
        try:
            epoch, index = node.core.propose(pos[1].encode())
        except NotLeaderError as exc:
            return [f"error: NotLeaderError: {exc}"] + self.handle_ready(node)
        return [f"proposed {epoch}/{index}"] + self.handle_ready(node)

    def cmd_read(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.live(int(pos[0]))
        assert node.core is not None
        try:
            node.core.read(pos[1])
        except NotLeaderError as exc:
            return [f"error: NotLeaderError: {exc}"] + self.handle_ready(node)
        return self.handle_ready(node)

    def tick(self, node: Node, n: int) -> list[str]:
        out = []
        for _ in range(n):
            assert node.core is not None
            node.core.tick()
            lines = self.handle_ready(node)
            if lines:
                out += [f"> {node.id} tick {node.core.ticks}"] + [IND + x for x in lines]
        return out

    def cmd_tick(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        return self.tick(self.live(int(pos[0])), int(pos[1]) if len(pos) > 1 else 1)

    def cmd_tick_all(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        out = []
        for _ in range(int(pos[0]) if pos else 1):
            for node in self.nodes.values():
                if node.core is not None:
                    out += self.tick(node, 1)
        return out

    def cmd_sync(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        return [line for a in pos for line in self.sync(self.live(int(a)))]

    def cmd_deliver_msgs(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        msgs = self.select(pos, kw)
        self.take(msgs)
        drop = ids(kw["drop"]) if "drop" in kw else set()
        out = []
        for m in msgs:
            out += [fmt_msg(m), f"{IND}dropped"] if m.to in drop else self.deliver(m)
        return out

    def cmd_drop_msgs(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        msgs = self.select(pos, kw)
        self.take(msgs)
        return [f"dropped {fmt_msg(m)}" for m in msgs]

    def cmd_net(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        return [fmt_msg(m) for m in self.net] or ["no messages"]

    def cmd_stabilize(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        out: list[str] = []
        for _ in range(STABILIZE_ROUNDS_MAX):
            busy = [n for n in self.nodes.values() if n.pending]
            if not busy and not self.net:
                return out
            for node in busy:
                while node.pending:
                    out += self.sync(node)
            msgs, self.net = self.net, []
            for m in msgs:
                out += self.deliver(m)
        raise AssertionError(f"stabilize did not converge in {STABILIZE_ROUNDS_MAX} rounds")

    def cmd_crash(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.live(int(pos[0]))
        inbox = [m for m in self.net if m.to == node.id]
        self.take(inbox)
        out = node.crash()
        if inbox:
            out.append(f"lost {len(inbox)} message(s) addressed to {node.id}")
        return out or ["lost nothing: everything was durable"]

    def cmd_restart(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.nodes[int(pos[0])]
        if node.core is not None:
            raise ValueError(f"node {node.id} is up")
        node.start()
        return self.status_line(node) + self.handle_ready(node)

    def cmd_partition(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.groups = {n: side for side, part in enumerate(pos[0].split("/")) for n in ids(part)}
        if sorted(self.groups) != sorted(self.nodes):
            raise ValueError("a partition must place every node")
        return []

    def cmd_heal(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        self.groups = None
        return []

    def status_line(self, node: Node) -> list[str]:
        if node.core is None:
            last = node.log.last_index
            durable = f"{node.log.epoch_at(last)}/{last}"
            return [f"{node.id}: down, durable last={durable} applied={node.applied}"]
        s = node.core.status()
        line = (f"{node.id}: {s['role']} e={s['epoch']} leader={s['leader'] or '-'} "
                f"last={s['last_epoch']}/{s['last_index']} commit={s['commit_index']} "
                f"applied={s['applied_index']} stable={s['stable_index']}")
        if s["role"] == LEADER:
            line += f" serving={'yes' if node.core.serving else 'no'}"
        return [line]

    def cmd_status(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        chosen = [int(a) for a in pos] or list(self.nodes)
        return [line for i in chosen for line in self.status_line(self.nodes[i])]

    def cmd_log(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.nodes[int(pos[0])]
        return [fmt_entries([e])[1:-1] + (" (not durable)" if e.index > node.log.durable else "")
                for e in node.log.items] or ["empty"]


def ids(text: str) -> set[int]:
    return {int(x) for x in text.split(",") if x}


# ---------------------------------------------------------------------------------- files
@dataclass
class Case:
    comments: list[str]  # comment and blank lines before the command
    line: int  # 1-based line of the command
    command: str
    expected: list[str]
    actual: list[str] = field(default_factory=list)


def parse(text: str) -> tuple[list[Case], list[str]]:
    """The cases of a file and the comment lines after the last one."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    cases: list[Case] = []
    comments: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            comments.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ValueError(f"line {i + 2}: expected ---- after the command {line!r}")
        j = i + 2
        while j < len(lines) and lines[j].strip():
            j += 1
        cases.append(Case(comments, i + 1, line.strip(), lines[i + 2 : j]))
        comments = []
        i = j
    return cases, comments


def render(cases: list[Case], trailing: list[str]) -> str:
    out: list[str] = []
    for case in cases:
        out += case.comments + [case.command, "----"] + case.actual
    return "\n".join(out + trailing) + "\n"


def run_file(text: str) -> tuple[list[Case], str]:
    """Run every case of a script; returns the cases (with actual output) and the new text."""
    cases, trailing = parse(text)
    env = Env()
    for case in cases:
        try:
            case.actual = env.run(case.command)
        except Exception as exc:
            exc.add_note(f"while running line {case.line}: {case.command}")
            raise
        assert all(x.strip() for x in case.actual), case.actual
    return cases, render(cases, trailing)
