"""The replication core of one group member: a pure state machine (sans-IO).

Theory of operation
-------------------
A group has 3 (or 5) members and one leader per **epoch**. Epochs are handed out by the metadata
manager (compare-and-swap in etcd), so at most one node is ever asked to lead a given epoch, and
a node campaigns for an epoch at most once (its promise is durable).

* **Campaign** (``campaign(e)``): the candidate promises ``e`` durably and sends NEW_EPOCH(e). A
  member accepts only if ``e`` is above every epoch it promised, persists the promise, and answers
  with its last (epoch, index). With a majority of acceptances (itself included) the candidate
  adopts the most up-to-date log among them (highest last epoch, then highest index), fetching
  what it lacks from that member (FETCH, probing back like an append does), appends a no-op of
  epoch ``e`` and leads. It serves reads and writes only once that no-op is committed.
* **Append**: the leader sends APPEND(prev, entries, commit); a follower accepts only if ``e``
  is its promised epoch (a higher one is promised on the spot) and its log matches at ``prev``;
  conflicting entries after ``prev`` are cut (never a committed one). A follower answers only
  after the entries are durable. The leader commits an index once a majority holds it durably
  (its own count is its fsynced index) *and* the entry there is of its own epoch.
* **Reads** use read-index: a read takes the current commit index, the leader confirms with a
  majority (a heartbeat round carrying a round number) that no newer epoch exists, and the read
  is answered once the state machine has applied up to that index. Reads that arrive while a
  round is in flight join the next round, so one round serves many reads.
* An older leader learns of a newer epoch from any answer and steps down.
* **Membership** (``set_config``, from meta's record): ``members`` vote and count in every
  quorum; ``learners`` get appends like followers (they are entries of the leader's
  ``progress``) but count in no quorum and never campaign; ``joint`` (the members before a
  reconfiguration, while it is unfinished) only widens campaigns: a candidate asks
  ``members`` and ``joint`` and wins only with promises from a majority of each, then adopts
  the best log among all who promised. Commits and read rounds count ``members`` only.
  Why this loses nothing: every entry committed before the reconfiguration is on a majority of
  ``joint``, which intersects the promisers of any epoch that carries ``joint``; meta clears
  ``joint`` only once the new epoch's no-op (and so everything before it) is on a majority of
  the new ``members`` (docs/decisions.md, "Membership").

* **Compaction** (``compact(i)``, asked by the driver for ``i <= applied`` once the state
  machine is durable through ``i``): the log forgets its entries up to ``i``, which becomes its
  **base** ``(base_index, base_epoch)``; ``first_index = base_index + 1`` and ``epoch_at`` still
  answers for the base. Entries at or below the base are committed, and the leader of any epoch
  we follow holds every committed entry, so an append whose ``prev`` is below our base is
  trimmed to start at the base (its earlier entries match ours).
* **Snapshots**: a leader that would send a peer an append starting at or below its base
  (``next <= base_index``: the entries are gone) asks the driver for a snapshot instead
  (``Ready.snapshots``: peer, base index, base epoch) and marks the peer ``snapshotting``: no
  appends or probes go to it until the driver calls ``report_snapshot(peer, ok, index)``, after
  which it is probed from ``index + 1`` (or, on failure, asked for again at the next heartbeat;
  the driver retries with a backoff). The driver offers the follower a snapshot of the state at
  ``(index, snap_epoch)`` with ``offer_snapshot``, which applies Raft's InstallSnapshot rules:
  stale if ``index <= commit`` (answered with our commit index, where the leader resumes
  appends); if our log holds ``(index, snap_epoch)`` the log after it is kept and ``index`` is
  committed (no transfer); otherwise the follower **installs**: it is frozen (no appends or
  fetches accepted, nothing applied, no campaign; NEW_EPOCH is promised durably but answered
  only once the install ends, since the log it would describe is about to change) until the
  driver reports ``on_snapshot_installed(index, epoch)`` (state machine swapped, log reset to
  that base, all durable: the log becomes empty with that base, commit and applied jump to
  ``index``) or ``on_snapshot_aborted()``. Applied state never goes backward: a snapshot is
  installed only above the commit index.
* A candidate cannot fetch entries from a member that compacted them: such a member answers
  the fetch as one that no longer backs it, and the campaign ends (meta chooses again).

Invariants (asserted here, checked again by the simulator): a promise never decreases; one
leader per epoch (a follower sees one sender per promised epoch); a committed entry is never
cut; commit and applied never decrease; applied <= commit; applied <= durable; a leader appends
only at last_index + 1 with its own epoch; base_index <= applied (the log holds every entry the
state machine has not applied).

The contract with the driver (like etcd-io/raft's ``Ready``)
------------------------------------------------------------
(``loop.py`` is the one place this contract is carried out, for production, the simulator and
the tests alike.)

Inputs: ``step(msg)``, ``tick()``, ``campaign(epoch)``, ``propose(payload)``, ``read(token)``,
``on_synced(index, epoch)``, ``on_applied(index)``, ``compact(index)``, ``report_snapshot``,
``offer_snapshot``, ``on_snapshot_installed``, ``on_snapshot_aborted``. Then the driver calls
``ready()`` and, in this order: persists ``hardstate`` (if any); cuts the log from
``truncate_from``; writes ``entries``; drops the log's prefix up to ``compact_to`` (all of these
in order with the previous readies' writes); starts sending a snapshot to each peer of
``snapshots`` that has none in flight; sends ``messages`` at once; makes all of it durable
(fsync) and only then sends
``messages_after_sync`` and calls ``on_hardstate_synced`` (if a hard state was in the batch)
and ``on_synced``; applies ``committed`` and calls
``on_applied``; answers ``reads`` once applied reaches their index. Several readies may be made
durable by one fsync (group commit) as long as their order is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from rangekv.replication.messages import (
    APPEND,
    APPEND_RESP,
    FETCH,
    FETCH_RESP,
    HEARTBEAT,
    HEARTBEAT_RESP,
    NEW_EPOCH,
    NEW_EPOCH_RESP,
    SNAPSHOT,
    Entry,
    Msg,
)

IDLE = "idle"  # not a member of any group
FOLLOWER = "follower"
CANDIDATE = "candidate"
LEADER = "leader"


class LogStore(Protocol):
    """Entries the driver has written (durable up to what ``on_synced`` reported)."""

    @property
    def first_index(self) -> int: ...

    @property
    def last_index(self) -> int: ...

    def epoch_at(self, index: int) -> int: ...

    def entries(self, lo: int, hi: int, bytes_max: int | None = None) -> list[Any]: ...


@dataclass
class Config:
    noop_payload: bytes
    heartbeat_ticks: int = 2  # a tick is 50 ms in production
    quorum_ticks: int = 20  # a leader not hearing from a majority for this long steps down
    campaign_ticks: int = 40  # a candidate gives up after this long
    append_bytes_max: int = 2 * 1024 * 1024
    inflight_entries_max: int = 8192
    # committed entries one Ready hands out (one entry at least): the Ready loop applies them
    # in one go, so this bounds how long a turn of the event loop can apply (a follower
    # catching up got 8 MiB, ~0.7 s of applying, in one Ready, and missed its heartbeats)
    apply_bytes_max: int = 256 * 1024


class SnapshotNeed(NamedTuple):
    """A peer needs a snapshot of the state at ``index`` or later (the leader's base then)."""

    peer: int
    index: int
    epoch: int


# offer_snapshot's answers
SNAPSHOT_ACCEPT = "accept"  # install it; the follower is frozen until it ends
SNAPSHOT_STALE = "stale"  # index <= our commit: resume appends after the index answered
SNAPSHOT_HAVE = "have"  # our log holds it: committed now, resume appends after it
SNAPSHOT_REFUSE = "refuse"  # not from our leader (the index answered is our promised epoch)
SNAPSHOT_BUSY = "busy"  # another install is under way: try again later


@dataclass
class Ready:
    hardstate: dict[str, int] | None = None
    truncate_from: int | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Msg] = field(default_factory=list)
    messages_after_sync: list[Msg] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    reads: list[tuple[Any, int]] = field(default_factory=list)  # (token, read index)
    failed_reads: list[Any] = field(default_factory=list)
    became_leader: int | None = None  # the epoch whose no-op just committed
    lost_leadership: bool = False
    compact_to: int | None = None  # drop the log's prefix up to here (the new base)
    snapshots: list[SnapshotNeed] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.hardstate or self.truncate_from is not None or self.entries or self.messages
            or self.messages_after_sync or self.committed or self.reads or self.failed_reads
            or self.became_leader is not None or self.lost_leadership
            or self.compact_to is not None or self.snapshots
        )


