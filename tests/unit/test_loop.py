"""The one Ready loop (``rangekv.replication.loop``), rule by rule, against a scripted core.

The core here hands out the Readies a test writes and records what the loop tells it, so each
rule of the loop's docstring is checked on its own: the order a Ready is performed in, what
waits for the fsync (and that a later sync implies the earlier ones), that the loop never
re-enters itself, read release, one snapshot per peer with its backoff, the install given up
when fenced or idle, and ``soon``'s batching. (The real core runs in this loop in
test_core*.py, tests/interaction, the simulator and the driver.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import rangekv.replication.loop as loop_module
from rangekv.replication.core import Ready, SnapshotNeed
from rangekv.replication.loop import ReadyLoop
from rangekv.replication.messages import APPEND, APPEND_RESP, Entry, Msg

E1, E2, E3 = Entry(1, 1, b"a"), Entry(1, 2, b"b"), Entry(1, 3, b"c")


def msg(to: int, mtype: str = APPEND) -> Msg:
    return Msg(mtype, 1, to, 1)


class ScriptedCore:
    """Hands out ``readies`` one by one; records every call the loop makes into it."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log
        self.readies: list[Ready] = []
        self.id = 1
        self.promised = 1
        self.installing: tuple[int, int, int, int] | None = None
        self.applied = 0
        self.last_index = 0
        self.last_epoch = 0
        self.on_ready: Callable[[], None] | None = None  # runs inside ready(), as an input would

    def ready(self) -> Ready:
        if self.on_ready is not None:
            hook, self.on_ready = self.on_ready, None
            hook()
        rd = self.readies.pop(0) if self.readies else Ready()
        for e in rd.entries:
            self.last_index, self.last_epoch = e.index, e.epoch
        return rd

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            self.log.append((name, *args))
            if name == "on_applied":
                self.applied = args[0]
            if name in ("on_snapshot_aborted", "on_snapshot_installed"):
                self.installing = None
            if name == "offer_snapshot":
                self.installing = (args[0], args[1], args[2], args[3])
                return "accept", args[2]
            if name in ("propose",):
                return (1, 9)
            return None
        return call


class Fakes:
    """Disk, network, application, snapshot source and sink, and clock, all writing to one log."""

    def __init__(self, immediate: bool = False) -> None:
        self.log: list[Any] = []
        self.immediate = immediate
        self.syncs: list[Callable[[], None]] = []
        self.now = 0.0

    # Disk
    def save_hardstate(self, hs: dict[str, int]) -> None:
        self.log.append(("hardstate", hs["promised_epoch"]))

    def truncate(self, i: int) -> None:
        self.log.append(("truncate", i))

    def append(self, entries: list[Entry]) -> None:
        self.log.append(("append", [e.index for e in entries]))

    def compact(self, i: int) -> None:
        self.log.append(("compact", i))

    def sync(self, done: Callable[[], None]) -> None:
        self.log.append(("sync",))
        if self.immediate:
            done()
        else:
            self.syncs.append(done)

    # Network
    def send(self, m: Msg) -> None:
        self.log.append(("send", m.to, m.type))

    # Application
    def apply(self, entries: list[Entry]) -> None:
        self.log.append(("apply", [e.index for e in entries]))

    def read_ready(self, token: Any) -> None:
        self.log.append(("read", token))

    def read_failed(self, token: Any) -> None:
        self.log.append(("read_failed", token))

    def became_leader(self, epoch: int) -> None:
        self.log.append(("leads", epoch))

    def lost_leadership(self) -> None:
        self.log.append(("lost",))

    # SnapshotSource, SnapshotSink, Clock
    def send_snapshot(self, need: SnapshotNeed, delay_s: float) -> None:
        self.log.append(("snapshot", need.peer, delay_s))

    def abort_snapshot(self, why: str) -> None:
        self.log.append(("abort", why.split()[0]))

    def now_s(self) -> float:
        return self.now


def make(immediate: bool = False, **options: Any) -> tuple[ReadyLoop, ScriptedCore, Fakes]:
    fakes = Fakes(immediate)
    core = ScriptedCore(fakes.log)
    options = {"snapshot_backoff_s": (0.2, 1.0), "install_idle_s": 5.0, **options}
    loop = ReadyLoop(core, fakes, fakes, fakes, snapshots=fakes, sink=fakes,  # type: ignore[arg-type]
                     clock=fakes, **options)
    return loop, core, fakes


