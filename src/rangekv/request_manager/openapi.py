"""The OpenAPI 3.1 description of the rm's HTTP API, served at ``GET /v1/openapi.json``.

Invariant: this document and ``app.py`` describe the same API; ``tests/unit/test_rm_app.py``
checks that every route the app serves is here and that every error code named here exists in
``rangekv.errors`` (plus ``method_not_allowed``, which only HTTP has).
"""

from __future__ import annotations

from typing import Any

from rangekv import limits
from rangekv.request_manager.live import RANGES_PER_TABLE_MAX

SEQ_PATTERN = "^[0-9a-f]{32}$"
NONZERO_SEQ_PATTERN = "^(?!0{32}$)[0-9a-fA-F]{32}$"
SESSION_PATTERN = "^[0-9a-f]{32}:[1-9][0-9]{0,17}:[0-9]{1,18}$"
# What If-Match accepts: one seq (either case), in double quotes or bare; the zero seq is no
# version of anything and is refused (If-None-Match: * asks for "absent").
IF_MATCH_PATTERN = '^(?!"?0{32}"?$)("[0-9a-fA-F]{32}"|[0-9a-fA-F]{32})$'
CURSOR_PATTERN = "^[A-Za-z0-9_-]*={0,2}$"  # base64url, padding optional


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, codes: list[str]) -> dict[str, Any]:
    return {
        "description": f"{description} (error codes: {', '.join(codes)})",
        "content": {"application/json": {"schema": _ref("Error")}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_E400 = _error("Bad input; nothing was changed", ["invalid_argument"])
GROUP_ID_MAX = 2**32 - 1
NODE_ID_MAX = 2**32 - 1
_E404_TABLE = _error("No such table", ["table_not_found"])
_E404_TABLE_GROUP = _error("No such table, or no such group", ["table_not_found",
                                                              "group_not_found"])
_E405 = _error("Method not allowed on this path; see the Allow header", ["method_not_allowed"])
_E408 = _error(
    "The request's head or body did not arrive whole in time (from the rm, or from HAProxy for "
    "a head); the connection is closed and nothing was done",
    ["request_timeout"],
)
_E503 = {
    **_error(
        "Unavailable: no leader, node or metadata manager reachable in time; this rm has as "
        "many requests in flight or connections open as it takes; or (from HAProxy) no rm is "
        "up. Nothing was done: safe to retry",
        ["unavailable"],
    ),
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": (
        "Seconds: 1, or 0 with retry_elsewhere (this rm cannot follow the routing map; "
        "another rm can answer now).")}},
}
_E504 = _error(
    "The write was sent but its outcome is unknown: it may or may not have taken effect. "
    "Read the key (or the table list) before retrying a conditional write",
    ["outcome_unknown"],
)
_E500 = _error("A bug in rangekv; please report it", ["internal"])
_E502 = _error(
    "A node or the metadata manager sent an answer rangekv cannot decode", ["protocol_error"]
)


def _common(*extra: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "400": _E400,
        "405": _E405,
        "408": _E408,
        "500": _E500,
        "502": _E502,
        "503": _E503,
    }
    out.update(dict(extra))
    return out