@dataclass
class Progress:
    next: int
    match: int = 0
    probing: bool = True
    probe_sent: bool = False
    heard_tick: int = 0
    acked_ctx: int = 0
    match_at_last_check: int = 0
    snapshotting: bool = False  # a snapshot is on its way: no appends until report_snapshot


class NotLeaderError(Exception):
    """Raised by ``propose``/``read`` on a node that is not a serving leader."""

    def __init__(self, leader: int | None, epoch: int) -> None:
        super().__init__(f"not the leader (leader hint {leader}, epoch {epoch})")
        self.leader = leader
        self.epoch = epoch


class Core:
    def __init__(
        self,
        node_id: int,
        members: Iterable[int],
        log: LogStore,
        hardstate: dict[str, int],
        applied_index: int,
        config: Config,
        *,
        learners: Iterable[int] = (),
        joint: Iterable[int] = (),
    ) -> None:
        self.id = node_id
        self.cfg = config
        self.log = log
        self.members: tuple[int, ...] = tuple(sorted(set(members)))
        self.learners: tuple[int, ...] = tuple(sorted(set(learners) - set(self.members)))
        self.joint: tuple[int, ...] = tuple(sorted(set(joint)))
        self.promised = int(hardstate.get("promised_epoch", 0))
        self.promised_to = int(hardstate.get("promised_to", 0))
        # The promise known to be on disk; until the current one is, every message that
        # speaks for it waits for the fsync (a crash must not let us take it back).
        self._durable_promise = (self.promised, self.promised_to)
        self.role = FOLLOWER if self._involved() else IDLE
        self.leader: int | None = None
        self.serving = False
        self.ticks = 0

        # The log's base: its entries up to here were compacted (or came in a snapshot).
        self.base_index = log.first_index - 1
        self.base_epoch = log.epoch_at(self.base_index)
        self.last_index = log.last_index
        self.last_epoch = log.epoch_at(self.last_index) if self.last_index else 0
        # The driver syncs the whole log once on open, so everything in it is durable.
        self.stable = self.last_index
        self.unstable: list[Entry] = []
        self.unstable_offset = self.last_index + 1
        self._written_last = self.last_index  # last index the driver was given to write
        self._hand_from = self.last_index + 1  # first unstable index not yet handed out
        self._pending_truncate: int | None = None

        assert self.base_index <= applied_index <= self.last_index, (
            self.base_index, applied_index, self.last_index)
        self.commit = applied_index
        self.applied = applied_index
        self._apply_next = applied_index + 1

        # leader state
        self.progress: dict[int, Progress] = {}
        self.noop_index = 0
        self.read_ctx = 0  # last round started
        self._round_in_flight = 0  # ctx of the round in flight (0: none)
        self._reads_waiting: list[tuple[Any, int]] = []  # join the next round
        self._reads_in_round: dict[int, list[tuple[Any, int]]] = {}
        self._needs_broadcast = False

        # candidate state
        self.accepts: dict[int, tuple[int, int]] = {}
        self.fetch_from: int | None = None
        self.fetch_target: tuple[int, int] = (0, 0)
        self._fetch_prev = 0
        self.campaign_tick = 0

        # snapshots (follower side): the offer being installed, (leader, epoch, index, epoch)
        self.installing: tuple[int, int, int, int] | None = None
        # messages refused as implausible (see ``implausible``), by why, and the last one
        self.refused: dict[str, int] = {}
        self.last_refused: tuple[str, Msg] | None = None
        self._deferred_promise_to: int | None = None  # NEW_EPOCH_RESP held during an install
        self._pending_compact: int | None = None

        self._out = Ready()
        self._hardstate_dirty = False

    # ------------------------------------------------------------------ helpers
    @property
    def quorum(self) -> int:
        return len(self.members) // 2 + 1

    def peers(self) -> list[int]:
        """Whom a leader replicates to: the other members and the learners."""
        return [m for m in self.members + self.learners if m != self.id]

    def electorate(self) -> list[int]:
        """Whom a candidate asks for promises: the other members and the ``joint`` voters."""
        return sorted({*self.members, *self.joint} - {self.id})

    def _involved(self, node: int | None = None) -> bool:
        """``node`` (default: this one) is a member, a learner or a voter of ``joint``."""
        node = self.id if node is None else node
        return node in self.members or node in self.learners or node in self.joint

    @staticmethod
    def _majority(ids: Iterable[int], of: tuple[int, ...]) -> bool:
        return len(set(ids) & set(of)) >= len(of) // 2 + 1

    @property
    def first_index(self) -> int:
        return self.base_index + 1

    def epoch_at(self, index: int) -> int:
        if index == self.base_index:
            return self.base_epoch
        assert self.base_index < index <= self.last_index, (index, self.base_index,
                                                           self.last_index)
        if index >= self.unstable_offset:
            entry = self.unstable[index - self.unstable_offset]
            assert entry.index == index
            return entry.epoch
        return self.log.epoch_at(index)

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        """Entries lo <= index < hi, at least one, stopping past ``bytes_max``."""
        assert self.first_index <= lo <= hi <= self.last_index + 1, (
            lo, hi, self.first_index, self.last_index)
        out: list[Entry] = []
        size = 0
        if lo < self.unstable_offset:
            for e in self.log.entries(lo, min(hi, self.unstable_offset), bytes_max):
                out.append(Entry(e[0], e[1], e[2]))
                size += len(e[2])
            if out and out[-1].index + 1 < min(hi, self.unstable_offset):
                return out  # the store stopped at bytes_max
            lo = min(hi, self.unstable_offset)
        while lo < hi and (not out or size < bytes_max):
            entry = self.unstable[lo - self.unstable_offset]
            out.append(entry)
            size += len(entry.payload)
            lo += 1
        return out

    def _set_promise(self, epoch: int, to: int) -> None:
        assert epoch >= self.promised, ("promise decreased", epoch, self.promised)
        if (epoch, to) != (self.promised, self.promised_to):
            self.promised, self.promised_to = epoch, to
            self._hardstate_dirty = True

    def _send(self, msg: Msg) -> None:
        # A message sent while our promise is not yet durable must wait for it.
        if self._hardstate_dirty or (self.promised, self.promised_to) != self._durable_promise:
            self._out.messages_after_sync.append(msg)
        else:
            self._out.messages.append(msg)

    def _msg(self, mtype: str, to: int, **kw: Any) -> Msg:
        return Msg(mtype, self.id, to, self.promised, **kw)

    def _append_local(self, entry: Entry) -> None:
        assert entry.index == self.last_index + 1, (entry.index, self.last_index)
        assert entry.epoch >= self.last_epoch, (entry.epoch, self.last_epoch)
        if not self.unstable:
            self.unstable_offset = entry.index
        assert self.unstable_offset + len(self.unstable) == entry.index
        self.unstable.append(entry)
        self.last_index, self.last_epoch = entry.index, entry.epoch

    def _truncate_from(self, index: int) -> None:
        """Cut every entry at or after ``index``."""
        assert index > self.commit, ("cutting a committed entry", index, self.commit)
        if index > self.last_index:
            return
        if index >= self.unstable_offset:
            del self.unstable[index - self.unstable_offset:]
        else:
            self.unstable = []
            self.unstable_offset = index
        if index <= self._written_last:
            self._pending_truncate = (
                index if self._pending_truncate is None else min(self._pending_truncate, index)
            )
            self._written_last = index - 1
        self._hand_from = min(self._hand_from, index)
        self.stable = min(self.stable, index - 1)
        self.last_index = index - 1
        self.last_epoch = self.epoch_at(self.last_index) if self.last_index else 0

    def _append_from_leader(self, entries: list[Entry]) -> None:
        """Follower append: skip entries we hold, cut at the first conflict, append the rest."""
        for i, entry in enumerate(entries):
            if entry.index <= self.last_index:
                if self.epoch_at(entry.index) == entry.epoch:
                    continue
                self._truncate_from(entry.index)
            for rest in entries[i:]:
                self._append_local(rest)
            return

    def _conflict_hint(self, prev: int, prev_epoch: int) -> int:
        """An index at or before which our log may match the sender's (skips whole epochs)."""
        hint = min(prev - 1, self.last_index)
        while hint > self.commit and self.epoch_at(hint) > prev_epoch:
            hint -= 1
        return max(hint, 0)

    def _step_down(self, leader: int | None) -> None:
        was_leader = self.role == LEADER
        self.role = FOLLOWER if self._involved() else IDLE
        self.leader = leader
        self.serving = False
        self.progress = {}
        self.accepts = {}
        self.fetch_from = None
        if was_leader:
            self._out.lost_leadership = True
            failed = [tok for tok, _ in self._reads_waiting]
            for reads in self._reads_in_round.values():
                failed.extend(tok for tok, _ in reads)
            self._out.failed_reads.extend(failed)
            self._reads_waiting = []
            self._reads_in_round = {}
            self._round_in_flight = 0

    # ------------------------------------------------------------------ decisions
    # Each rule below is one line of the protocol that a planted bug (``bugs.py``) replaces,
    # to show that the simulator catches its absence.
    def _is_stale(self, epoch: int) -> bool:
        """A message from an epoch older than our promise is refused."""
        return epoch < self.promised

    def _log_matches(self, prev: int, prev_epoch: int) -> bool:
        """Log matching: we hold the entry the sender's new entries follow."""
        return prev <= self.last_index and (prev == 0 or self.epoch_at(prev) == prev_epoch)

    def _ack_after_sync(self, msg: Msg) -> None:
        """A follower's acknowledgement says "durable": it leaves only after the fsync."""
        self._out.messages_after_sync.append(msg)

    def _apply_limit(self) -> int:
        """Apply only entries that are committed and durable here."""
        return min(self.commit, self.stable)

    def _election_won(self) -> bool:
        """A campaign wins with promises (its own included) from a majority of the members
        and, while a reconfiguration is unfinished, from a majority of ``joint`` too: every
        entry committed under the previous members is on a majority of them."""
        if not self._majority(self.accepts, self.members):
            return False
        return not self.joint or self._majority(self.accepts, self.joint)

    def _confirm_read(self, token: Any) -> None:
        """A read waits for a majority to confirm our epoch (read-index)."""
        self._reads_waiting.append((token, self.commit))
        if not self._round_in_flight:
            self._start_read_round()

    def _snapshot_answer(self, index: int, snap_epoch: int) -> str:
        """InstallSnapshot's rules for an offer of the state at (index, snap_epoch): stale at or
        below our commit index (installing it would take applied state backward); if our log
        holds the entry, keep the log after it; else install."""
        if index <= self.commit:
            return SNAPSHOT_STALE
        if self.base_index <= index <= self.last_index and self.epoch_at(index) == snap_epoch:
            return SNAPSHOT_HAVE
        return SNAPSHOT_ACCEPT

    def _observe_epoch(self, msg: Msg) -> bool:
        """Handle the sender's epoch; False if the message is from the past and was answered."""
        if self._is_stale(msg.epoch):
            if msg.type in (APPEND, HEARTBEAT):
                # "not my leader": tell the old leader about the newer epoch.
                rtype = APPEND_RESP if msg.type == APPEND else HEARTBEAT_RESP
                self._send(self._msg(rtype, msg.frm, reject=True, index=self.last_index,
                                     ctx=msg.ctx))
            return False
        return True

    # ------------------------------------------------------------------ inputs
    def set_members(self, members: Iterable[int]) -> None:
        self.set_config(members)

    def set_config(self, members: Iterable[int], learners: Iterable[int] = (),
                   joint: Iterable[int] = ()) -> None:
        """Take meta's record of the group: its members, learners and ``joint`` voters.

        A node that is no longer a member stops leading or campaigning (a learner or a voter of
        ``joint`` only follows); one in none of the sets is idle. A leader starts replicating
        to new members and learners (probing from its last index) and forgets removed ones.
        """
        new_members = tuple(sorted(set(members)))
        new_learners = tuple(sorted(set(learners) - set(new_members)))
        new_joint = tuple(sorted(set(joint)))
        if (new_members, new_learners, new_joint) == (self.members, self.learners, self.joint):
            return
        self.members, self.learners, self.joint = new_members, new_learners, new_joint
        if self.id not in new_members and self.role in (LEADER, CANDIDATE):
            self._step_down(None)
        if not self._involved():
            self._step_down(None)
            self.role = IDLE
        elif self.role == IDLE:
            self.role = FOLLOWER
        replicas = set(self.peers())
        for peer in list(self.progress):
            if peer not in replicas:
                del self.progress[peer]
        if self.role == LEADER:
            for peer in self.peers():
                self.progress.setdefault(peer, Progress(next=self.last_index + 1,
                                                        heard_tick=self.ticks))
            self._maybe_commit()
            self._check_read_round()

    def campaign(self, epoch: int) -> None:
        if epoch <= self.promised or self.id not in self.members or self.installing is not None:
            return
        if self.role == LEADER:
            self._step_down(None)
        self._set_promise(epoch, self.id)
        self.role = CANDIDATE
        self.leader = None
        self.serving = False
        self.accepts = {self.id: (self.last_epoch, self.last_index)}
        self.fetch_from = None
        self.campaign_tick = self.ticks
        for peer in self.electorate():
            self._send(self._msg(NEW_EPOCH, peer, index=self.last_index,
                                 log_epoch=self.last_epoch))
        self._maybe_win()

    def propose(self, payload: bytes) -> tuple[int, int]:
        """Append a client command; returns (epoch, index) of its entry."""
        if self.role != LEADER or not self.serving:
            raise NotLeaderError(self.leader if self.leader != self.id else None, self.promised)
        entry = Entry(self.promised, self.last_index + 1, payload)
        self._append_local(entry)
        self._needs_broadcast = True
        return entry.epoch, entry.index

    def read(self, token: Any) -> None:
        """Ask for a linearizable read; the token comes back in ``Ready.reads`` (or failed)."""
        if self.role != LEADER or not self.serving:
            raise NotLeaderError(self.leader if self.leader != self.id else None, self.promised)
        self._confirm_read(token)

    def tick(self) -> None:
        self.ticks += 1
        if self.role == LEADER:
            if self.ticks % self.cfg.heartbeat_ticks == 0:
                # Carry the latest read round: if its first heartbeat was lost, this one
                # (sent after that round's reads arrived) confirms it.
                self._heartbeat_all(ctx=self.read_ctx, periodic=True)
            if self.ticks % self.cfg.quorum_ticks == 0:
                heard = 1 + sum(
                    1 for peer, pr in self.progress.items()
                    if peer in self.members and self.ticks - pr.heard_tick <= self.cfg.quorum_ticks
                )
                if heard < self.quorum:
                    self._step_down(None)
        elif self.role == CANDIDATE:
            if self.ticks - self.campaign_tick >= self.cfg.campaign_ticks:
                self._step_down(None)
            elif self.ticks % self.cfg.heartbeat_ticks == 0:
                # Messages may be lost: ask again whoever has not answered yet.
                if self.fetch_from is not None:
                    self._send_fetch(self._fetch_prev)
                else:
                    for peer in self.electorate():
                        if peer not in self.accepts:
                            self._send(self._msg(NEW_EPOCH, peer, index=self.last_index,
                                                 log_epoch=self.last_epoch))

    def on_synced(self, index: int, epoch: int) -> None:
        """Entries up to ``index`` (whose entry had ``epoch``) are durable."""
        if index > self.last_index or index <= self.stable or self.installing is not None:
            return  # (while installing, the log on disk is about to be replaced)
        if self.epoch_at(index) != epoch:
            return  # cut and rewritten since: a later sync will report it
        self.stable = index
        if self.unstable and index >= self.unstable_offset:
            drop = index - self.unstable_offset + 1
            del self.unstable[:drop]
            self.unstable_offset = index + 1
        if self.role == LEADER:
            self._maybe_commit()

    def on_hardstate_synced(self, hardstate: dict[str, int]) -> None:
        """The driver made this hard state durable (it came from an earlier ``ready``)."""
        durable = (int(hardstate["promised_epoch"]), int(hardstate["promised_to"]))
        if durable[0] >= self._durable_promise[0]:
            self._durable_promise = durable

    def on_applied(self, index: int) -> None:
        assert self.applied <= index <= self.commit, (self.applied, index, self.commit)
        self.applied = index

    def step(self, msg: Msg) -> None:
        if msg.to != self.id or self.role == IDLE or not self._involved(msg.frm):
            return
        why = self.implausible(msg)
        if why is not None:
            # No honest peer sends this (see ``implausible``): a misbehaving or forged sender,
            # or a bug elsewhere. Refused and counted, never asserted on: one hostile frame
            # must not stop this node (the simulator fails a run on any such refusal between
            # honest nodes).
            self.refused[why] = self.refused.get(why, 0) + 1
            self.last_refused = (why, msg)
            return
        handler = {
            NEW_EPOCH: self._on_new_epoch,
            NEW_EPOCH_RESP: self._on_new_epoch_resp,
            APPEND: self._on_append,
            APPEND_RESP: self._on_append_resp,
            HEARTBEAT: self._on_heartbeat,
            HEARTBEAT_RESP: self._on_heartbeat_resp,
            FETCH: self._on_fetch,
            FETCH_RESP: self._on_fetch_resp,
        }[msg.type]
        handler(msg)

    # ------------------------------------------------------------------ plausibility
    def implausible(self, msg: Msg) -> str | None:
        """Why ``msg`` cannot come from an honest peer given what this node knows, or None.

        Each rule is one the handlers below assert on (an honest peer never breaks it), checked
        before any state changes, so that a message another process made up is refused
        instead of stopping this process:

        * entries follow ``prev`` one by one, with epochs that never decrease, start at
          ``prev``'s epoch and, in an append, never exceed the leader's epoch;
        * an append or heartbeat of our own epoch comes from the one node that leads it (not
          while we lead or campaign for it, not from a second node, only from whom we
          promised);
        * no append or fetch answer contradicts an entry we know to be committed;
        * an acknowledgement never claims entries beyond our last index;
        * a fetch answer that ends a campaign brings the log we were promised (the member's
          announced last entry) and never cuts below our commit index.
        """
        t = msg.type
        if t in (APPEND, FETCH_RESP) and msg.entries:
            prev_epoch = msg.log_epoch
            for i, e in enumerate(msg.entries):
                if e.index != msg.index + 1 + i:
                    return "entries_not_consecutive"
                if e.epoch < prev_epoch and (t == APPEND or i > 0):
                    return "entry_epochs_decrease"
                if t == APPEND and e.epoch > msg.epoch:
                    return "entry_epoch_above_leader"
                prev_epoch = e.epoch
            if t == FETCH_RESP and prev_epoch > msg.log_epoch:
                return "entry_epoch_above_last"
        if t in (APPEND, HEARTBEAT) and msg.epoch == self.promised:
            if self.role in (LEADER, CANDIDATE) and msg.frm != self.id:
                return "second_leader_in_our_epoch"
            if self.leader not in (None, msg.frm):
                return "two_leaders_in_one_epoch"
            if self.promised_to not in (0, msg.frm):
                return "leader_not_promised"
        if t == APPEND and msg.epoch >= self.promised and self.installing is None:
            if self._contradicts_commit(msg.index, msg.log_epoch, msg.entries):
                return "contradicts_committed_entry"
        if (t == APPEND_RESP and self.role == LEADER and msg.epoch == self.promised
                and not msg.reject and msg.index > self.last_index):
            return "ack_beyond_our_log"
        if (t == FETCH_RESP and self.role == CANDIDATE and msg.frm == self.fetch_from
                and msg.epoch == self.promised and not msg.reject
                and msg.ctx == self._fetch_prev):
            if self._contradicts_commit(msg.index, None, msg.entries):
                return "contradicts_committed_entry"
            if msg.done:
                target = self.fetch_target
                last = msg.entries[-1] if msg.entries else None
                if msg.commit < self.commit or target is None or msg.commit != target[1]:
                    return "fetch_ends_off_target"
                if last is not None and (last.epoch, last.index) != target:
                    return "fetch_ends_off_target"
                if last is None and not (self.base_index <= msg.index <= self.last_index
                                         and msg.index == msg.commit
                                         and self.epoch_at(msg.index) == target[0]):
                    return "fetch_ends_off_target"
        return None

    def _contradicts_commit(self, prev: int, prev_epoch: int | None,
                            entries: list[Entry]) -> bool:
        """Whether ``prev`` (with ``prev_epoch``, if given) or any of ``entries`` differs from
        an entry of our log at or below the commit index (at or above our base)."""
        if prev_epoch is not None and self.base_index <= prev <= self.commit \
                and self.epoch_at(prev) != prev_epoch:
            return True
        for e in entries:
            if e.index > self.commit:
                break
            if e.index >= self.base_index and self.epoch_at(e.index) != e.epoch:
                return True
        return False

    # ------------------------------------------------------------------ member side
    def _on_new_epoch(self, msg: Msg) -> None:
        if self.installing is not None:
            self._promise_while_installing(msg)
            return
        if msg.epoch > self.promised or (msg.epoch == self.promised
                                          and self.promised_to == msg.frm):
            if self.role in (LEADER, CANDIDATE) and msg.epoch > self.promised:
                self._step_down(msg.frm)
            self._set_promise(msg.epoch, msg.frm)
            self.role = FOLLOWER
            self.leader = msg.frm
            self._send(self._msg(NEW_EPOCH_RESP, msg.frm, index=self.last_index,
                                 log_epoch=self.last_epoch))
        else:
            self._send(self._msg(NEW_EPOCH_RESP, msg.frm, reject=True))

    def _follow(self, msg: Msg) -> None:
        """A message from the leader of ``msg.epoch`` >= our promise."""
        if msg.epoch > self.promised:
            if self.role in (LEADER, CANDIDATE):
                self._step_down(msg.frm)
            self._set_promise(msg.epoch, msg.frm)
            self.leader = None
        # One leader per epoch: only the node chosen for our promised epoch may lead it.
        assert self.role == FOLLOWER, ("a second leader in our own epoch", msg, self.id)
        assert self.leader in (None, msg.frm), ("two leaders in one epoch", msg, self.leader)
        assert self.promised_to in (0, msg.frm), ("leader is not who we promised", msg)
        self.leader = msg.frm

    def _on_append(self, msg: Msg) -> None:
        if not self._observe_epoch(msg):
            return
        self._follow(msg)
        if self.installing is not None:
            return  # frozen: the leader sends again once the install ended
        if msg.index < self.base_index:
            msg = self._skip_compacted(msg)
        prev = msg.index
        if not self._log_matches(prev, msg.log_epoch):
            # Log matching: everything up to our commit index equals the leader's log.
            assert prev > self.commit, ("committed entry differs from the leader's", msg)
            hint = self.last_index if prev > self.last_index else self._conflict_hint(
                prev, msg.log_epoch)
            self._send(self._msg(APPEND_RESP, msg.frm, reject=True, index=hint))
            return
        if msg.entries:
            assert msg.entries[0].index == prev + 1, msg
            self._append_from_leader(msg.entries)
        match = prev + len(msg.entries)
        new_commit = min(msg.commit, match)
        if new_commit > self.commit:
            self.commit = new_commit
        self._ack_after_sync(self._msg(APPEND_RESP, msg.frm, index=match))

    def _on_heartbeat(self, msg: Msg) -> None:
        if not self._observe_epoch(msg):
            return
        self._follow(msg)
        # The leader sends commit = min(its commit, what it knows we match).
        new_commit = min(msg.commit, self.last_index)
        if new_commit > self.commit and self.installing is None:
            self.commit = new_commit
        self._send(self._msg(HEARTBEAT_RESP, msg.frm, ctx=msg.ctx, index=self.last_index))

    def _on_fetch(self, msg: Msg) -> None:
        if self.installing is not None:
            return  # frozen: the candidate asks again (or gives up)
        if msg.epoch != self.promised or self.promised_to != msg.frm or msg.index < self.base_index:
            # We no longer back this candidate (we promised a later epoch), or it lacks entries
            # we compacted: we cannot bring its log up to ours, so its campaign must end.
            self._send(self._msg(FETCH_RESP, msg.frm, reject=True, done=True, index=msg.index,
                                 ctx=msg.index))
            return
        prev = msg.index
        if prev > self.last_index or (prev > 0 and self.epoch_at(prev) != msg.log_epoch):
            hint = self.last_index if prev > self.last_index else self._conflict_hint(
                prev, msg.log_epoch)
            self._send(self._msg(FETCH_RESP, msg.frm, reject=True, index=hint,
                                 log_epoch=self.last_epoch, commit=self.last_index, ctx=prev))
            return
        ents = (self.entries(prev + 1, self.last_index + 1, self.cfg.append_bytes_max)
                if prev < self.last_index else [])
        done = not ents or ents[-1].index == self.last_index
        self._send(self._msg(FETCH_RESP, msg.frm, index=prev, entries=ents, done=done,
                             log_epoch=self.last_epoch, commit=self.last_index, ctx=prev))

    # ------------------------------------------------------------------ candidate side
    def _on_new_epoch_resp(self, msg: Msg) -> None:
        if self.role != CANDIDATE:
            return
        if msg.reject or msg.epoch > self.promised:
            if msg.epoch > self.promised:
                self._step_down(None)
            return
        if msg.epoch < self.promised:
            return
        self.accepts[msg.frm] = (msg.log_epoch, msg.index)
        self._maybe_win()

    def _maybe_win(self) -> None:
        if self.role != CANDIDATE or self.fetch_from is not None:
            return
        if not self._election_won():
            return
        best = max(self.accepts, key=lambda n: (self.accepts[n], n == self.id))
        if self.accepts[best] == (self.last_epoch, self.last_index) or best == self.id:
            self._become_leader()
            return
        # Adopt the best log of the majority: fetch what we lack, probing back for a match.
        self.fetch_from = best
        self.fetch_target = self.accepts[best]
        self._send_fetch(self.last_index)

    def _send_fetch(self, prev: int) -> None:
        assert self.fetch_from is not None
        self._fetch_prev = prev
        self._send(self._msg(FETCH, self.fetch_from, index=prev,
                             log_epoch=self.epoch_at(prev) if prev else 0))

    def _on_fetch_resp(self, msg: Msg) -> None:
        if self.role != CANDIDATE or msg.frm != self.fetch_from:
            return
        if msg.epoch > self.promised or (msg.reject and msg.done):
            self._step_down(None)
            return
        if msg.epoch < self.promised or msg.ctx != self._fetch_prev:
            return  # a stale or duplicated answer to an earlier fetch (ctx echoes its prev)
        if msg.reject:
            # (never below our base: entries up to it are committed, so they match)
            self._send_fetch(max(min(msg.index, self.last_index), self.base_index))
            return
        if msg.entries:
            self._append_from_leader(msg.entries)
        got = msg.entries[-1].index if msg.entries else msg.index
        if not msg.done:
            self._send_fetch(got)
            return
        # Our log now equals the member's up to its last index; drop anything beyond it.
        if self.last_index > msg.commit:
            self._truncate_from(msg.commit + 1)
        assert (self.last_epoch, self.last_index) == self.fetch_target, (
            self.last_epoch, self.last_index, self.fetch_target)
        self.fetch_from = None
        self._become_leader()

    def _become_leader(self) -> None:
        assert self.role == CANDIDATE and self.promised_to == self.id
        self.role = LEADER
        self.leader = self.id
        self.serving = False
        self.accepts = {}
        self._append_local(Entry(self.promised, self.last_index + 1, self.cfg.noop_payload))
        self.noop_index = self.last_index
        self.progress = {
            peer: Progress(next=self.noop_index, heard_tick=self.ticks) for peer in self.peers()
        }
        self._needs_broadcast = True
        self._maybe_commit()

    # ------------------------------------------------------------------ leader side
    def _send_append(self, peer: int) -> None:
        pr = self.progress[peer]
        if pr.snapshotting:
            return
        if pr.next <= self.base_index:
            self._need_snapshot(peer)  # the entries it needs next were compacted
            return
        if pr.probing and pr.probe_sent:
            return
        if not pr.probing and pr.next > self.last_index:
            return
        if not pr.probing and pr.next - pr.match > self.cfg.inflight_entries_max:
            return
        prev = pr.next - 1
        ents = (self.entries(pr.next, self.last_index + 1, self.cfg.append_bytes_max)
                if pr.next <= self.last_index else [])
        self._send(self._msg(APPEND, peer, index=prev, log_epoch=self.epoch_at(prev),
                             entries=ents, commit=self.commit))
        if pr.probing:
            pr.probe_sent = True
        elif ents:
            pr.next = ents[-1].index + 1

    def _heartbeat_all(self, ctx: int, periodic: bool) -> None:
        for peer, pr in self.progress.items():
            self._send(self._msg(HEARTBEAT, peer, commit=min(self.commit, pr.match), ctx=ctx))
            if periodic:
                # Retransmit to followers that made no progress since the last beat: a lost
                # probe is sent again where it was; a pipeline with a gap restarts after the
                # last acknowledged entry.
                if pr.match < self.last_index and pr.match == pr.match_at_last_check:
                    if not pr.probing:
                        pr.next = pr.match + 1
                        pr.probing = True
                    pr.probe_sent = False
                    self._send_append(peer)
                pr.match_at_last_check = pr.match

    def _on_append_resp(self, msg: Msg) -> None:
        if self.role != LEADER:
            return
        if msg.epoch > self.promised:
            self._set_promise(msg.epoch, 0)
            self._step_down(None)
            return
        if msg.epoch < self.promised:
            return
        pr = self.progress.get(msg.frm)
        if pr is None:
            return
        pr.heard_tick = self.ticks
        if msg.reject:
            pr.next = max(pr.match + 1, min(pr.next - 1, msg.index + 1))
            pr.probing = True
            pr.probe_sent = False
            self._send_append(msg.frm)
            return
        if msg.index > pr.match:
            pr.match = msg.index
        pr.next = max(pr.next, pr.match + 1)
        if pr.probing:
            pr.probing = False
            pr.probe_sent = False
        self._maybe_commit()
        self._send_append(msg.frm)

    def _on_heartbeat_resp(self, msg: Msg) -> None:
        if self.role != LEADER:
            return
        if msg.epoch > self.promised:
            self._set_promise(msg.epoch, 0)
            self._step_down(None)
            return
        if msg.epoch < self.promised or msg.reject:
            return
        pr = self.progress.get(msg.frm)
        if pr is None:
            return
        pr.heard_tick = self.ticks
        if msg.ctx > pr.acked_ctx:
            pr.acked_ctx = msg.ctx
            self._check_read_round()

    def _maybe_commit(self) -> None:
        # Members only (learners and joint voters count in no commit); the leader is one.
        matches = sorted([self.stable] + [pr.match for peer, pr in self.progress.items()
                                          if peer in self.members], reverse=True)
        candidate = matches[self.quorum - 1]
        if candidate > self.commit and self.epoch_at(candidate) == self.promised:
            self.commit = candidate
            if not self.serving and self.commit >= self.noop_index:
                self.serving = True
                self._out.became_leader = self.promised
                if self._reads_waiting and not self._round_in_flight:
                    self._start_read_round()
            self._needs_broadcast = True  # followers learn the new commit index

    def _start_read_round(self) -> None:
        self.read_ctx += 1
        ctx = self.read_ctx
        self._reads_in_round[ctx] = self._reads_waiting
        self._reads_waiting = []
        self._round_in_flight = ctx
        self._heartbeat_all(ctx=ctx, periodic=False)
        self._check_read_round()

    def _check_read_round(self) -> None:
        if not self._reads_in_round:
            return
        acked = sorted([self.read_ctx] + [pr.acked_ctx for peer, pr in self.progress.items()
                                          if peer in self.members], reverse=True)
        confirmed = acked[self.quorum - 1]
        for ctx in sorted(c for c in self._reads_in_round if c <= confirmed):
            self._out.reads.extend(self._reads_in_round.pop(ctx))
        if self._round_in_flight and self._round_in_flight <= confirmed:
            self._round_in_flight = 0
            if self._reads_waiting:
                self._start_read_round()

    # ------------------------------------------------------------------ compaction, snapshots
    def compact(self, index: int) -> None:
        """Forget the log up to ``index``, which becomes the base (``Ready.compact_to`` asks the
        driver to drop it from the log). The driver has made the state machine durable through
        ``index``: those entries can no longer be replayed."""
        assert self.base_index <= index <= self.applied, (self.base_index, index, self.applied)
        if index == self.base_index:
            return
        assert index < self.unstable_offset, (index, self.unstable_offset)  # applied: durable
        self.base_epoch = self.epoch_at(index)
        self.base_index = index
        self._pending_compact = index

    def report_snapshot(self, peer: int, ok: bool, index: int = 0) -> None:
        """The driver's snapshot for ``peer`` ended. ``ok``: the peer holds the state up to
        ``index`` (installed, or it had it: the answer to the offer), so appends resume after
        it. Not ok: the peer is asked for again at a later heartbeat (the driver backs off)."""
        if self.role != LEADER:
            return
        pr = self.progress.get(peer)
        if pr is None or not pr.snapshotting:
            return
        pr.snapshotting = False
        pr.probing = True
        pr.probe_sent = False
        if ok:
            pr.heard_tick = self.ticks
            pr.next = min(max(index, pr.match), self.last_index) + 1
            self._send_append(peer)

    def _need_snapshot(self, peer: int) -> None:
        pr = self.progress[peer]
        pr.snapshotting = True
        pr.probing = True
        pr.probe_sent = False
        self._out.snapshots.append(SnapshotNeed(peer, self.base_index, self.base_epoch))

    def offer_snapshot(self, frm: int, epoch: int, index: int, snap_epoch: int) -> tuple[str, int]:
        """The leader ``frm`` of ``epoch`` offers the state at (``index``, ``snap_epoch``): a
        committed entry of its log. Returns (answer, index): see the SNAPSHOT_* constants.
        On SNAPSHOT_ACCEPT the follower is frozen until ``on_snapshot_installed`` or
        ``on_snapshot_aborted``."""
        if self.role == IDLE or frm not in self.members or frm == self.id:
            return SNAPSHOT_REFUSE, self.promised
        if epoch < self.promised:
            return SNAPSHOT_REFUSE, self.promised  # not my leader: it learns of our epoch
        if self.installing is not None:
            return SNAPSHOT_BUSY, 0
        self._follow(Msg(SNAPSHOT, frm, self.id, epoch, index=index, log_epoch=snap_epoch))
        answer = self._snapshot_answer(index, snap_epoch)
        if answer == SNAPSHOT_STALE:
            return SNAPSHOT_STALE, self.commit
        if answer == SNAPSHOT_HAVE:
            # Our log holds it: everything up to it is the leader's committed log. Keep the log
            # after it (as Raft's InstallSnapshot does) and apply from our own entries.
            self.commit = max(self.commit, index)
            return SNAPSHOT_HAVE, index
        self.installing = (frm, epoch, index, snap_epoch)
        return SNAPSHOT_ACCEPT, index

    def on_snapshot_installed(self, index: int, epoch: int) -> None:
        """The driver installed the accepted snapshot and made it durable: the state machine
        holds the state up to ``index``, and the log is empty with the base (index, epoch)."""
        assert self.installing is not None and self.installing[2:] == (index, epoch), (
            self.installing, index, epoch)
        assert index > self.commit >= self.applied, ("snapshot would take applied state back",
                                                     index, self.commit, self.applied)
        self._reset_to_snapshot(index, epoch)

    def _reset_to_snapshot(self, index: int, epoch: int) -> None:
        self.base_index, self.base_epoch = index, epoch
        self.last_index, self.last_epoch = index, epoch
        self.stable = index
        self.unstable = []
        self.unstable_offset = index + 1
        self._written_last = index
        self._hand_from = index + 1
        self._pending_truncate = None
        self._pending_compact = None
        self.commit = self.applied = index
        self._apply_next = index + 1
        self._end_install()

    def on_snapshot_aborted(self) -> None:
        """The accepted snapshot will not be installed (transfer failed or timed out); the log
        and state machine are as they were."""
        if self.installing is not None:
            self._end_install()

    def _end_install(self) -> None:
        self.installing = None
        to, self._deferred_promise_to = self._deferred_promise_to, None
        if to is not None and self.promised_to == to:
            # The promise made meanwhile is answered now, with the log as it is.
            self._send(self._msg(NEW_EPOCH_RESP, to, index=self.last_index,
                                 log_epoch=self.last_epoch))

    def _promise_while_installing(self, msg: Msg) -> None:
        """NEW_EPOCH during an install: promise as usual (durably: the older leader is fenced),
        but answer with our log only once the install ended, since it is about to change."""
        assert self.role == FOLLOWER, (self.role, msg)  # leaders and candidates never install
        if msg.epoch > self.promised or (msg.epoch == self.promised
                                          and self.promised_to == msg.frm):
            self._set_promise(msg.epoch, msg.frm)
            self.leader = msg.frm
            self._deferred_promise_to = msg.frm
        else:
            self._send(self._msg(NEW_EPOCH_RESP, msg.frm, reject=True))

    def _skip_compacted(self, msg: Msg) -> Msg:
        """An append whose ``prev`` is below our base, seen from the base: its entries up to our
        base are committed, hence equal to ours (the leader of our epoch holds every committed
        entry), and need not be checked or written again."""
        entries = [e for e in msg.entries if e.index > self.base_index]
        return Msg(msg.type, msg.frm, msg.to, msg.epoch, index=self.base_index,
                   log_epoch=self.base_epoch, commit=msg.commit, entries=entries, ctx=msg.ctx)

    # ------------------------------------------------------------------ output
    def ready(self) -> Ready:
        if self.role == LEADER and self._needs_broadcast:
            self._needs_broadcast = False
            for peer in self.progress:
                self._send_append(peer)
        out = self._out
        self._out = Ready()
        if self._hardstate_dirty:
            out.hardstate = {"promised_epoch": self.promised, "promised_to": self.promised_to}
            self._hardstate_dirty = False
        if self._pending_truncate is not None:
            out.truncate_from = self._pending_truncate
            self._pending_truncate = None
        if self._hand_from <= self.last_index:
            assert self._hand_from >= self.unstable_offset, (self._hand_from, self.unstable_offset)
            out.entries = self.unstable[self._hand_from - self.unstable_offset:]
            self._hand_from = self.last_index + 1
            self._written_last = self.last_index
        if self._pending_compact is not None:
            out.compact_to = self._pending_compact
            self._pending_compact = None
        upto = self._apply_limit()
        if self._apply_next <= upto and self.installing is None:
            out.committed = self.entries(self._apply_next, upto + 1, self.cfg.apply_bytes_max)
            self._apply_next = out.committed[-1].index + 1
        return out

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "role": self.role,
            "epoch": self.promised,
            "leader": self.leader,
            "leader_epoch": self.promised if self.role == LEADER and self.serving else 0,
            "last_epoch": self.last_epoch,
            "last_index": self.last_index,
            "commit_index": self.commit,
            "applied_index": self.applied,
            "stable_index": self.stable,
            "members": list(self.members),
            "learners": list(self.learners),
            "joint": list(self.joint),
        }
        if self.role == LEADER:
            # what the leader knows each peer holds (string keys: msgpack maps between
            # processes refuse integer keys); the operator's lag is last_index - match
            status["match"] = {str(peer): pr.match for peer, pr in self.progress.items()}
        return status