def test_a_ready_is_performed_in_the_contracts_order() -> None:
    loop, core, fakes = make()
    core.readies = [Ready(hardstate={"promised_epoch": 2, "promised_to": 1}, truncate_from=1,
                          entries=[E1, E2], compact_to=0, messages=[msg(2)],
                          messages_after_sync=[msg(3, APPEND_RESP)], committed=[E1],
                          snapshots=[SnapshotNeed(4, 0, 0)], reads=[("r", 1)],
                          failed_reads=["f"], became_leader=2, lost_leadership=True)]
    loop.process()
    assert fakes.log == [
        ("hardstate", 2), ("truncate", 1), ("append", [1, 2]), ("compact", 0),
        ("send", 2, APPEND),  # before this Ready's fsync (a leader's overlaps its followers')
        ("sync",),
        ("snapshot", 4, 0.0),
        ("apply", [1]), ("on_applied", 1),
        ("read_failed", "f"), ("read", "r"),
        ("leads", 2), ("lost",),
    ]


def test_what_waits_for_the_fsync_leaves_after_it_and_a_later_sync_implies_the_earlier() -> None:
    loop, core, fakes = make()
    core.readies = [
        Ready(hardstate={"promised_epoch": 2, "promised_to": 1}, entries=[E1],
              messages_after_sync=[msg(2, APPEND_RESP)]),
        Ready(entries=[E2], messages_after_sync=[msg(3, APPEND_RESP)]),
    ]
    loop.process()
    assert len(fakes.syncs) == 2 and ("send", 2, APPEND_RESP) not in fakes.log
    assert [u.last_index for u in loop.unsynced] == [1, 2]
    fakes.log.clear()
    fakes.syncs[1]()  # group commit: one fsync covered both
    assert fakes.log == [("on_hardstate_synced", {"promised_epoch": 2, "promised_to": 1}),
                         ("send", 2, APPEND_RESP), ("send", 3, APPEND_RESP),
                         ("on_synced", 2, 1)]
    fakes.log.clear()
    fakes.syncs[0]()  # (late, and implied already)
    assert fakes.log == [] and not loop.unsynced


def test_a_sync_that_completes_at_once_is_taken_after_the_ready_under_way() -> None:
    loop, core, fakes = make(immediate=True)
    core.readies = [Ready(entries=[E1], messages_after_sync=[msg(2, APPEND_RESP)],
                          committed=[E1]),
                    Ready(committed=[E2])]
    loop.process()
    # The first Ready is performed to its end (apply included) before its sync's release and
    # before the next Ready: entries are applied in order.
    assert fakes.log == [("append", [1]), ("sync",), ("apply", [1]), ("on_applied", 1),
                         ("send", 2, APPEND_RESP), ("on_synced", 1, 1),
                         ("apply", [2]), ("on_applied", 2)]


def test_an_input_made_while_a_ready_is_performed_is_taken_by_the_same_turn() -> None:
    loop, core, fakes = make()

    def propose_on_leading(epoch: int) -> None:
        fakes.log.append(("leads", epoch))
        core.readies.append(Ready(entries=[E3]))
        loop.propose(b"x")  # the application proposes as it becomes leader

    fakes.became_leader = propose_on_leading  # type: ignore[method-assign]
    core.readies = [Ready(became_leader=1)]
    loop.process()
    assert fakes.log == [("leads", 1), ("propose", b"x"), ("append", [3]), ("sync",)]


def test_reads_are_answered_in_order_once_applied_reaches_them() -> None:
    loop, core, fakes = make()
    core.readies = [Ready(reads=[("a", 2), ("b", 1), ("c", 3)])]
    loop.process()
    assert [x for x in fakes.log if x[0] == "read"] == []
    core.readies = [Ready(committed=[E1, E2])]
    loop.process()
    assert [x for x in fakes.log if x[0] == "read"] == [("read", "a"), ("read", "b")]
    core.readies = [Ready(committed=[E3])]
    loop.process()
    assert [x for x in fakes.log if x[0] == "read"][-1] == ("read", "c")


