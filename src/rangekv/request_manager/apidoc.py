"""docs/api.md, rendered from the OpenAPI document (``openapi.document()``) and the error tree.

    python -m rangekv.request_manager.apidoc --out docs/api.md     # regenerate
    python -m rangekv.request_manager.apidoc --check docs/api.md   # exit 1 if it differs

Invariants:

* Everything the page says about paths, methods, parameters, bodies and responses comes from
  the OpenAPI document the rms serve, and the error table from ``rangekv.errors``; only the
  curl examples (``EXAMPLES``) are written here, and every operation must have at least one
  (``render`` raises otherwise), so a new route cannot be left out of the page.
* The output is a pure function of those inputs (no time, no environment), so
  ``tests/unit/test_api_docs.py`` can compare the committed page with a fresh rendering.
* ``EXAMPLES`` is an ordered tour: run top to bottom against an empty cluster, each curl
  answers the status it names (``tests/integration/test_docs_ops.py`` runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rangekv import errors, limits
from rangekv.request_manager import openapi

METHODS = ("get", "put", "post", "delete", "head", "patch")
ENDPOINT_EXAMPLE = "http://127.0.0.1:8400"
REGENERATE = "python -m rangekv.request_manager.apidoc --out docs/api.md"


@dataclass(frozen=True)
class Example:
    """One curl call of the tour: ``curl ARGS`` with ``$E`` the endpoint."""

    operation: str  # the operationId it shows
    comment: str
    args: str  # shell words after ``curl``; may use $E and $SEQ
    status: int  # what it answers when the tour is run in order on an empty cluster


# The tour, in the order it runs. $SEQ is set by the line that reads the ETag (see TOUR_SETUP).
EXAMPLES: tuple[Example, ...] = (
    Example("health", "is this rm (or HAProxy in front of one) ready?", "-i $E/healthz", 200),
    Example("live", "does it hold a routing map to serve from (even with etcd out of reach)?",
            "-i $E/livez", 200),
    Example("createTable", "create a table", "-i -X PUT $E/v1/tables/Stocks", 201),
    Example("createTable", "again: 409 table_exists", "-i -X PUT $E/v1/tables/Stocks", 409),
    Example("listTables", "list tables", "$E/v1/tables", 200),
    Example("putKey", "put: the body is the raw value", "-X PUT $E/v1/tables/Stocks/keys/B -d 100",
            200),
    Example("putKey", "put two more", "-X PUT $E/v1/tables/Stocks/keys/A -d 120", 200),
    Example("putKey", "", "-X PUT $E/v1/tables/Stocks/keys/C -d 135", 200),
    Example("getKey", "get: body is the value, the seq is in ETag and X-Rangekv-Seq",
            "-i $E/v1/tables/Stocks/keys/B", 200),
    Example("getKey", "a missing key: 404 key_not_found", "-i $E/v1/tables/Stocks/keys/Z", 404),
    Example("putKey", "only if unchanged since that get (If-Match: its ETag)",
            "-X PUT $E/v1/tables/Stocks/keys/B -d 101 -H \"If-Match: $SEQ\"", 200),
    Example("putKey", "the same seq again: it has changed, 412 precondition_failed",
            "-i -X PUT $E/v1/tables/Stocks/keys/B -d 102 -H \"If-Match: $SEQ\"", 412),
    Example("putKey", "only if absent (create): D is new, so 200",
            "-X PUT $E/v1/tables/Stocks/keys/D -d 140 -H 'If-None-Match: *'", 200),
    Example("putKey", "... and a second time 412",
            "-i -X PUT $E/v1/tables/Stocks/keys/D -d 160 -H 'If-None-Match: *'", 412),
    Example("putKey", "a value over 1 MiB: 413 too_large, nothing stored",
            "-i -X PUT $E/v1/tables/Stocks/keys/big --data-binary @/tmp/big.bin", 413),
    Example("batch", "many keys in one request: one result per op, in order (not a "
            "transaction)", "-X POST $E/v1/tables/Stocks/batch -H 'Content-Type: "
            "application/json' -d '{\"ops\": [{\"op\": \"put\", \"key\": \"E\", "
            "\"value\": \"150\"}, {\"op\": \"get\", \"key\": \"B\"}, {\"op\": "
            "\"delete\", \"key\": \"E\"}]}'", 200),
    Example("listKeys", "a sorted page of at most 2 items and a cursor",
            '"$E/v1/tables/Stocks/keys?limit=2"', 200),
    Example("listKeys", "keys A <= k < C", '"$E/v1/tables/Stocks/keys?start=A&end=C"', 200),
    Example("listKeys", "binary-safe: keys and values as base64",
            '"$E/v1/tables/Stocks/keys?encoding=base64"', 200),
    Example("listRanges", "the table's ranges and the group serving each",
            "$E/v1/tables/Stocks/ranges", 200),
    Example("splitRange", "cut the range holding C at C (both halves stay on their group)",
            "-X POST $E/v1/tables/Stocks/split/C", 200),
    Example("moveRange", "move the range holding C to group 1, live (at once if it is there)",
            "-X POST \"$E/v1/tables/Stocks/move/C?to=1\"", 200),
    Example("moveRange", "a group that does not exist: 404 group_not_found",
            "-i -X POST \"$E/v1/tables/Stocks/move/C?to=99\"", 404),
    Example("deleteKey", "delete: {\"deleted\": true, \"seq\": ...}",
            "-X DELETE $E/v1/tables/Stocks/keys/A", 200),
    Example("deleteKey", "delete a missing key: 200 {\"deleted\": false, \"seq\": null}",
            "-X DELETE $E/v1/tables/Stocks/keys/A", 200),
    Example("cluster", "the topology this rm routes by", "$E/v1/cluster", 200),
    Example("clusterStatus", "the live status (what the dashboard at /ui/ and `rangekv status` "
            "show): groups, lag, ranges with size and load", "$E/v1/cluster/status", 200),
    Example("clusterStatus", "one table's ranges only", "\"$E/v1/cluster/status?table=Stocks\"",
            200),
    Example("removeNode", "remove a dead or flagged node's record; one that does not exist: "
            "404 node_not_found", "-i -X DELETE $E/v1/cluster/nodes/999", 404),
    Example("openapi", "the OpenAPI 3.1 document this page is made from",
            "$E/v1/openapi.json", 200),
    Example("metrics", "Prometheus text", "$E/metrics", 200),
    Example("dropTable", "drop the table and all of its keys",
            "-X DELETE $E/v1/tables/Stocks", 200),
    Example("dropTable", "again: 404 table_not_found", "-i -X DELETE $E/v1/tables/Stocks", 404),
)

# Shell lines the tour needs before the example with the same index runs.
TOUR_SETUP: dict[int, str] = {
    9: "SEQ=$(curl -s -o /dev/null -w '%header{etag}' $E/v1/tables/Stocks/keys/B)"
       "   # the seq of B, as its ETag",
    13: "head -c 1048577 /dev/zero > /tmp/big.bin   # one byte over the limit",
}


def _example_line(ex: Example, status: bool = False) -> str:
    words = [ex.comment] if ex.comment else []
    if status:
        words.append(f"→ {ex.status}")
    return f"curl {ex.args}" + (f"   # {' '.join(words)}" if words else "")


def tour_lines() -> list[str]:
    """The tour as shell lines, setup lines included (what docs/api.md shows under "Tour")."""
    out = [f"E={ENDPOINT_EXAMPLE}"]
    for i, ex in enumerate(EXAMPLES):
        if i in TOUR_SETUP:
            out.append(TOUR_SETUP[i])
        out.append(_example_line(ex))
    return out


def tour_script() -> str:
    """The tour as a bash script that prints ``INDEX STATUS`` for each example instead of its
    output (for tests: run it with ``E`` set to an endpoint)."""
    out = ["set -u"]
    for i, ex in enumerate(EXAMPLES):
        if i in TOUR_SETUP:
            out.append(TOUR_SETUP[i])
        out.append(f"echo {i} $(curl -sS -o /dev/null -w '%{{http_code}}' {ex.args})")
    return "\n".join(out) + "\n"


# --- rendering ----------------------------------------------------------------------------


def _resolve(doc: dict[str, Any], obj: Any) -> Any:
    if isinstance(obj, dict) and "$ref" in obj:
        name = obj["$ref"].rsplit("/", 1)[-1]
        return doc["components"]["schemas"][name]
    return obj


def _schema_text(schema: dict[str, Any] | None) -> str:
    """A short, one-cell description of a schema: type, enum, pattern, bounds, default."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_schema_text(s) for s in schema["anyOf"])
    if "allOf" in schema:
        return " and ".join(_schema_text(s) for s in schema["allOf"])
    kind = schema.get("type", "any")
    parts = [" or ".join(kind) if isinstance(kind, list) else str(kind)]
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "const" in schema:
        parts.append(f"= `{schema['const']}`")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    for key, word in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"),
                      ("maxLength", "length ≤")):
        if key in schema:
            parts.append(f"{word} {schema[key]}")
    if "default" in schema:
        parts.append(f"default `{schema['default']}`")
    return ", ".join(parts).replace("|", "\\|")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _anchor(method: str, path: str) -> str:
    raw = f"{method} {path}".lower()
    return "".join(c for c in raw.replace(" ", "-") if c.isalnum() or c in "-_")


