"""The replicated command each of meta's range requests becomes, and the answer made of its apply
result, and the pages meta's reads of a moving range get: shared by the node server and the
simulator's nodes, so that a range change proposed in a simulation is the one production
proposes. Also the parts of the data requests that are pure (a write's session fields, a
batch's command and seqs, the answer to each item); the server proposes those itself."""

from __future__ import annotations

from typing import Any

from rangekv import errors, sequencer
from rangekv.storage import sessions
from rangekv.storage.engine import StateMachine

EXPORT_BYTES_MAX = 512 * 1024  # keys and values in one page of a moving range's copy
EXPORT_PAGE_KEYS_DEFAULT = 1000  # records in an export page whose request names no limit

# meta's requests that are one replicated command each
RANGE_OPS = frozenset({"add_range", "fence_range", "unfence_range", "finish_import",
                       "drop_range", "import", "split_range", "merge_range", "drop_table",
                       "import_sessions"})
# meta's reads of a moving range's source, answered once a read is linearizable
META_READ_OPS = frozenset({"export", "export_sessions"})


def range_command(op: str, req: dict[str, Any]) -> dict[str, Any]:
    """The command ``op`` (one of ``RANGE_OPS``, its fields checked by ``requests.OPS``)
    proposes. Its seq is the group's next (``sequencer.ZERO``: the leader assigns it), except
    for an importing range, whose seq is the source's hand-over seq H."""
    if op == "add_range":
        cmd = {"op": "add_range", "t": req["table_id"], "start": req["start"] or b"",
               "end": req["end"], "s": sequencer.ZERO}
        if req.get("importing"):
            # a range moving here: every seq this group gives from now on is above the
            # source's highest (``seq``, from its fence_range)
            if req.get("seq") is None:
                raise errors.InvalidArgument("an importing range needs the seq it was "
                                             "handed over at", field="seq")
            cmd.update(st="importing", s=req["seq"])
        return cmd
    if op in ("fence_range", "unfence_range", "finish_import", "drop_range"):
        return {"op": op, "t": req["table_id"], "start": req["start"] or b"",
                "end": req["end"], "s": sequencer.ZERO}
    if op == "import":
        return {"op": "import", "t": req["table_id"],
                "items": [[k, *version] for k, version in req["items"]], "s": sequencer.ZERO}
    if op in ("split_range", "merge_range"):
        return {"op": op, "t": req["table_id"], "at": req["at"], "s": sequencer.ZERO}
    if op == "drop_table":
        return {"op": "drop_table", "t": req["table_id"], "s": sequencer.ZERO}
    if op == "import_sessions":
        # the source's client sessions, merged; ``done``: the range [start, end) has them all
        return {"op": "import_sessions", "t": req["table_id"], "start": req["start"] or b"",
                "end": req["end"], "items": req["items"], "done": bool(req["done"]),
                "s": sequencer.ZERO}
    raise AssertionError(f"op {op!r} is not a range command")


def range_reply(op: str, result: dict[str, Any]) -> dict[str, Any]:
    """The answer to ``op`` once its command applied with ``result`` (no error)."""
    if op == "fence_range":
        return {"seq": result["seq"]}
    if op in ("import", "import_sessions"):
        return {"imported": result["imported"]}
    return {}


def meta_read(engine: StateMachine, op: str, req: dict[str, Any]) -> dict[str, Any]:
    """The answer to one of ``META_READ_OPS`` (its fields checked by ``requests.OPS``), once a
    read here is linearizable."""
    if op == "export":
        return export_page(engine, req["table_id"], req["start"] or b"", req["end"],
                           req.get("after"), req["limit"] or EXPORT_PAGE_KEYS_DEFAULT)
    if op == "export_sessions":
        # every client session of the group (they are keyed by client, not by range): a
        # retried write that the source applied before the fence finds its result on the target
        items, more = engine.export_sessions(req.get("after"),
                                             req.get("limit") or sessions.EXPORT_CLIENTS_MAX)
        return {"items": items, "more": more}
    raise AssertionError(f"op {op!r} is not a read of meta's")


def export_page(engine: StateMachine, table_id: int, start: bytes, end: bytes | None,
                after: bytes | None, limit: int) -> dict[str, Any]:
    """A page of a moving range for the copy (``export``): every record, tombstones included,
    once a read here is linearizable. A span this group does not wholly own is refused: a
    stale map must not turn into a silently short copy."""
    if not engine.covers(table_id, start, end):
        raise engine.not_here(table_id)
    versions, more = engine.scan_versions(table_id, start, end, after, limit, EXPORT_BYTES_MAX)
    return {"items": [[k, seq, tomb, v] for k, v, seq, tomb in versions], "more": more}


