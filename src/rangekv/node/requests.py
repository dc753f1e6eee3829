"""Every request a node serves, with its fields declared and checked (``rangekv.fields``).

``OPS[op].parse(body)`` is the first thing the node does with a request; handlers read only
what it returns. The table in docs/internals.md ("Every internal request checked") is
``fields.describe(OPS.values())``.
"""

from __future__ import annotations

from typing import Any

from rangekv import errors, sequencer
from rangekv import fields as f
from rangekv.limits import LIST_LIMIT_MAX, VALUE_BYTES_MAX
from rangekv.storage import sessions
from rangekv.storage.snapshot import CHUNK_BYTES_MAX, FILES_MAX, Manifest, SnapshotInvalid

IMPORT_ITEMS_MAX = 100_000  # records in one import (a page of a moving range's copy)
BATCH_ITEMS_MAX = 10_000  # writes in one batch_write, keys in one batch_get (and the frame)
# Keys and values of one batch_write, and results of one import_sessions: each becomes ONE log
# entry, which must fit in a replication frame (FRAME_BYTES_MAX, 8 MiB) with room to spare.
BATCH_BYTES_MAX = 4 * 1024 * 1024
IMPORT_SESSIONS_MAX = 100_000  # client sessions in one import_sessions

RM = "rm"
META = "meta"
LEADER = "group leader"
TOOLS = "operators, `rangekv backup`"


def _manifest(name: str, raw: Any) -> Manifest:
    return Manifest.from_wire(raw)  # every field checked there; raises SnapshotInvalid


TABLE = f.uint()
ROUTED = {"rv": f.optional(f.uint())}  # the range version an rm routed by (echoed on errors)
# a read of a moving range's source, by an rm whose map shows the switch (``check_current``)
AS_SOURCE = {"as_source": f.optional(f.boolean())}
SPAN = {"table_id": TABLE, "start": f.optional(f.bound()), "end": f.optional(f.bound())}
PAGE = {**SPAN, "after": f.optional(f.bound()),
        "limit": f.optional(f.uint(2**31 - 1, 1)), "versions": f.optional(f.boolean()), **ROUTED,
        **AS_SOURCE}
SNAPSHOT = {"frm": f.uint(f.ID_MAX, 1), "epoch": f.uint(), "index": f.uint()}
# a write's client session (exactly-once writes, ``storage/sessions.py``): the client's id, the
# write's number (``cseq``: a batch gives each item its own), the lowest number the client
# still awaits (``floor``: results below it may be forgotten), and whether an earlier attempt
# of this write may have been applied (``retry``)
CLIENT = {"client": f.optional(f.blob(sessions.CLIENT_BYTES, sessions.CLIENT_BYTES,
                                      kind="client id")),
          "floor": f.optional(f.uint()), "retry": f.optional(f.boolean())}
SESSION = {**CLIENT, "cseq": f.optional(f.uint(sessions.CSEQ_MAX, 1))}
_SEQ = b"\x01" * 16  # (a well-formed seq, for the bad examples)