def _operations(doc: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any], list[Any]]]:
    for path, item in doc["paths"].items():
        shared = item.get("parameters", [])
        for method in METHODS:
            if method in item:
                yield path, method, item[method], shared


def _params_table(doc: dict[str, Any], params: list[Any]) -> list[str]:
    if not params:
        return []
    out = ["| name | in | required | schema | description |", "|---|---|---|---|---|"]
    for p in params:
        p = _resolve(doc, p)
        out.append(f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | "
                   f"{_schema_text(p.get('schema'))} | {_cell(p.get('description', ''))} |")
    return ["**Parameters**", "", *out, ""]


def _body(doc: dict[str, Any], op: dict[str, Any]) -> list[str]:
    body = op.get("requestBody")
    if not body:
        return []
    types = ", ".join(f"`{t}`" for t in body.get("content", {}))
    need = "required" if body.get("required") else "optional"
    return [f"**Request body** ({need}; {types}): {_cell(body.get('description', ''))}", ""]


def _responses_table(doc: dict[str, Any], op: dict[str, Any]) -> list[str]:
    out = ["| status | meaning | body | headers |", "|---|---|---|---|"]
    for status in sorted(op["responses"], key=str):
        resp = _resolve(doc, op["responses"][status])
        content = resp.get("content", {})
        body = "; ".join(f"`{t}` {_schema_text(c.get('schema'))}" if c.get("schema") else f"`{t}`"
                         for t, c in content.items()) or "-"
        headers = ", ".join(f"`{h}`" for h in resp.get("headers", {})) or "-"
        out.append(f"| {status} | {_cell(resp.get('description', ''))} | {body} | {headers} |")
    return ["**Responses**", "", *out, ""]