def document() -> dict[str, Any]:
    key_bytes_max = limits.KEY_BYTES_MAX
    value_bytes_max = limits.VALUE_BYTES_MAX
    table_param = {
        "name": "table",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"},
    }
    key_param = {
        "name": "key",
        "in": "path",
        "required": True,
        "description": (
            f"The key, {limits.KEY_BYTES_MIN}..{key_bytes_max} bytes, percent-encoded (UTF-8 "
            "text or any bytes; encode '/' as %2F and '%' as %25). With key_encoding=base64 "
            "the segment is base64url of the key's bytes (padding optional)."
        ),
        "schema": {"type": "string", "minLength": 1},
    }
    key_encoding_param = {
        "name": "key_encoding",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["utf8", "base64"], "default": "utf8"},
        "description": "How the {key} path segment is encoded.",
    }
    if_match = {
        "name": "If-Match",
        "in": "header",
        "required": False,
        "description": (
            "Only if the key's current seq equals this one (32 hex digits, quotes optional, "
            "as in the ETag of a get). '*' and the zero seq are not supported."
        ),
        "schema": {"type": "string", "pattern": IF_MATCH_PATTERN},
    }
    if_none_match = {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "description": "'*': only if the key does not exist (create). Not with If-Match.",
        "schema": {"type": "string", "enum": ["*"]},
    }
    session_params = [
        {"name": "X-Rangekv-Session", "in": "header", "required": False,
         "description": ("Exactly-once writes: CLIENT:CSEQ:FLOOR, the client's session id (32 "
                         "hex digits, 16 random bytes), this write's number in the session (a "
                         "batch's items take this and the next ones) and the lowest number the "
                         "client still awaits an answer to (results below it may be "
                         "forgotten). The group keeps the write's result by (client, cseq): a "
                         "resend marked X-Rangekv-Retry: 1 returns the first attempt's result "
                         "instead of applying it again."),
         "schema": {"type": "string", "pattern": SESSION_PATTERN}},
        {"name": "X-Rangekv-Retry", "in": "header", "required": False,
         "description": "1: an earlier attempt of this write may have been applied (its "
                        "outcome was unknown). If the group no longer holds its result: 504 "
                        "session_expired, nothing done.",
         "schema": {"type": "string", "enum": ["1"]}},
    ]
    e412 = {
        "description": (
            "Precondition failed: the key's current seq is not the one given (error code "
            "precondition_failed; current_seq is the current seq, or null if the key is absent)"
        ),
        "content": {"application/json": {"schema": _ref("PreconditionError")}},
    }
    e404_key = _error("No such table or key", ["table_not_found", "key_not_found"])
    seq_headers = {
        "ETag": {
            "schema": {"type": "string"},
            "description": "The seq in double quotes (RFC 9110 entity tag).",
        },
        "X-Rangekv-Seq": {"schema": {"type": "string", "pattern": SEQ_PATTERN}},
    }
    list_params = [
        table_param,
        {
            "name": "start",
            "in": "query",
            "required": False,
            "description": "First key (inclusive); empty or absent = the table's first key.",
            "schema": {"type": "string"},
        },
        {
            "name": "end",
            "in": "query",
            "required": False,
            "description": (
                "End key (exclusive); absent = no end. Not needed with after (the cursor "
                "carries it); if given with after it must be the same."
            ),
            "schema": {"type": "string"},
        },
        {
            "name": "after",
            "in": "query",
            "required": False,
            "description": (
                "The opaque cursor of a previous page (its next field): resume strictly after "
                "that page's last key, with that page's end bound."
            ),
            "schema": {
                "type": "string",
                "maxLength": limits.CURSOR_BYTES_MAX,
                "pattern": CURSOR_PATTERN,
            },
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": (
                f"Most items per page; larger values are reduced to {limits.LIST_LIMIT_MAX}. "
                f"A page may hold fewer (it stops after about {limits.LIST_BYTES_MAX} bytes); "
                "only a null next means the listing is complete."
            ),
            # No maximum: larger values are accepted and reduced (see the description).
            "schema": {"type": "integer", "minimum": 1, "default": limits.LIST_LIMIT_DEFAULT},
        },
        {
            "name": "encoding",
            "in": "query",
            "required": False,
            "description": (
                "utf8 (default): start, end, keys and values are text; an item whose key or "
                "value is not valid UTF-8 carries key_base64 / value_base64 (standard base64) "
                "instead. base64: start, end, keys and values are all standard base64."
            ),
            "schema": {"type": "string", "enum": ["utf8", "base64"], "default": "utf8"},
        },
    ]
    table_schema = {
        "type": "object",
        "required": ["name", "id"],
        "properties": {"name": {"type": "string"}, "id": {"type": "integer"}},
    }
    error_schema = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "retryable"],
                "properties": {
                    "code": {
                        "type": "string",
                        "description": "Stable; the same in the Python client's exceptions.",
                    },
                    "message": {"type": "string"},
                    "retryable": {"type": "boolean"},
                    "limit": {"type": "integer", "description": "The limit that was exceeded."},
                    "field": {"type": "string", "description": "The input that was wrong."},
                },
                "additionalProperties": True,
            }
        },
    }
    precondition_schema = {
        "allOf": [
            _ref("Error"),
            {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "code": {"const": "precondition_failed"},
                            "current_seq": {
                                "type": ["string", "null"],
                                "pattern": SEQ_PATTERN,
                            },
                        },
                    }
                },
            },
        ]
    }
    item_schema = {
        "type": "object",
        "required": ["seq"],
        "description": "Exactly one of key/key_base64 and one of value/value_base64.",
        "properties": {
            "key": {"type": "string"},
            "key_base64": {"type": "string", "contentEncoding": "base64"},
            "value": {"type": "string"},
            "value_base64": {"type": "string", "contentEncoding": "base64"},
            "seq": {"type": "string", "pattern": SEQ_PATTERN},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rangekv",
            "version": "1",
            "description": (
                "A durable, strongly consistent, range-partitioned key-value database. Every "
                "read sees the latest acknowledged write. Every stored version carries a "
                "16-byte sequencer (seq, 32 hex digits) usable for conditional writes. "
                "Errors are JSON {error: {code, message, retryable, ...}}; 503 answers carry "
                "Retry-After. An unknown path is 404 not_found; a known path with a wrong "
                "method is 405 method_not_allowed with an Allow header. Query parameters and "
                "headers not described here are ignored."
            ),
        },
        "paths": {
            "/v1/tables": {
                "get": {
                    "operationId": "listTables",
                    "summary": "The active tables, sorted by name",
                    "responses": _common(
                        (
                            "200",
                            _json(
                                "Tables",
                                {
                                    "type": "object",
                                    "required": ["tables"],
                                    "properties": {
                                        "tables": {"type": "array", "items": _ref("Table")}
                                    },
                                },
                            ),
                        ),
                    ),
                }
            },
            "/v1/tables/{table}": {
                "parameters": [table_param],
                "put": {
                    "operationId": "createTable",
                    "summary": "Create a table",
                    "responses": _common(
                        (
                            "201",
                            _json(
                                "Created",
                                {
                                    "type": "object",
                                    "required": ["table"],
                                    "properties": {"table": _ref("Table")},
                                },
                            ),
                        ),
                        ("409", _error("The table exists", ["table_exists"])),
                        ("504", _E504),
                    ),
                },
                "delete": {
                    "operationId": "dropTable",
                    "summary": "Drop a table and all of its keys",
                    "responses": _common(
                        (
                            "200",
                            _json(
                                "Dropped",
                                {
                                    "type": "object",
                                    "required": ["dropped"],
                                    "properties": {"dropped": {"type": "string"}},
                                },
                            ),
                        ),
                        ("404", _E404_TABLE),
                        ("504", _E504),
                    ),
                },
            },
            "/v1/tables/{table}/keys": {
                "get": {
                    "operationId": "listKeys",
                    "summary": "A page of keys in key order, with a cursor to the next page",
                    "parameters": list_params,
                    "responses": _common(
                        ("200", _json("A page", _ref("ListPage"))),
                        ("404", _E404_TABLE),
                    ),
                }
            },
            "/v1/tables/{table}/batch": {
                "parameters": [table_param],
                "post": {
                    "operationId": "batch",
                    "summary": ("Puts, gets and deletes of many keys in one request, one result "
                                "each in order; not a transaction"),
                    "parameters": session_params,
                    "requestBody": {
                        "required": True,
                        "description": (
                            f"At most {limits.BATCH_ITEMS_MAX} ops and "
                            f"{limits.BATCH_BYTES_MAX} bytes of keys and values. Keys and "
                            "values are UTF-8 text, or base64 with encoding=base64. Each op "
                            "succeeds or fails alone (its result is then an error object); "
                            "gets are linearizable."),
                        "content": {"application/json": {"schema": _ref("Batch")}},
                    },
                    "responses": _common(
                        ("200", _json("One result per op, in order", _ref("BatchResults"))),
                        ("404", _E404_TABLE),
                        ("413", _error("Too many ops or bytes", ["too_large"])),
                    ),
                },
            },
            "/v1/tables/{table}/ranges": {
                "parameters": [table_param],
                "get": {
                    "operationId": "listRanges",
                    "summary": "The table's ranges in key order, each with the group serving it",
                    "responses": _common(
                        ("200", _json("Ranges", _ref("Ranges"))),
                        ("404", _E404_TABLE),
                    ),
                },
            },
            "/v1/tables/{table}/split/{key}": {
                "parameters": [table_param, key_param, key_encoding_param, {
                    "name": "to", "in": "query", "required": False,
                    "schema": {"anyOf": [
                        {"type": "string", "enum": ["auto"]},
                        {"type": "integer", "minimum": 1, "maximum": GROUP_ID_MAX}]},
                    "description": ("Move the upper part to this group once split (a group "
                                    "id, or auto: the group with a leader serving the fewest "
                                    "ranges); without it both halves stay."),
                }],
                "post": {
                    "operationId": "splitRange",
                    "summary": (
                        "Cut the range holding {key} in two at {key}, both halves on the same "
                        "group (idempotent: a range already starting there is left as it is)"
                    ),
                    "responses": _common(
                        ("200", _json("The table's ranges afterwards", _ref("Ranges"))),
                        ("404", _E404_TABLE_GROUP),
                        ("504", _E504),
                    ),
                },
            },
            "/v1/tables/{table}/move/{key}": {
                "parameters": [table_param, key_param, key_encoding_param, {
                    "name": "to", "in": "query", "required": True,
                    "schema": {"type": "integer", "minimum": 1, "maximum": GROUP_ID_MAX},
                    "description": "The id of the group to move the range to.",
                }],
                "post": {
                    "operationId": "moveRange",
                    "summary": (
                        "Move the range holding {key} to group {to}, live: writes to it pause "
                        "for the handover only, reads never; answers when the move is done or "
                        "after about 8 s with done=false while the copy goes on"
                    ),
                    "responses": _common(
                        ("200", _json("The table's ranges afterwards", {
                            "allOf": [_ref("Ranges"), {
                                "type": "object", "required": ["done"],
                                "properties": {"done": {"type": "boolean"}}}]})),
                        ("400", _E400),
                        ("404", _E404_TABLE_GROUP),
                        ("504", _E504),
                    ),
                },
            },
            "/v1/tables/{table}/keys/{key}": {
                "parameters": [table_param, key_param, key_encoding_param],
                "get": {
                    "operationId": "getKey",
                    "summary": "The value of a key (raw bytes) and its seq",
                    "responses": _common(
                        (
                            "200",
                            {
                                "description": "The value",
                                "headers": seq_headers,
                                "content": {
                                    "application/octet-stream": {
                                        "schema": {
                                            "type": "string",
                                            "contentMediaType": "application/octet-stream",
                                        }
                                    }
                                },
                            },
                        ),
                        ("404", e404_key),
                    ),
                },
                "put": {
                    "operationId": "putKey",
                    "summary": "Set a key; the body is the raw value (any content type)",
                    "parameters": [if_match, if_none_match, *session_params],
                    "requestBody": {
                        "required": False,
                        "description": (
                            f"The value: any 0..{value_bytes_max} bytes, stored as sent; the "
                            "Content-Type is not looked at (a larger body is 413)."
                        ),
                        # No schema: every byte string is a value. (A string schema with
                        # maxLength would count characters, and imply a JSON string.)
                        "content": {"*/*": {}},
                    },
                    "responses": _common(
                        (
                            "200",
                            {
                                **_json(
                                    "Stored; seq is the version's sequencer", _ref("SeqResult")
                                ),
                                "headers": {"ETag": seq_headers["ETag"]},
                            },
                        ),
                        ("404", _E404_TABLE),
                        ("412", e412),
                        (
                            "413",
                            _error(f"The value is over {value_bytes_max} bytes", ["too_large"]),
                        ),
                        ("504", _E504),
                    ),
                },
                "delete": {
                    "operationId": "deleteKey",
                    "summary": "Delete a key (writes a tombstone with a seq)",
                    "parameters": [if_match, *session_params],
                    "responses": _common(
                        (
                            "200",
                            _json(
                                "Deleted, or there was nothing to delete",
                                {
                                    "type": "object",
                                    "required": ["deleted", "seq"],
                                    "properties": {
                                        "deleted": {"type": "boolean"},
                                        "seq": {"type": ["string", "null"], "pattern": SEQ_PATTERN},
                                    },
                                },
                            ),
                        ),
                        ("404", _E404_TABLE),
                        ("412", e412),
                        ("504", _E504),
                    ),
                },
            },
            "/v1/cluster": {
                "get": {
                    "operationId": "cluster",
                    "summary": "The topology this rm routes by: groups, ranges, nodes, tables",
                    "responses": _common(("200", _json("Topology", {"type": "object"}))),
                }
            },
            "/v1/cluster/status": {
                "get": {
                    "operationId": "clusterStatus",
                    "summary": (
                        "Live status: the topology joined with what each node reports now "
                        "(roles, log indexes, lag, each range's size and load); probed at most "
                        "about once a second, each node within a second"
                    ),
                    "parameters": [{
                        "name": "table",
                        "in": "query",
                        "required": False,
                        "description": "Only this table's ranges (all of them, up to "
                                       f"{RANGES_PER_TABLE_MAX}).",
                        "schema": table_param["schema"],
                    }],
                    "responses": _common(
                        ("200", _json("Live status", _ref("ClusterStatus"))),
                        ("404", _E404_TABLE),
                    ),
                }
            },
            "/v1/cluster/nodes/{id}": {
                "parameters": [{
                    "name": "id", "in": "path", "required": True,
                    "schema": {"type": "integer", "minimum": 1, "maximum": NODE_ID_MAX},
                    "description": "The node's id (as `GET /v1/cluster` lists it).",
                }],
                "delete": {
                    "operationId": "removeNode",
                    "summary": (
                        "Remove the record of a dead or flagged node that takes part in no "
                        "group (an operator's act, recorded as a node_removed decision)"
                    ),
                    "description": (
                        "Refused (409 node_in_use) while the node is a member, a learner or "
                        "a voter of a group's old configuration, and while it still "
                        "heartbeats unless it is flagged. A node that heartbeats after its "
                        "record is gone registers again, as a new node does: removing a "
                        "running flagged node returns it to the spare pool."
                    ),
                    "responses": _common(
                        ("200", _json("The record removed", {
                            "type": "object", "required": ["node", "live"],
                            "properties": {
                                "node": {"type": "object", "required": ["id", "address",
                                                                        "state"],
                                         "properties": {
                                             "id": {"type": "integer"},
                                             "address": {"type": "string"},
                                             "state": {"type": "string"},
                                             "group": {"type": ["integer", "null"]},
                                             "reason": {"type": "string"},
                                             "flag": {"type": "string"}}},
                                "live": {"type": "boolean", "description": (
                                    "It still heartbeats (a flagged node): it registers "
                                    "again at once")},
                            }})),
                        ("404", _error("No such node", ["node_not_found"])),
                        ("409", _error("The node takes part in a group, or is live and not "
                                       "flagged; nothing was removed", ["node_in_use"])),
                        ("504", _E504),
                    ),
                },
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": _common(("200", _json("OpenAPI 3.1", {"type": "object"}))),
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "200 once the routing map is loaded and followed; else 503",
                    "responses": {
                        "200": _json("Ready", _ref("Health")),
                        "405": _E405,
                        "503": _json("Not ready", _ref("Health")),
                    },
                }
            },
            "/livez": {
                "get": {
                    "operationId": "live",
                    "summary": "200 while this rm holds a routing map it can serve from; else 503",
                    "description": (
                        "Unlike /healthz, still 200 when etcd is out of reach: the rm then "
                        "serves from the map it holds (the groups do not need etcd, and a node "
                        "refuses a stale route). The load balancer sends to such rms only when "
                        "no rm is ready."
                    ),
                    "responses": {
                        "200": _json("Holds a routing map", _ref("Health")),
                        "405": _E405,
                        "503": _json("No routing map loaded yet", _ref("Health")),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus text exposition",
                    "description": (
                        "The metrics of the rm that answers (through the load balancer: one of "
                        "them), in the Prometheus text format 0.0.4: requests by operation and "
                        "status, latency histograms by operation, routing retries by reason, "
                        "routing refreshes, view reloads and watch events, etcd probe failures, "
                        "readiness and view revision, process metrics and rangekv_build_info. "
                        "Nodes and metas serve theirs on their own --metrics-listen address."
                    ),
                    "responses": {
                        "200": {
                            "description": "Metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "405": _E405,
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Table": table_schema,
                "Ranges": {
                    "type": "object",
                    "required": ["table", "ranges"],
                    "properties": {
                        "table": {"type": "string"},
                        "ranges": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["start", "end", "start_hex", "end_hex", "group",
                                             "version"],
                                "properties": {
                                    "start": {"type": "string"},
                                    "end": {"type": ["string", "null"],
                                            "description": "null: no upper bound"},
                                    "start_hex": {"type": "string"},
                                    "end_hex": {"type": ["string", "null"]},
                                    "group": {"type": "integer"},
                                    "version": {"type": "integer"},
                                    "state": {"type": "string", "enum": ["active", "moving"]},
                                    "moving": {
                                        "type": "object",
                                        "description": "present while a move is unfinished",
                                        "properties": {
                                            "from": {"type": "integer"},
                                            "to": {"type": "integer"},
                                            "phase": {"type": "string", "enum": [
                                                "fencing", "copying", "cleanup"]},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
                "Error": error_schema,
                "PreconditionError": precondition_schema,
                "SeqResult": {
                    "type": "object",
                    "required": ["seq"],
                    "properties": {"seq": {"type": "string", "pattern": SEQ_PATTERN}},
                },
                "Item": item_schema,
                "Batch": {
                    "type": "object",
                    "required": ["ops"],
                    "properties": {
                        "encoding": {"type": "string", "enum": ["utf8", "base64"],
                                     "default": "utf8"},
                        "ops": {"type": "array", "maxItems": limits.BATCH_ITEMS_MAX, "items": {
                            "type": "object",
                            "required": ["op", "key"],
                            "properties": {
                                "op": {"type": "string", "enum": ["put", "get", "delete"]},
                                "key": {"type": "string", "minLength": 1},
                                "value": {"type": "string",
                                          "description": "puts only (absent: empty)"},
                                "if_seq": {"type": "string", "pattern": NONZERO_SEQ_PATTERN,
                                           "description": "puts and deletes: only if the "
                                                          "key's seq is this one"},
                                "if_absent": {"type": "boolean",
                                              "description": "puts: only if absent"},
                            },
                        }},
                    },
                },
                "BatchResults": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {"results": {"type": "array", "items": {
                        "type": "object",
                        "description": ("put: {seq}; get: {found, value, seq}; delete: "
                                        "{deleted, seq}; a failed op: {error: {code, "
                                        "message, retryable, ...}}"),
                        "properties": {
                            "seq": {"type": ["string", "null"], "pattern": SEQ_PATTERN},
                            "found": {"type": "boolean"},
                            "value": {"type": "string"},
                            "deleted": {"type": "boolean"},
                            "error": {"type": "object"},
                        },
                    }}},
                },
                "ListPage": {
                    "type": "object",
                    "required": ["items", "next"],
                    "properties": {
                        "items": {"type": "array", "items": _ref("Item")},
                        "next": {
                            "type": ["string", "null"],
                            "description": "Cursor for after=; null when complete.",
                        },
                    },
                },
                "ClusterStatus": {
                    "type": "object",
                    "required": ["revision", "generated_at", "probed", "summary", "groups",
                                 "tables", "nodes", "decisions"],
                    "properties": {
                        "revision": {"type": "integer"},
                        "generated_at": {"type": "string"},
                        "probed": {"type": "boolean"},
                        "probe_ms": {"type": ["number", "null"]},
                        "summary": {"type": "object"},
                        "meta": {"type": ["object", "null"]},
                        "groups": {"type": "array", "items": {
                            "type": "object",
                            "required": ["id", "epoch", "leader", "members", "health"],
                            "properties": {
                                "id": {"type": "integer"},
                                "leader": {"type": ["integer", "null"]},
                                "health": {"type": "string", "enum": [
                                    "ok", "degraded", "no_leader", "unknown"]},
                                "members": {"type": "array", "items": {"type": "object"}},
                            },
                        }},
                        "tables": {"type": "array", "items": {
                            "type": "object",
                            "required": ["name", "ranges", "ranges_total"],
                            "properties": {
                                "name": {"type": "string"},
                                "ranges_total": {"type": "integer"},
                                "ranges": {"type": "array", "items": {"type": "object"}},
                            },
                        }},
                        "nodes": {"type": "array", "items": {"type": "object"}},
                        "decisions": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["ok", "rm"],
                    "properties": {
                        "ok": {"type": "boolean"},
                        "rm": {"type": "integer"},
                        "revision": {"type": "integer"},
                        "ready": {"type": "boolean",
                                  "description": "/livez: whether the map is also followed"},
                    },
                },
            }
        },
    }