def _batch_items() -> f.Field:
    """``batch_write``'s items: ``[kind, key, value, if_seq, seq, cseq]`` each."""
    key, value, seq, cond = f.key().check, f.value().check, f.seq().check, f.condition().check
    cseq = f.uint(sessions.CSEQ_MAX, 1).check

    def check(name: str, raw: Any) -> list[tuple[str, bytes, bytes | None, bytes | None,
                                                 bytes, int | None]]:
        if not isinstance(raw, list):
            raise errors.InvalidArgument(f"{name}: must be a list of [kind, key, value, "
                                         "if_seq, seq, cseq]", field=name)
        if len(raw) > BATCH_ITEMS_MAX:
            raise errors.InvalidArgument(f"{name}: {len(raw)} items; the limit is "
                                         f"{BATCH_ITEMS_MAX}", field=name, limit=BATCH_ITEMS_MAX)
        out = []
        nbytes = 0
        for item in raw:
            if not isinstance(item, list) or len(item) != 6:
                raise errors.InvalidArgument(f"{name}: an item is [kind, key, value, if_seq, "
                                             "seq, cseq]", field=name)
            kind, k, v, c, s, n = item
            if kind not in ("put", "delete"):
                raise errors.InvalidArgument(f"{name}: an item's kind is 'put' or 'delete'",
                                             field=name)
            if kind == "delete" and v is not None:
                raise errors.InvalidArgument(f"{name}: a delete carries no value (nil)",
                                             field=name)
            out.append((kind, key(name, k), value(name, v) if kind == "put" else None,
                        None if c is None else cond(name, c), seq(name, s),
                        None if n is None else cseq(name, n)))
            nbytes += len(k) + (len(v) if v is not None else 0)
            if nbytes > BATCH_BYTES_MAX:
                raise errors.TooLarge(f"{name}: over {BATCH_BYTES_MAX} bytes of keys and values",
                                      field=name, limit=BATCH_BYTES_MAX)
        return out

    return f.any_of(
        f"list of ≤ {BATCH_ITEMS_MAX} [kind ('put' or 'delete'), key, value (nil for a "
        "delete), if_seq or nil, seq, cseq or nil]", check,
        (({}, f.INVALID), ([["put", b"k", b"v", None, _SEQ]], f.INVALID),
         ([["nope", b"k", None, None, _SEQ, None]], f.INVALID),
         ([["put", b"", b"v", None, _SEQ, None]], f.INVALID),
         ([["delete", b"k", b"v", None, _SEQ, None]], f.INVALID),
         ([["put", b"k", b"v", b"\x01", _SEQ, None]], f.INVALID),
         ([["put", b"k", b"v", None, sequencer.MAX, None]], f.INVALID),
         ([["put", b"k", b"v", None, _SEQ, 0]], f.INVALID),
         ([["put", b"k", b"v" * (VALUE_BYTES_MAX + 1), None, _SEQ, None]], f.TOO_LARGE),
         ([["put", b"k", b"v" * VALUE_BYTES_MAX, None, _SEQ, None]]
          * (BATCH_BYTES_MAX // VALUE_BYTES_MAX + 1), f.TOO_LARGE),
         ([["delete", b"k", None, None, _SEQ, None]] * (BATCH_ITEMS_MAX + 1), f.INVALID)))


def _keys() -> f.Field:
    key = f.key().check

    def check(name: str, raw: Any) -> list[bytes]:
        if not isinstance(raw, list) or len(raw) > BATCH_ITEMS_MAX:
            raise errors.InvalidArgument(f"{name}: must be a list of at most "
                                         f"{BATCH_ITEMS_MAX} keys", field=name,
                                         limit=BATCH_ITEMS_MAX)
        return [key(name, k) for k in raw]

    return f.any_of(f"list of ≤ {BATCH_ITEMS_MAX} keys", check,
                    (({}, f.INVALID), ([b""], f.INVALID), (["text"], f.INVALID),
                     ([b"k"] * (BATCH_ITEMS_MAX + 1), f.INVALID)))


def _sessions() -> f.Field:
    """``import_sessions``' items, each checked as the state machine checks it."""
    def check(name: str, raw: Any) -> list[Any]:
        if not isinstance(raw, list) or len(raw) > IMPORT_SESSIONS_MAX:
            raise errors.InvalidArgument(f"{name}: must be a list of at most "
                                         f"{IMPORT_SESSIONS_MAX} sessions", field=name,
                                         limit=IMPORT_SESSIONS_MAX)
        nbytes = 0
        for item in raw:
            try:
                _, _, results = sessions.parse_export_item(item)
            except sessions.Malformed as exc:
                raise errors.InvalidArgument(f"{name}: {exc}", field=name) from None
            nbytes += sum(len(result) + 24 for _, result in results)
            if nbytes > BATCH_BYTES_MAX:
                raise errors.InvalidArgument(f"{name}: over {BATCH_BYTES_MAX} bytes of results",
                                             field=name, limit=BATCH_BYTES_MAX)
        return raw

    return f.any_of(
        f"list of ≤ {IMPORT_SESSIONS_MAX} [client, mark, top, last_seq, [[cseq, result]]]",
        check, (({}, f.INVALID), ([[b"c" * 16, 0, 0, _SEQ]], f.INVALID),
                ([[b"c" * 15, 0, 0, _SEQ, []]], f.INVALID),
                ([[b"c" * 16, 0, 1, _SEQ, [[1, b"\x01"]]]], f.INVALID),
                ([[b"c" * 16, -1, 0, _SEQ, []]], f.INVALID)))

OPS = f.registry(
    f.Op("put", {"table_id": TABLE, "key": f.key(), "value": f.value(), "seq": f.seq(),
                 "if_seq": f.optional(f.condition()), "base": f.optional(f.version()),
                 **ROUTED, **SESSION}, RM,
         "`clock_offset` (503) if `seq` is more than the maximum clock offset ahead of the "
         "leader's clock; `invalid_argument` for `cseq` without `client` or the reverse, or "
         "a `floor` above `cseq`; `session_expired` for a `retry` whose first result is gone"),
    f.Op("delete", {"table_id": TABLE, "key": f.key(), "seq": f.seq(),
                    "if_seq": f.optional(f.condition()), "base": f.optional(f.version()),
                    **ROUTED, **SESSION}, RM, "`clock_offset`, sessions as `put`"),
    f.Op("batch_write", {"table_id": TABLE, "items": _batch_items(), **CLIENT, **ROUTED}, RM,
         "every item's `cseq` given with `client`, none without; `floor` at most the lowest "
         "`cseq` (else `invalid_argument`); each item's own error in `results`"),
    f.Op("batch_get", {"table_id": TABLE, "keys": _keys(), **ROUTED, **AS_SOURCE}, RM,
         "each key's own error in `results`"),
    f.Op("get", {"table_id": TABLE, "key": f.key(), "versions": f.optional(f.boolean()),
                 **ROUTED, **AS_SOURCE}, RM,
         "a read of a range fenced here (moving away) without `as_source`: "
         "`range_not_here` (`moving`)"),
    f.Op("list", {**PAGE, "packed": f.optional(f.boolean())}, RM,
         f"a `limit` above {LIST_LIMIT_MAX} is taken as {LIST_LIMIT_MAX}; a span fenced here "
         "(moving away) without `as_source`: `range_not_here` (`moving`); with `packed` (and "
         "without `versions`) the items come as one blob (`packed`, `n`, `last`, `top`, "
         "`nbytes`) that the rm passes on undecoded"),
    f.Op("export", {**SPAN, "after": f.optional(f.bound()),
                    "limit": f.optional(f.uint(2**31 - 1, 1))}, META),
    f.Op("import", {"table_id": TABLE, "items": f.items(IMPORT_ITEMS_MAX, BATCH_BYTES_MAX)},
         META,
         "every item's seq at or below the seq the range was handed over at, else "
         "`invalid_argument`"),
    f.Op("export_sessions", {"after": f.optional(f.blob(sessions.CLIENT_BYTES,
                                                        sessions.CLIENT_BYTES,
                                                        kind="client id")),
                             "limit": f.optional(f.uint(2**31 - 1, 1))}, META),
    f.Op("import_sessions", {**SPAN, "items": _sessions(), "done": f.optional(f.boolean())},
         META),
    f.Op("add_range", {**SPAN, "importing": f.optional(f.boolean()),
                       "seq": f.optional(f.seq())}, META, "`seq` required when importing"),
    f.Op("fence_range", SPAN, META),
    f.Op("unfence_range", SPAN, META),
    f.Op("finish_import", SPAN, META),
    f.Op("drop_range", SPAN, META),
    f.Op("split_range", {"table_id": TABLE, "at": f.key()}, META),
    f.Op("merge_range", {"table_id": TABLE, "at": f.key()}, META),
    f.Op("drop_table", {"table_id": TABLE}, META),
    f.Op("split_key", {"table_id": TABLE, "start": f.optional(f.bound()),
                       "by": f.choice("size", "load"), "fraction": f.fraction()}, META),
    f.Op("status", {"ranges": f.optional(f.boolean())}, f"{META}, {TOOLS}"),
    f.Op("content_hash", {}, TOOLS),
    f.Op("flush", {}, TOOLS),
    f.Op("snapshot_begin", {**SNAPSHOT, "manifest": f.any_of(
        "map: format, index, epoch, files [[name, size, crc32c]], digest", _manifest,
        (("m", SnapshotInvalid.code), ({"format": 1}, SnapshotInvalid.code)))}, LEADER,
         "an offer from a node that is not a peer of this group: `invalid_argument`"),
    f.Op("snapshot_chunk", {**SNAPSHOT, "file": f.uint(FILES_MAX),
                            "offset": f.uint(), "data": f.blob(CHUNK_BYTES_MAX, 1),
                            "crc": f.uint(f.U32_MAX)}, LEADER,
         "a chunk of no snapshot being received, or that does not continue its file: "
         "`snapshot_invalid` (the transfer is aborted)"),
    f.Op("snapshot_end", SNAPSHOT, LEADER),
    f.Op("snapshot_abort", SNAPSHOT, LEADER),
    f.Op("backup_begin", {}, TOOLS),
    f.Op("backup_chunk", {"handle": f.uint(), "file": f.uint(FILES_MAX),
                          "offset": f.uint()}, TOOLS,
         "no such handle, file or offset: `invalid_argument`"),
    f.Op("backup_end", {"handle": f.uint()}, TOOLS),
)