def error_rows() -> list[tuple[str, int, bool]]:
    """(code, HTTP status, retryable) for every error class, in tree order."""
    rows: list[tuple[str, int, bool]] = []
    seen: set[str] = set()

    def walk(cls: type[errors.RangeKVError]) -> None:
        if cls.code not in seen:
            seen.add(cls.code)
            rows.append((cls.code, cls.status, cls.retryable))
        for sub in cls.__subclasses__():
            if sub.__module__ == errors.__name__:
                walk(sub)

    walk(errors.RangeKVError)
    return rows


# What each status means for a caller, as the rm produces it (errors.py, routing.py).
ERROR_MEANINGS: dict[str, str] = {
    "internal": "a bug in rangekv; the message says where. Please report it",
    "invalid_argument": "bad input (key, table name, cursor, header, query); nothing changed",
    "too_large": "a value over 1 MiB (1,048,576 bytes; a key over 1024 bytes is "
                 "invalid_argument); nothing stored",
    "method_not_allowed": "the path exists, the method does not; see the Allow header",
    "not_found": "no such path",
    "table_not_found": "no such table",
    "key_not_found": "no such key (get)",
    "group_not_found": "a split or move named a group that does not exist",
    "node_not_found": "no node of that id is registered (remove)",
    "table_exists": "create of a table that exists",
    "node_in_use": "a node to remove is a member, learner or old-configuration voter of "
                   "`group`, or heartbeats and is not flagged (`live`); nothing was removed",
    "precondition_failed": "If-Match / If-None-Match did not hold; `current_seq` is the key's "
                           "seq now (null: absent). Nothing changed",
    "request_timeout": f"the request's head ({limits.HTTP_HEAD_TIMEOUT_S:g} s) or body "
                       f"({limits.HTTP_BODY_TIMEOUT_S:g} s from when the rm reads it) did not "
                       "arrive whole in time, however slowly it kept coming; the connection is "
                       "closed and nothing was done: send it again, whole",
    "unavailable": "no leader, node or meta reachable in time (Retry-After: 1), or this rm "
                   "cannot follow the routing map (`retry_elsewhere`, Retry-After: 0). The "
                   "request surely did not take effect: safe to retry, writes included",
    "not_leader": "internal: a node that is not its group's leader (the rm retries it; it "
                  "reaches a client only as 503)",
    "range_not_here": "internal: the group does not own that key now (a split or move); the "
                      "rm re-reads the map and retries until its 5 s deadline, then 503",
    "not_active": "internal: a standby meta answered; the caller goes to `active_hint`",
    "clock_offset": "this rm's clock is more than the maximum offset (500 ms) ahead of the "
                    "group leader's, which refused the seq it proposed; nothing was written. "
                    "The rm reports itself unhealthy for a while (`/healthz` 503): retry "
                    "(Retry-After: 0), the load balancer sends it to another rm",
    "outcome_unknown": "the write was sent but no answer came: it may or may not have taken "
                       "effect. Read before retrying a conditional write",
    "timeout": "client side (Python client): no answer in time; for a write, outcome unknown",
    "session_expired": "a write resent with X-Rangekv-Retry whose first attempt's result the "
                       "group no longer holds (its client session expired or was evicted): "
                       "nothing was done, and the first attempt's outcome stays unknown",
    "batch_failed": "client side (Python client): some items of a batch failed; `results` "
                    "holds each item's result or error (the others stay done)",
    "protocol_error": "a node or meta sent something the rm cannot decode",
}


