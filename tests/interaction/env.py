"""Scripted interaction tests for the replication core (after etcd-io/raft's datadriven tests).

A script drives a few ``Core`` instances through an in-memory network and disk, one command at a
time, and records everything each core asked its driver to do. Each core runs in the Ready loop
production runs (``rangekv.replication.loop.ReadyLoop``), over ``MemoryDisk``: what these
scripts show is what that loop does, fsync for fsync. The golden output is part of the
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

Ready handling is automatic: every input (campaign, propose, read, tick, a delivered message, a
completed fsync) goes to the node's ``ReadyLoop``, which takes ``core.ready()`` and performs it;
the env prints each Ready (the loop's ``observe``) and what the loop then did:

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

from rangekv.replication.core import LEADER, Config, NotLeaderError, Ready
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
from rangekv.testing.harness import NOOP, HarnessNode

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
class Node(HarnessNode):
    """One replica (``rangekv.testing.harness``): a core run by the shared Ready loop over an
    in-memory disk whose fsyncs complete when the script says (``sync``), on ``Env.net``. It
    prints what the loop does (``take`` collects it)."""

    def __init__(self, env: Env, node_id: int, members: list[int], cfg: Config) -> None:
        super().__init__(node_id, members, env, cfg, leaders=env.leaders,
                         applied_at=env.applied_at, observe=self.print_ready)
        self.env = env
        self.out: list[str] = []  # what the loop did since the last ``take``
        self.sent_mark: int | None = None  # len(env.net) when the first Ready was printed
        self.confirmed: list[tuple[Any, int]] = []  # reads confirmed, waiting for apply

    def take(self) -> list[str]:
        out, self.out = self.out, []
        return out

    # -- what the loop calls ---------------------------------------------------------------
    def print_ready(self, rd: Ready) -> None:
        if self.sent_mark is None:
            self.sent_mark = len(self.env.net)
        out = self.out
        if rd.hardstate:
            out.append(f"hardstate promised={rd.hardstate['promised_epoch']} "
                       f"to={rd.hardstate['promised_to']}")
        if rd.truncate_from is not None:
            out.append(f"truncate from={rd.truncate_from}")
        if rd.entries:
            out.append(f"entries {fmt_entries(rd.entries)}")
        out += [f"send {fmt_msg(m)}" for m in rd.messages]
        out += [f"after-sync {fmt_msg(m)}" for m in rd.messages_after_sync]
        if rd.committed:
            out.append(f"committed {fmt_entries(rd.committed)}")
        applied = rd.committed[-1].index if rd.committed else self.applied_index
        assert self.core is not None
        for token, index in rd.reads:
            assert index <= self.core.commit, (token, index, self.core.commit)
            if index > applied:
                out.append(f"read {token}@{index} waits for apply")
        out += [f"read {token} failed" for token in rd.failed_reads]
        self.confirmed += rd.reads

    def read_ready(self, token: Any) -> None:
        super().read_ready(token)
        at = next(i for i, (t, _) in enumerate(self.confirmed) if t == token)
        _, index = self.confirmed.pop(at)
        self.out.append(f"read {token}@{index} answered")

    def became_leader(self, epoch: int) -> None:
        self.out.append(f"became-leader e={epoch}")
        super().became_leader(epoch)  # (one leader per epoch)

    def lost_leadership(self) -> None:
        self.out.append("lost-leadership")
        super().lost_leadership()


# ---------------------------------------------------------------------------------- the env
class Env:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.net: list[Msg] = []
        self.groups: dict[int, int] | None = None  # node -> side of the partition
        self.leaders: dict[int, int] = {}  # epoch -> node that led it
        self.applied_at: dict[int, Entry] = {}  # index -> the entry every node applies there

    def send(self, msg: Msg) -> None:  # the loops' network
        self.net.append(msg)

    def live(self, node_id: int) -> Node:
        node = self.nodes[node_id]
        if node.core is None:
            raise ValueError(f"node {node_id} is down")
        return node

    def sync(self, node: Node) -> list[str]:
        if not node.disk.pending:
            return [f"> {node.id} fsync: nothing pending"]
        p = node.disk.pending[0]
        what = f"log up to {node.log.epoch_at(p.durable_upto)}/{p.durable_upto}"
        if p.hardstate is not None:
            what += ", hardstate"
        start = len(self.net)
        node.take()
        node.sent_mark = None
        node.disk.sync_next()  # the loop sends what waited for it, then performs its Readies
        released = self.net[start : node.sent_mark]
        return ([f"> {node.id} fsync: {what}"] + [f"{IND}send {fmt_msg(m)}" for m in released]
                + [IND + line for line in node.take()])

    def deliver(self, m: Msg) -> list[str]:
        out = [fmt_msg(m)]
        target = self.nodes[m.to]
        if target.core is None:
            return out + [f"{IND}dropped: {m.to} is down"]
        if self.groups is not None and self.groups[m.frm] != self.groups[m.to]:
            return out + [f"{IND}dropped: partition"]
        assert target.loop is not None
        target.take()
        target.loop.step(m)
        return out + [IND + line for line in target.take()]

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
            self.nodes[i] = Node(self, i, members, cfg)
            self.nodes[i].start()
        return []

    def cmd_campaign(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.live(int(pos[0]))
        assert node.loop is not None
        node.loop.campaign(int(kw["epoch"]))
        return node.take()

    def cmd_propose(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.live(int(pos[0]))
        assert node.loop is not None
        try:
            epoch, index = node.loop.propose(pos[1].encode())
        except NotLeaderError as exc:
            node.loop.process()
            return [f"error: NotLeaderError: {exc}"] + node.take()
        return [f"proposed {epoch}/{index}"] + node.take()

    def cmd_read(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.live(int(pos[0]))
        assert node.loop is not None
        try:
            node.loop.read(pos[1])
        except NotLeaderError as exc:
            node.loop.process()
            return [f"error: NotLeaderError: {exc}"] + node.take()
        return node.take()

    def tick(self, node: Node, n: int) -> list[str]:
        out = []
        for _ in range(n):
            assert node.loop is not None and node.core is not None
            node.take()
            node.loop.tick()
            lines = node.take()
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
            busy = [n for n in self.nodes.values() if n.disk.pending]
            if not busy and not self.net:
                return out
            for node in busy:
                while node.disk.pending:
                    out += self.sync(node)
            msgs, self.net = self.net, []
            for m in msgs:
                out += self.deliver(m)
        raise AssertionError(f"stabilize did not converge in {STABILIZE_ROUNDS_MAX} rounds")

    def cmd_crash(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.live(int(pos[0]))
        inbox = [m for m in self.net if m.to == node.id]
        self.take(inbox)
        lost = node.crash()
        out = [f"lost entries {fmt_entries(lost.entries)}"] if lost.entries else []
        if lost.hardstate:
            out.append("lost hardstate not yet synced")
        if lost.after_sync:
            out.append(f"lost {lost.after_sync} after-sync message(s)")
        if inbox:
            out.append(f"lost {len(inbox)} message(s) addressed to {node.id}")
        return out or ["lost nothing: everything was durable"]

    def cmd_restart(self, pos: list[str], kw: dict[str, str]) -> list[str]:
        node = self.nodes[int(pos[0])]
        if node.core is not None:
            raise ValueError(f"node {node.id} is up")
        node.start()
        assert node.loop is not None
        node.take()
        node.loop.process()
        return self.status_line(node) + node.take()

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
            return [f"{node.id}: down, durable last={durable} applied={node.applied_index}"]
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
