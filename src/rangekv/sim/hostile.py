"""The simulation's hostile actors (issue 16): a misbehaving rm and a misbehaving node.

Both run in a share of the seeds (``SimConfig.hostile``), from a random source of their own, so
that the other seeds run as they did before these actors existed, event for event.

**The bad rm** sends some of the clients' writes with a seq no honest rm proposes: the highest
seq there is (``ff...ff``), one an hour ahead of the leader's clock, or one just past the
maximum clock offset. The leader decides seqs with :func:`rangekv.sequencer.assign`, as the
driver does; every such write must be refused there (``clock_offset``: surely not applied, so
not part of the history), and the run's checks, linearizability included, still hold.

**The bad node** (id :data:`HOSTILE_NODE`, never a member, learner or spare) sends the members
replication messages no honest peer sends, each built from what the target holds at that
moment. Where it stands decides what it can claim to be:

* *From its own host*, a message that claims a member's id fails the address check of the node
  server (``wire.address_matches``: a message naming node X must come from X's registered
  IP), which the simulator models at delivery: such a message never reaches the core. That is
  the only defence against a **plausible** forgery (a well-formed heartbeat from the real
  leader's id at its epoch, a campaign of the next epoch from a member): without
  authentication nothing else can tell it apart. These are sent with ``own_address`` and
  counted as dropped by address.
* *As if the address check could not tell* (every process on one machine, all on 127.0.0.1:
  the known limit until TLS), a forgery reaches the core, which is then the last defence. The
  bad node sends only what the core must refuse (``Core.implausible``) or ignore whatever
  happens between sending and delivery: epochs below what the target has durably promised
  (a crash cannot take that back), two leaders in the epoch the target durably promised to
  another node, entries that do not follow ``prev``, acknowledgements far beyond the log,
  senders outside the group, messages addressed to another node, and malformed wire lists
  (which ``Msg.from_wire`` refuses, as the node server does).

The simulation checks every delivered forgery: refused (counted in ``core.refused``) or ignored,
and the target's replication state exactly as it was before (:func:`core_state`). A refusal of
an honest node's message still fails the run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from rangekv import sequencer
from rangekv.replication.core import LEADER, Core
from rangekv.replication.malformed import malformed_wire
from rangekv.replication.messages import (
    APPEND,
    APPEND_RESP,
    HEARTBEAT,
    HEARTBEAT_RESP,
    NEW_EPOCH,
    NEW_EPOCH_RESP,
    Entry,
    Msg,
)

HOSTILE_NODE = 1000  # the bad node's id: above every member and spare of the simulation

# --- the bad rm -------------------------------------------------------------------------------

RM_KINDS = ("seq_max", "seq_hour_ahead", "seq_past_offset")
HOUR_NS = 3600 * 10**9
PAST_OFFSET_MS = (50.0, 1_000.0)  # how far beyond the maximum clock offset "just past" is


def poison_seq(kind: str, rng: random.Random, now_ns: int, client: int) -> bytes:
    """The seq the bad rm proposes for a write of ``kind`` (one of :data:`RM_KINDS`), made at
    the leader's ``now_ns`` (what it is ahead of is the leader's clock when it decides)."""
    if kind == "seq_max":
        return sequencer.MAX
    if kind == "seq_hour_ahead":
        ahead_ns = HOUR_NS
    elif kind == "seq_past_offset":
        ahead_ns = int((sequencer.SEQ_AHEAD_MS_MAX + rng.uniform(*PAST_OFFSET_MS)) * 10**6)
    else:
        raise ValueError(f"unknown bad rm kind {kind!r}")
    return sequencer.make(now_ns + ahead_ns, rng.randrange(1 << 32), client & 0xFFFFFFFF)


# --- the bad node -----------------------------------------------------------------------------

# delivered to the core (it must refuse or ignore them), then dropped at the boundary
NODE_KINDS = ("stale_epoch", "two_leaders", "not_following", "ack_beyond_log", "non_member",
              "wrong_node", "malformed", "plausible_forgery")
STALE_TYPES = (APPEND, HEARTBEAT, NEW_EPOCH, APPEND_RESP, HEARTBEAT_RESP, NEW_EPOCH_RESP)
FAR_BEYOND = (10**6, 10**9)  # how far past the leader's last index a forged ack claims
FORGED = b"forged by the bad node"


@dataclass(frozen=True)
class Forgery:
    kind: str
    target: int  # the node it is delivered to
    wire: Any  # what travels: ``Msg.to_wire()``, or a malformed list
    own_address: bool  # sent from the bad node's own host (a claimed member id fails there)


def forge(rng: random.Random, cores: dict[int, Core], members: tuple[int, ...]
          ) -> Forgery | None:
    """One forged message to one of ``cores`` (the members that are up), or None."""
    if not cores:
        return None
    target = rng.choice(sorted(cores))
    core = cores[target]
    # What the target has promised durably: a crash can take back a later promise, never this
    # one, so an epoch below it is stale at delivery whatever happens meanwhile.
    epoch, promised_to = core._durable_promise
    others = [m for m in members if m != target]
    rivals = [m for m in others if m != promised_to]
    kinds = ["not_following", "non_member", "wrong_node", "malformed", "plausible_forgery"]
    if epoch > 0 and others:
        kinds.append("stale_epoch")
    if epoch > 0 and promised_to != 0 and rivals:
        kinds.append("two_leaders")
    if core.role == LEADER and core.peers():
        kinds.append("ack_beyond_log")
    kind = rng.choice(kinds)
    claimed = rng.choice(others) if others else HOSTILE_NODE
    last = core.last_index

    def msg(mtype: str, frm: int, e: int, **kw: Any) -> Msg:
        return Msg(mtype, frm, target, e, **kw)

    if kind == "stale_epoch":
        e = rng.randrange(epoch)
        mtype = rng.choice(STALE_TYPES)
        kw: dict[str, Any] = {"index": rng.randrange(last + 2), "commit": last + 1}
        if mtype == APPEND:
            kw["log_epoch"] = e
            kw["entries"] = [Entry(e, kw["index"] + 1 + i, FORGED) for i in range(2)]
        m = msg(mtype, claimed, e, **kw)
    elif kind == "two_leaders":
        # the epoch the target promised to another node, led by a second one
        frm = rng.choice(rivals)
        if rng.random() < 0.5:
            m = msg(HEARTBEAT, frm, epoch, commit=last + 1)
        else:
            m = msg(APPEND, frm, epoch, index=last, log_epoch=core.last_epoch, commit=last + 1,
                    entries=[Entry(epoch, last + 1, FORGED)])
    elif kind == "not_following":
        e = rng.randrange(epoch + 1)
        prev = rng.randrange(last + 2)
        how = rng.choice(["gap", "epoch_above_leader", "epochs_decrease"])
        leader_epoch = e
        if how == "gap":
            entries = [Entry(e, prev + 1, FORGED), Entry(e, prev + 3, FORGED)]
        elif how == "epoch_above_leader":
            entries = [Entry(e + 1, prev + 1, FORGED)]
        else:
            # the second entry's epoch is below the first's (the message's epoch stays at
            # most what the target promised durably: if e + 1 is above it, the first entry
            # is the one above its leader's epoch, refused as well)
            entries = [Entry(e + 1, prev + 1, FORGED), Entry(e, prev + 2, FORGED)]
            leader_epoch = min(e + 1, epoch)
        m = msg(APPEND, claimed, leader_epoch, index=prev, log_epoch=0, commit=last + 1,
                entries=entries)
    elif kind == "ack_beyond_log":
        m = msg(APPEND_RESP, rng.choice(core.peers()), epoch,
                index=last + rng.randrange(*FAR_BEYOND))
    elif kind == "non_member":
        mtype = rng.choice([NEW_EPOCH, APPEND, HEARTBEAT])
        e = epoch + rng.choice([0, 1, 10**6])
        m = msg(mtype, HOSTILE_NODE, e, index=last, log_epoch=core.last_epoch,
                commit=last + 1, entries=[Entry(e, last + 1, FORGED)] if mtype == APPEND else [])
    elif kind == "wrong_node":
        # a plausible message, addressed to someone else: never the target's business
        m = Msg(HEARTBEAT, core.leader or claimed, rng.choice([*others, HOSTILE_NODE]),
                core.promised, commit=core.commit)
    elif kind == "malformed":
        return Forgery(kind, target, malformed_wire(rng, claimed, target, epoch), False)
    else:  # plausible_forgery: only the address check stops it
        plausible = [msg(NEW_EPOCH, claimed, core.promised + 1, index=last,
                         log_epoch=core.last_epoch)]
        if core.leader is not None and core.leader != target:
            plausible.append(msg(HEARTBEAT, core.leader, core.promised, commit=core.commit))
        if core.role == LEADER:
            plausible.append(msg(APPEND_RESP, claimed, core.promised, index=last))
        return Forgery(kind, target, rng.choice(plausible).to_wire(), True)
    return Forgery(kind, target, m.to_wire(), False)


def core_state(core: Core) -> tuple[Any, ...]:
    """Everything of a core's replication state a message could change (its output aside):
    a forgery that is refused or ignored leaves all of it as it was."""
    progress = tuple(
        (peer, pr.next, pr.match, pr.probing, pr.probe_sent, pr.heard_tick, pr.acked_ctx,
         pr.match_at_last_check, pr.snapshotting)
        for peer, pr in sorted(core.progress.items()))
    return (core.role, core.promised, core.promised_to, core.leader, core.serving,
            core.last_index, core.last_epoch, core.commit, core.applied, core.base_index,
            core.stable, core.installing, core.fetch_from, core.fetch_target,
            tuple(sorted(core.accepts.items())), progress, core.read_ctx,
            core.members, core.learners, core.joint)