def render(doc: dict[str, Any] | None = None) -> str:
    doc = openapi.document() if doc is None else doc
    ops = list(_operations(doc))
    op_ids = [op["operationId"] for _, _, op, _ in ops]
    missing = [i for i in op_ids if not any(ex.operation == i for ex in EXAMPLES)]
    if missing:
        raise ValueError(f"no curl example for operation(s) {', '.join(missing)}: add one to "
                         "EXAMPLES in rangekv/request_manager/apidoc.py")
    unknown = sorted({ex.operation for ex in EXAMPLES} - set(op_ids))
    if unknown:
        raise ValueError(f"EXAMPLES name operations the API does not have: {', '.join(unknown)}")
    info = doc["info"]
    lines = [
        "# rangekv HTTP API",
        "",
        (f"<!-- Generated by `{REGENERATE}` from the OpenAPI document "
        "(src/rangekv/request_manager/openapi.py) and src/rangekv/errors.py. Do not edit by "
        "hand: tests/unit/test_api_docs.py fails when this page and the generator disagree. -->"),
        "",
        (f"OpenAPI {doc['openapi']}, API version {info['version']}. Every request manager (rm) "
        "serves it, and so does HAProxy in front of them; the live document is "
        "`GET /v1/openapi.json`."),
        "",
        _cell(info["description"]),
        "",
        ("Examples use `E=http://127.0.0.1:8400` (HAProxy of `rangekv up`; for a cluster of "
        "several machines see [operations.md](operations.md))."),
        "",
        "## Operations",
        "",
        "| method | path | operation | summary |",
        "|---|---|---|---|",
    ]
    for path, method, op, _ in ops:
        anchor = _anchor(method, path)
        lines.append(f"| {method.upper()} | [`{path}`](#{anchor}) | `{op['operationId']}` | "
                     f"{_cell(op.get('summary', ''))} |")
    lines += ["", "## Tour", "",
              ("Run top to bottom against a cluster without a table `Stocks`; each line answers "
              "the status in its comment or, where none is named, 200/201 "
              "(`tests/integration/test_docs_ops.py` runs exactly these lines)."), "",
              "```sh", *tour_lines(), "```", ""]
    lines += ["## Errors", "",
              ("Every error is JSON, `{\"error\": {\"code\", \"message\", \"retryable\", "
              "...details}}`, with the status of its code. `code` is stable; the Python "
              "client raises the class of the same name (`rangekv.errors`). A 503 carries "
              "`Retry-After`. HAProxy's own answers (400, 408, 500, 502, 503, 504) have the "
              "same shape with `\"answered_by\": \"haproxy\"`; its 502 and 504 say "
              "`outcome_unknown` (the rm may have done a write before its answer was lost), "
              "its 503 and 504 carry `Retry-After`."), "",
              "| code | status | retryable | meaning |", "|---|---|---|---|"]
    for code, status, retryable in error_rows():
        meaning = ERROR_MEANINGS.get(code)
        if meaning is None:
            raise ValueError(f"error code {code!r} has no meaning in ERROR_MEANINGS "
                             "(rangekv/request_manager/apidoc.py)")
        lines.append(f"| `{code}` | {status} | {'yes' if retryable else 'no'} | "
                     f"{_cell(meaning)} |")
    lines.append("")
    lines += ["## Paths", ""]
    for path, method, op, shared in ops:
        lines += [f"### {method.upper()} {path}", "",
                  f"`{op['operationId']}`: {_cell(op.get('summary', ''))}", ""]
        lines += _params_table(doc, [*shared, *op.get("parameters", [])])
        lines += _body(doc, op)
        lines += _responses_table(doc, op)
        examples = [ex for ex in EXAMPLES if ex.operation == op["operationId"]]
        lines += ["**Example**", "", "```sh",
                  *(_example_line(ex, status=True) for ex in examples),
                  "```", ""]
    lines += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        lines += [f"### {name}", "", "```json",
                  json.dumps(schema, indent=2, ensure_ascii=False), "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rangekv.request_manager.apidoc",
        description="Render docs/api.md from the OpenAPI document.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", type=Path, help="write the page here (default: stdout)")
    group.add_argument("--check", type=Path, metavar="FILE",
                       help="exit 1 if FILE differs from what would be written")
    args = parser.parse_args(argv)
    text = render()
    if args.check is not None:
        try:
            current = args.check.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{args.check} is out of date; regenerate it with: {REGENERATE}",
                  file=sys.stderr)
            return 1
        return 0
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