# -- data requests ---------------------------------------------------------------------------


def session_fields(client: bytes | None, cseq: int | None, floor: int | None,
                   retry: bool | None) -> dict[str, Any]:
    """The session fields of a put or del command (``storage/sessions.py``), from a request's
    checked ``client``, ``cseq``, ``floor`` and ``retry``; none for a write without a session.
    Raises ``invalid_argument`` for a cseq without a client or the reverse, or a floor above
    the cseq (the write itself awaits its answer)."""
    if client is None:
        if cseq is not None:
            raise errors.InvalidArgument("a cseq needs the client it numbers", field="cseq")
        return {}
    if cseq is None:
        raise errors.InvalidArgument("a write of a client session needs its cseq",
                                     field="cseq")
    if floor is not None and floor > cseq:
        raise errors.InvalidArgument(f"floor {floor} is above the write's cseq {cseq}, which "
                                     "awaits its answer", field="floor")
    return sessions.command_fields(client, cseq, floor, retry)


# (kind "put"|"delete", key, value, if_seq, seq, cseq): a batch_write item, checked
BatchItem = tuple[str, bytes, bytes | None, bytes | None, bytes, int | None]


def check_batch_session(client: bytes | None, floor: int | None,
                        items: list[BatchItem]) -> None:
    """A batch_write's items carry a cseq each if it has a client, none otherwise; its floor
    is at most the lowest (``invalid_argument`` else)."""
    cseqs = [item[5] for item in items]
    if client is None:
        if any(n is not None for n in cseqs):
            raise errors.InvalidArgument("an item's cseq needs the batch's client",
                                         field="items")
        return
    if any(n is None for n in cseqs):
        raise errors.InvalidArgument("every item of a client session's batch needs its cseq",
                                     field="items")
    if cseqs and floor is not None and floor > min(n for n in cseqs if n is not None):
        raise errors.InvalidArgument(f"floor {floor} is above an item's cseq",
                                     field="floor")


def batch_seqs(proposed: list[bytes], last: bytes, now_ns: int, ahead_ms_max: int,
               node_id: int | None) -> list[bytes | errors.ClockOffset]:
    """The final seq of each item of a batch a leader proposes (as ``sequencer.assign`` gives a
    put's): each above the one before and above ``last``, the group's last seq; an item whose
    proposed seq is too far ahead of the leader's clock gets its ``ClockOffset`` instead. The
    caller makes the last one the group's last seq before anything else is proposed, and the
    batch's own command seq comes after all of them."""
    out: list[bytes | errors.ClockOffset] = []
    for seq in proposed:
        try:
            final = sequencer.assign(seq, last, now_ns, from_client=True,
                                     ahead_ms_max=ahead_ms_max, node_id=node_id)
        except errors.ClockOffset as err:
            out.append(err)
            continue
        out.append(final)
        last = final
    return out


def batch_command(table_id: int, items: list[BatchItem], seqs: list[bytes],
                  client: bytes | None, floor: int | None, retry: bool | None
                  ) -> dict[str, Any]:
    """The one command a batch_write proposes: its items with their final ``seqs``."""
    assert len(items) == len(seqs), (len(items), len(seqs))
    cmd: dict[str, Any] = {
        "op": "batch", "t": table_id, "s": sequencer.ZERO,
        "items": [["put" if kind == "put" else "del", key, value, if_seq, seq, cseq]
                  for (kind, key, value, if_seq, _, cseq), seq in zip(items, seqs, strict=True)],
    }
    if client is not None:
        cmd.update(ci=client, cf=floor or 0, cr=bool(retry))
    return cmd


def write_reply(kind: str, result: dict[str, Any]) -> dict[str, Any]:
    """The answer to a put or a delete (or a batch's item) once applied with ``result``."""
    if "error" in result:
        return {"error": result["error"]}
    if kind == "put":
        return {"seq": result["seq"]}
    return {"deleted": bool(result["deleted"]), "seq": result["seq"]}


def version_reply(version: tuple[bytes, bool, bytes] | None) -> dict[str, Any]:
    """A versioned read's answer (a get with ``versions``, a batch_get's key): the record,
    tombstone or not (its seq counts during a move), or none."""
    if version is None:
        return {"found": False, "value": b"", "seq": sequencer.ZERO, "tombstone": False}
    return {"found": True, "seq": version[0], "tombstone": version[1], "value": version[2]}
