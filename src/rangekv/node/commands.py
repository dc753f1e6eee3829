"""The replicated command each of meta's range requests becomes, and the answer made of its apply
result: shared by the node server and the simulator's nodes, so that a range change proposed in
a simulation is the one production proposes. (The data requests, put and delete, carry the
client's seq and condition: the server builds those itself.)"""

from __future__ import annotations

from typing import Any

from rangekv import errors, sequencer
from rangekv.storage.engine import StateMachine

EXPORT_BYTES_MAX = 512 * 1024  # keys and values in one page of a moving range's copy

# meta's requests that are one replicated command each
RANGE_OPS = frozenset({"add_range", "fence_range", "unfence_range", "finish_import",
                       "drop_range", "import", "split_range", "merge_range", "drop_table"})


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
    raise AssertionError(f"op {op!r} is not a range command")


def range_reply(op: str, result: dict[str, Any]) -> dict[str, Any]:
    """The answer to ``op`` once its command applied with ``result`` (no error)."""
    if op == "fence_range":
        return {"seq": result["seq"]}
    if op == "import":
        return {"imported": result["imported"]}
    return {}


def export_page(engine: StateMachine, table_id: int, start: bytes, end: bytes | None,
                after: bytes | None, limit: int) -> dict[str, Any]:
    """A page of a moving range for the copy (``export``): every record, tombstones included,
    once a read here is linearizable. A span this group does not wholly own is refused: a
    stale map must not turn into a silently short copy."""
    if not engine.covers(table_id, start, end):
        raise engine.not_here(table_id)
    versions, more = engine.scan_versions(table_id, start, end, after, limit, EXPORT_BYTES_MAX)
    return {"items": [[k, seq, tomb, v] for k, v, seq, tomb in versions], "more": more}
