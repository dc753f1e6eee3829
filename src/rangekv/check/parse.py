"""Reading recorded histories into operations.

Three line-oriented formats, detected from the first non-blank line (or forced):

* ``jepsen`` — Jepsen's log:
  ``INFO  jepsen.util - <process>\\t:invoke|:ok|:fail|:info\\t:f\\t<value>``, or with a
  timestamp and thread first
  (``2020-03-01 17:02:09,925{GMT}\\tINFO\\t[jepsen worker 1] jepsen.util: <process>\\t...``).
  The fields may be separated by any whitespace or commas (EDN's whitespace): tabs, spaces,
  several of them; lines may end in CRLF. Lines that do not look like that, and ``:nemesis``
  lines, are skipped.
* ``edn`` — one EDN map a line: ``{:process 0, :type :invoke, :f :get, :key "1", :value nil}``.
* ``jsonl`` — one JSON object a line: ``{"process", "type", "f", "key", "value", "expect",
  "result", "time"}`` (see :mod:`rangekv.check.main`).

In every format a byte order mark at the start and CRLF line ends are accepted.

Events are paired per process: an invocation with that process's next completion. ``:fail``
means the operation did not take effect, so it is dropped. ``:info``, and an invocation never
completed, mean the outcome is unknown: the operation's return is at +infinity.

Real time is the line order, unless every event has a ``time`` (jsonl): then events are
ordered by time, a call before a return at the same instant (they overlap).
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any


class BadHistory(ValueError):
    """The input is not a history this checker can read."""


@dataclass
class Operation:
    id: int  # index in the whole (paired, fail-free) history
    process: Any
    f: str
    key: Any
    value: Any  # the input (write value, cas [old new], append suffix...)
    expect: Any  # jsonl's "expect" (rangekv cas), else None
    output: Any  # the completion's value / result; None when unknown
    call: float  # real-time order of the invocation
    ret: float  # of the completion; math.inf when the outcome is unknown
    line: int  # line number of the invocation
    arg: Any = field(default=None, repr=False)  # the model's prepared form

    @property
    def known(self) -> bool:
        return self.ret != math.inf


@dataclass
class Event:
    process: Any
    type: str  # invoke | ok | fail | info
    f: str
    key: Any
    value: Any
    expect: Any
    result: Any
    time: float | None
    line: int


# ---------------------------------------------------------------------------------------------
# A small EDN reader: maps, vectors, lists, sets, strings, keywords, symbols, numbers, nil/bools.

class Keyword(str):
    """An EDN keyword, without its colon."""


# commas are whitespace in EDN (but not inside strings); strings are read by ``value``
_EDN_WS = re.compile(r"[\s,]*")
_EDN_TOKEN = re.compile(
    r"""[\s,]*(?:
        (?P<open>[\[{(]|\#\{) | (?P<close>[\]})]) |
        (?P<kw>:[^\s,\[\]{}()"]+) |
        (?P<num>[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?N?M?(?=[\s,\[\]{}()]|$)) |
        (?P<sym>[^\s,\[\]{}()"]+)
    )""",
    re.VERBOSE,
)
_CLOSERS = {"[": "]", "{": "}", "(": ")", "#{": "}"}


def parse_edn(text: str) -> Any:
    """Parse one EDN value (the subset histories use). Raises BadHistory."""
    pos = 0

    def value() -> Any:
        nonlocal pos
        pos = _EDN_WS.match(text, pos).end()  # type: ignore[union-attr]
        if text.startswith('"', pos):  # a string: find its end at C speed (values can be long)
            q = pos
            while True:
                q = text.find('"', q + 1)
                if q < 0:
                    raise BadHistory(f"unclosed string at column {pos + 1}")
                b = q - 1
                while text[b] == "\\":
                    b -= 1
                if (q - 1 - b) % 2 == 0:  # not escaped
                    break
            raw = text[pos:q + 1]
            pos = q + 1
            try:
                return json.loads(raw)
            except ValueError as e:
                raise BadHistory(f"bad string {raw[:40]!r}: {e}") from None
        m = _EDN_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise BadHistory(f"unreadable EDN at column {pos + 1}: {text[pos:pos + 20]!r}")
        pos = m.end()
        if m.group("open"):
            opener = m.group("open")
            items = []
            while True:
                pos = _EDN_WS.match(text, pos).end()  # type: ignore[union-attr]
                if pos >= len(text):
                    raise BadHistory(f"unclosed {opener!r}")
                if text[pos] in "]})":
                    if text[pos] != _CLOSERS[opener]:
                        raise BadHistory(f"mismatched {text[pos]!r} for {opener!r}")
                    pos += 1
                    break
                items.append(value())
            if opener == "{":
                if len(items) % 2:
                    raise BadHistory("map with an odd number of forms")
                return {_hashable(items[i]): items[i + 1] for i in range(0, len(items), 2)}
            if opener == "#{":
                return frozenset(_hashable(x) for x in items)
            return items
        if m.group("close"):
            raise BadHistory(f"unexpected {m.group('close')!r}")
        if m.group("kw"):
            return Keyword(m.group("kw")[1:])
        if m.group("num"):
            tok = m.group("num").rstrip("NM")
            return float(tok) if any(c in tok for c in ".eE") else int(tok)
        sym = m.group("sym")
        return {"nil": None, "true": True, "false": False}.get(sym, sym)

    result = value()
    pos = _EDN_WS.match(text, pos).end()  # type: ignore[union-attr]
    if pos < len(text):
        raise BadHistory(f"trailing text after EDN value: {text[pos:pos + 20]!r}")
    return result


def _hashable(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_hashable(i) for i in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in x.items()))
    return x


# ---------------------------------------------------------------------------------------------

# ``... jepsen.util - `` (log4j's "%p %c - %m") or ``... jepsen.util: `` (Jepsen's later logback
# layout, after a timestamp and a thread name), then the fields with any EDN whitespace between
# them (tabs as Jepsen writes them, spaces or commas as editors and mailers leave them)
_JEPSEN_LINE = re.compile(
    r"^(?:.*?\s)?jepsen\.util\s*(?:-\s|:\s)[\s,]*"
    r"([^\s,]+)[\s,]+:(\w[\w-]*)[\s,]+:(\w[\w-]*)(?:[\s,]+(.*))?$")
_TYPES = ("invoke", "ok", "fail", "info")
_BOM = "\ufeff"  # some editors on Windows start a saved file with it


def _proc(p: Any) -> Any:
    if isinstance(p, str) and p.lstrip("-").isdigit():
        return int(p)
    return p


def _lines(text: str) -> Any:
    """The lines of ``text``, one at a time (histories can be large)."""
    return io.StringIO(text)


def detect_format(text: str) -> str:
    for line in _lines(text.removeprefix(_BOM)):
        s = line.strip()
        if not s:
            continue
        if "jepsen.util" in s:
            return "jepsen"
        if s.startswith("{") and s[1:].lstrip().startswith('"'):
            return "jsonl"
        if s.startswith("{") and s[1:].lstrip().startswith(":"):
            return "edn"
        raise BadHistory(f"cannot tell the format of the history from its first line: {s[:60]!r}")
    raise BadHistory("empty history")


def read_events(text: str, fmt: str = "auto") -> list[Event]:
    text = text.removeprefix(_BOM)
    if fmt == "auto":
        fmt = detect_format(text)
    events: list[Event] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if fmt == "jepsen":
            m = _JEPSEN_LINE.match(line)
            if not m:
                continue  # other log output
            proc, typ, f, rest = m.groups()
            if proc.startswith(":"):
                continue  # :nemesis and friends
            if typ not in _TYPES:
                raise BadHistory(f"line {n}: unknown event type :{typ}")
            val = parse_edn(rest) if rest and rest.strip() else None
            events.append(Event(_proc(proc), typ, f, None, val, None, val, None, n))
        elif fmt == "edn":
            try:
                d = parse_edn(line)
            except BadHistory as e:
                raise BadHistory(f"line {n}: {e}") from None
            if not isinstance(d, dict):
                raise BadHistory(f"line {n}: not a map")
            events.append(_event_from_map(
                {str(k): v for k, v in d.items()}, n, result_key="value"))
        elif fmt == "jsonl":
            try:
                d = json.loads(line)
            except ValueError as e:
                raise BadHistory(f"line {n}: not JSON: {e}") from None
            if not isinstance(d, dict):
                raise BadHistory(f"line {n}: not a JSON object")
            events.append(_event_from_map(d, n, result_key="result"))
        else:
            raise BadHistory(f"unknown format {fmt!r}")
    if not events:
        raise BadHistory("no events in the history")
    return events


def _event_from_map(d: dict[str, Any], n: int, *, result_key: str) -> Event:
    for k in ("process", "type", "f"):
        if k not in d:
            raise BadHistory(f"line {n}: missing {k!r}")
    typ, f = str(d["type"]), str(d["f"])
    if typ not in _TYPES:
        raise BadHistory(f"line {n}: unknown event type {typ!r}")
    proc = d["process"]
    if isinstance(proc, Keyword) or (isinstance(proc, str) and proc == "nemesis"):
        proc = Keyword(str(proc))
    t = d.get("time")
    if t is not None and not isinstance(t, (int, float)):
        raise BadHistory(f"line {n}: time must be a number")
    key = d.get("key")
    if isinstance(key, list):
        key = _hashable(key)
    return Event(proc, typ, f, key, d.get("value"), d.get("expect"), d.get(result_key),
                 None if t is None else float(t), n)


def pair(events: list[Event]) -> list[Operation]:
    """Pair invocations with completions; drop :fail; unknown outcomes return at +inf."""
    events = [e for e in events if not isinstance(e.process, Keyword)]
    if events and all(e.time is not None for e in events):
        # by time; at the same instant a call goes before a return (they overlap)
        order = sorted(range(len(events)),
                       key=lambda i: (events[i].time, events[i].type != "invoke", i))
        events = [events[i] for i in order]
    pending: dict[Any, tuple[int, Event]] = {}
    done: list[tuple[int, Event, int, Event | None]] = []
    for pos, e in enumerate(events):
        if e.type == "invoke":
            if e.process in pending:
                raise BadHistory(
                    f"line {e.line}: process {e.process!r} invokes again while its operation "
                    f"from line {pending[e.process][1].line} is still open")
            pending[e.process] = (pos, e)
            continue
        if e.process not in pending:
            raise BadHistory(f"line {e.line}: completion for process {e.process!r} "
                             "with no open invocation")
        cpos, call = pending.pop(e.process)
        if call.f != e.f:
            raise BadHistory(f"line {e.line}: completes :{e.f} but the open invocation "
                             f"(line {call.line}) is :{call.f}")
        if e.type == "fail":
            continue
        done.append((cpos, call, pos if e.type == "ok" else -1, e if e.type == "ok" else None))
    for cpos, call in pending.values():
        done.append((cpos, call, -1, None))
    done.sort(key=lambda x: x[0])
    ops: list[Operation] = []
    for i, (cpos, call, rpos, comp) in enumerate(done):
        ops.append(Operation(
            id=i, process=call.process, f=call.f,
            key=call.key if call.key is not None or comp is None else comp.key,
            value=call.value, expect=call.expect,
            output=None if comp is None else comp.result,
            call=float(cpos), ret=math.inf if rpos < 0 else float(rpos), line=call.line))
    return ops


def read_history(text: str, fmt: str = "auto") -> list[Operation]:
    return pair(read_events(text, fmt))