def test_one_snapshot_per_peer_and_its_backoff() -> None:
    loop, core, fakes = make()
    need = SnapshotNeed(3, 5, 1)
    core.readies = [Ready(snapshots=[need, need, SnapshotNeed(4, 5, 1)])]
    loop.process()
    assert [x for x in fakes.log if x[0] == "snapshot"] == [("snapshot", 3, 0.0),
                                                          ("snapshot", 4, 0.0)]

    def attempt() -> float:
        fakes.log.clear()
        core.readies = [Ready(snapshots=[need])]
        loop.process()
        (sent,) = [x for x in fakes.log if x[0] == "snapshot"]
        return float(sent[2])

    loop.snapshot_sent(3, False)  # failed: 0.2, 0.4, 0.8, then at most 1.0
    assert ("report_snapshot", 3, False, 0) in fakes.log
    assert attempt() == 0.2
    loop.snapshot_sent(3, False)
    assert attempt() == 0.4
    loop.snapshot_sent(3, False)
    loop.snapshot_sent(3, False)  # (one not in flight: still counts as a failure)
    assert attempt() == 1.0
    loop.snapshot_sent(3, False, tried=False)  # nothing was spent: the shortest wait
    assert attempt() == 0.2
    loop.snapshot_sent(3, True, 7)
    assert attempt() == 0.0
    loop.snapshot_sent(3, False)
    core.readies = [Ready(became_leader=2)]  # a new term: no waiting
    loop.process()
    assert attempt() == 0.0


def test_an_install_is_given_up_when_a_newer_epoch_is_promised_or_it_goes_quiet() -> None:
    loop, core, fakes = make()
    assert loop.offer_snapshot(2, 1, 10, 1) == ("accept", 10)
    fakes.now = 4.0
    loop.snapshot_progress()
    fakes.now = 8.0
    loop.tick()  # 4 s quiet: not yet
    assert not [x for x in fakes.log if x[0] == "abort"]
    fakes.now = 9.5
    loop.tick()
    assert ("abort", "nothing") in fakes.log
    core.installing = None
    loop.offer_snapshot(2, 1, 12, 1)
    core.promised = 2  # (the step promised a newer epoch)
    loop.step(msg(1))
    assert ("abort", "epoch") in fakes.log
    # The sink reports once it gave up; only then is the core unfrozen.
    assert core.installing is not None
    loop.snapshot_aborted()
    assert core.installing is None


def test_soon_batches_the_inputs_of_a_turn_into_one_process() -> None:
    scheduled: list[Callable[[], None]] = []
    loop, core, fakes = make(soon=scheduled.append)
    loop.step(msg(1))
    loop.propose(b"p")
    loop.read("r")
    assert len(scheduled) == 1 and loop.readies == 0
    core.readies = [Ready(entries=[E1])]
    scheduled.pop()()
    assert loop.readies == 1
    loop.tick()  # (a tick, like fsyncs and snapshots, is performed at once)
    assert not scheduled


def test_a_turn_applies_a_bounded_amount_and_leaves_the_rest_to_the_next() -> None:
    """Committed entries past APPLY_BYTES_PER_TURN wait for the next turn of the event loop
    (heartbeats and timers run in between); without ``soon`` everything goes at once."""
    big = loop_module.APPLY_BYTES_PER_TURN // 2 + 1
    entries = [Entry(1, i, b"x" * big) for i in range(1, 6)]
    scheduled: list[Callable[[], None]] = []
    loop, core, fakes = make(soon=scheduled.append)
    core.readies = [Ready(committed=[e]) for e in entries]
    loop.propose(b"p")
    scheduled.pop()()
    applied = [x for x in fakes.log if x[0] == "apply"]
    assert applied == [("apply", [1]), ("apply", [2])] and len(scheduled) == 1
    while scheduled:
        scheduled.pop()()
    applied = [x for x in fakes.log if x[0] == "apply"]
    assert [x[1][0] for x in applied] == [1, 2, 3, 4, 5]
    # without soon (a test harness stepping by hand): one process applies everything
    loop, core, fakes = make()
    core.readies = [Ready(committed=[e]) for e in entries]
    loop.process()
    assert [x[1][0] for x in fakes.log if x[0] == "apply"] == [1, 2, 3, 4, 5]


def test_a_closed_loop_ignores_what_completes_later() -> None:
    loop, core, fakes = make()
    core.readies = [Ready(entries=[E1], messages_after_sync=[msg(2, APPEND_RESP)])]
    loop.process()
    loop.close()
    fakes.log.clear()
    fakes.syncs[0]()
    assert fakes.log == []


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (2.0, 1.0)])
def test_backoff_bounds_are_checked(bounds: tuple[float, float]) -> None:
    with pytest.raises(AssertionError):
        make(snapshot_backoff_s=bounds)
