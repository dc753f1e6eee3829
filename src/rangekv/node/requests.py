"""Every request a node serves, with its fields declared and checked (``rangekv.fields``).

``OPS[op].parse(body)`` is the first thing the node does with a request; handlers read only
what it returns. The table in docs/internals.md ("Every internal request checked") is
``fields.describe(OPS.values())``.
"""

from __future__ import annotations

from typing import Any

from rangekv import fields as f
from rangekv.limits import LIST_LIMIT_MAX
from rangekv.storage.snapshot import CHUNK_BYTES_MAX, FILES_MAX, Manifest, SnapshotInvalid

IMPORT_ITEMS_MAX = 100_000  # records in one import (a page of a moving range's copy)

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

OPS = f.registry(
    f.Op("put", {"table_id": TABLE, "key": f.key(), "value": f.value(), "seq": f.seq(),
                 "if_seq": f.optional(f.condition()), "base": f.optional(f.version()),
                 **ROUTED}, RM,
         "`clock_offset` (503) if `seq` is more than the maximum clock offset ahead of the "
         "leader's clock"),
    f.Op("delete", {"table_id": TABLE, "key": f.key(), "seq": f.seq(),
                    "if_seq": f.optional(f.condition()), "base": f.optional(f.version()),
                    **ROUTED}, RM, "`clock_offset` as `put`"),
    f.Op("get", {"table_id": TABLE, "key": f.key(), "versions": f.optional(f.boolean()),
                 **ROUTED, **AS_SOURCE}, RM,
         "a read of a range fenced here (moving away) without `as_source`: "
         "`range_not_here` (`moving`)"),
    f.Op("list", PAGE, RM, f"a `limit` above {LIST_LIMIT_MAX} is taken as {LIST_LIMIT_MAX}; "
         "a span fenced here (moving away) without `as_source`: `range_not_here` (`moving`)"),
    f.Op("export", {**SPAN, "after": f.optional(f.bound()),
                    "limit": f.optional(f.uint(2**31 - 1, 1))}, META),
    f.Op("import", {"table_id": TABLE, "items": f.items(IMPORT_ITEMS_MAX)}, META,
         "every item's seq at or below the seq the range was handed over at, else "
         "`invalid_argument`"),
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
