"""Client sessions in the state machine: a client's write is applied at most once (the Raft
thesis, §6.3), whatever retries, leader failovers and range moves come in between.

A write may carry its client's session: ``ci`` the client's id (16 random bytes), ``cn`` the
write's cseq (>= 1, unique per client, growing as the client issues writes; concurrent writes
arrive in any order), ``cf`` the client's floor (the lowest cseq it still awaits an answer to)
and ``cr`` retry (an earlier attempt of this write may have been applied). Per client the group
keeps the result of each recent *decided* write by cseq, and a *mark*: a retry of a cseq at or
below it finds no result it can trust.

Rules, applied in log order (so every replica decides alike):

1. A write whose (client, cseq) has a stored result applies nothing and answers that result:
   the first attempt's seq, deleted flag, or ``precondition_failed``.
2. Otherwise a retry of a client with no session here, or of a cseq at or below its mark, is
   refused with ``session_expired`` (nothing applied, nothing stored): the first attempt may
   have been applied and its result is gone, so applying this one could apply it twice.
3. Otherwise the write applies as it would without a session. If that decided it (success or
   ``precondition_failed``), its result is stored under its cseq (unless the cseq is at or
   below the mark). A write refused for its routing (``range_not_here``, ``table_not_found``,
   ``unavailable``) or malformed decided nothing: nothing is stored and the session is not
   touched, so the same write may still apply elsewhere (another group, after a move).

The mark only grows:

* a new session starts at mark = cseq - 1: what this client wrote here before is unknown (a
  session dropped while one of its writes was in doubt must not look like a fresh client).
  The price: a new session's out-of-order first writes, if retried, get ``session_expired``;
* floor f: results below f are deleted and mark >= f - 1 (the client awaits none of them);
* at most ``RESULTS_PER_CLIENT_MAX`` results: mark >= top - RESULTS_PER_CLIENT_MAX, ``top``
  being the highest cseq seen, so the oldest go first and every result held is in
  (top - RESULTS_PER_CLIENT_MAX, top];
* merged from another group (a range move, ``merge``): the higher of the two marks, the union of
  the results. A result at or below the mark may then be held: it is still the write's result,
  and rule 1 comes first.

Sessions end, deterministically (by the log alone, never a node's clock), without a scan of
every session: an index orders them by the seq of their latest write (seqs are hybrid
timestamps, ``sequencer.py``).

* expiry: a session write at seq s first drops the sessions whose latest write is more than
  ``SESSION_TTL_MS`` of seq time older than s, oldest first, at most ``EXPIRE_PER_WRITE_MAX``
  of them (the rest go with the next writes);
* eviction: a new session when ``CLIENTS_MAX`` exist first drops the least recently written.

A retried write to a range being moved here waits (``unavailable``) until the source's
sessions are merged here (``import_sessions`` with ``done``, before the move's finish): its
first attempt may have been applied by the source before the fence.

What a dropped session cannot protect: once a client's session is dropped, a retry of it gets
``session_expired`` (rule 2), except in one case. A delayed first attempt of a lower cseq that
arrives after the drop starts a new session (mark = its cseq - 1); a later retry of a higher
cseq that the dropped session had applied then finds no result and no mark above it, and
applies again. That needs the session dropped while the client's writes are still in flight:
an hour of seq time without one of them arriving, or ``CLIENTS_MAX`` other clients writing
since its latest. (Sessions registered through the log, as in the thesis, would close it;
here clients choose their own ids.)

Layout, in the engine's metadata area (``engine.py``)::

    b"\\x00c" + client (16)                -> mark u64 | top u64 | last_seq (16)
    b"\\x00d" + client (16) + cseq u64      -> the result (a msgpack map)
    b"\\x00e" + last_seq (16) + client (16) -> b""  (expiry and eviction order)

This module reads and writes through the engine's batch (``Writes``): the session records of a
command are in the same atomic backend batch as its data, so they are in every snapshot and
checkpoint and survive failover.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import msgpack

from rangekv import errors, sequencer
from rangekv.storage.wal import StorageCorrupt

CLIENT_BYTES = 16
CSEQ_MAX = (1 << 64) - 1
RESULTS_PER_CLIENT_MAX = 10_000  # results held per client (the oldest cseqs go first)
CLIENTS_MAX = 100_000  # sessions per group (the least recently writing goes first)
SESSION_TTL_MS = 3_600_000  # a session not written for this long, in seq time, is dropped
EXPIRE_PER_WRITE_MAX = 4  # sessions one write drops for expiry at most (the rest: later)
RESULT_BYTES_MAX = 64 * 1024  # one stored result (an import's results are checked against it)
EXPORT_CLIENTS_MAX = 1000  # sessions in one page of a move's copy
EXPORT_BYTES_MAX = 512 * 1024  # results' bytes in one page (at least one session a page)

HEAD = b"\x00c"
RESULT = b"\x00d"
BY_TIME = b"\x00e"
END = b"\x00f"  # just past every session record
SPAN = (HEAD, END)

_HEAD = struct.Struct(">QQ16s")
_SEQ_BYTES = sequencer.SEQ_BYTES
_PAST_CSEQS = b"\xff" * 9  # above every 8-byte cseq suffix of one client's results


class Malformed(Exception):
    """A session field of the wrong type or size: the engine answers ``invalid_argument``."""


class Writes(Protocol):
    """What this module needs of the engine's batch (``engine._Tx``): reads that see the batch's
    own writes, ordered scans of the session records, the number of sessions, and a lower bound
    on the seq time (ns) of every session's latest write (``expire``'s shortcut; 0: unknown)."""

    session_count: int
    session_oldest_ns: int
    # heads written in this batch and not yet put (``flush``): client -> (the latest write's
    # seq of the head the backend holds, None for a new session; the head now)
    session_heads: dict[bytes, tuple[bytes | None, Head]]

    def get(self, key: bytes) -> bytes | None: ...

    def put_ordered(self, key: bytes, value: bytes) -> None: ...

    def delete_ordered(self, key: bytes) -> None: ...

    def scan(self, lo: bytes, hi: bytes, limit: int | None = None
             ) -> list[tuple[bytes, bytes]]: ...


class Request(NamedTuple):
    """A write's session fields (``ci``, ``cn``, ``cf``, ``cr`` of its command). (Named
    tuples, this and ``Head``: a batch makes a few per item, and a frozen dataclass costs a
    microsecond each to make.)"""

    client: bytes
    cseq: int
    floor: int
    retry: bool

    def for_cseq(self, cseq: Any) -> Request:
        """The same session's write ``cseq`` (a batch's item; raises Malformed)."""
        cseq = _uint(cseq, "cn (cseq)", 1)
        # the write itself awaits its answer: a floor above it would forget it (the node
        # refuses such a request; clamped here too, so a bad command cannot lose more than it
        # says)
        return Request(self.client, cseq, min(self.floor, cseq), self.retry)


class Head(NamedTuple):
    """A client's session: its mark, the highest cseq seen, the seq of its latest write."""

    mark: int
    top: int
    last_seq: bytes


def command_fields(client: bytes | None, cseq: int | None, floor: int | None,
                   retry: bool | None) -> dict[str, Any]:
    """The fields a put or del command carries for a write of a session (none without one)."""
    if client is None:
        return {}
    assert cseq is not None and cseq >= 1, cseq
    return {"ci": client, "cn": cseq, "cf": floor or 0, "cr": bool(retry)}


def _uint(value: Any, name: str, lo: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= CSEQ_MAX:
        raise Malformed(f"{name} must be an integer in [{lo}, 2**64)")
    return value


def _client(value: Any, name: str = "ci") -> bytes:
    if not isinstance(value, bytes) or len(value) != CLIENT_BYTES:
        raise Malformed(f"{name} (client id) must be {CLIENT_BYTES} bytes")
    return value


def parse_batch(cmd: dict[str, Any]) -> Request | None:
    """The session of a command (None without one), its cseq 0: a batch's, whose items'
    cseqs come with ``Request.for_cseq``."""
    if cmd.get("ci") is None:
        return None
    client = _client(cmd["ci"])
    floor = _uint(cmd.get("cf") or 0, "cf (floor)")
    retry = cmd.get("cr") or False
    if not isinstance(retry, bool):
        raise Malformed("cr (retry) must be a bool")
    return Request(client, 0, floor, retry)


def parse(cmd: dict[str, Any]) -> Request | None:
    """The session of a put or del command; None for a write without one."""
    session = parse_batch(cmd)
    return None if session is None else session.for_cseq(cmd.get("cn"))


# -- records ---------------------------------------------------------------------------------


def head_key(client: bytes) -> bytes:
    return HEAD + client


def result_key(client: bytes, cseq: int) -> bytes:
    return RESULT + client + cseq.to_bytes(8, "big")


def time_key(last_seq: bytes, client: bytes) -> bytes:
    return BY_TIME + last_seq + client


def _results_below(client: bytes, cseq: int | None) -> tuple[bytes, bytes]:
    """The span of ``client``'s results with a cseq below ``cseq`` (None: all of them)."""
    lo = RESULT + client
    if cseq is None or cseq > CSEQ_MAX:
        return lo, lo + _PAST_CSEQS
    return lo, lo + max(0, cseq).to_bytes(8, "big")


def encode_head(head: Head) -> bytes:
    return _HEAD.pack(head.mark, head.top, head.last_seq)


def decode_head(raw: bytes) -> Head:
    if len(raw) != _HEAD.size:
        raise StorageCorrupt(f"session record of {len(raw)} bytes, expected {_HEAD.size}")
    mark, top, last_seq = _HEAD.unpack(raw)
    return Head(mark, top, last_seq)


_SEQ_RESULT = b"\x81\xa3seq\xc4\x10"  # msgpack of {"seq": <16 bytes>} before the bytes


def encode_result(result: dict[str, Any]) -> bytes:
    seq = result.get("seq")
    if len(result) == 1 and isinstance(seq, bytes) and len(seq) == _SEQ_BYTES:
        return _SEQ_RESULT + seq  # a put's result, most of them: no packer call
    raw: bytes = msgpack.packb(result, use_bin_type=True)
    return raw


def decode_result(raw: bytes) -> dict[str, Any]:
    """A stored result; raises Malformed unless it is one the engine stores (a write's seq,
    a delete's answer, or an error): what an import from another group is checked against."""
    try:
        result = msgpack.unpackb(raw, raw=False)
    except Exception:  # noqa: BLE001 - msgpack raises several unrelated types
        raise Malformed("a result is not msgpack") from None
    if not isinstance(result, dict):
        raise Malformed("a result is a map")
    if "error" in result:
        err = result["error"]
        if (set(result) != {"error"} or not isinstance(err, dict)
                or not isinstance(err.get("code"), str)):
            raise Malformed("an error result is {error: {code, ...}}")
        return result
    seq = result.get("seq")
    if not isinstance(seq, bytes) or len(seq) != _SEQ_BYTES:
        raise Malformed("a result carries a 16-byte seq")
    if not set(result) <= {"seq", "deleted"} or not isinstance(result.get("deleted", False),
                                                                 bool):
        raise Malformed("a result is {seq} or {deleted: bool, seq}")
    return result


def decided(result: dict[str, Any]) -> bool:
    """Whether a write's result decides it for good (stored): applied, or its condition failed.
    Routing refusals and malformed commands decided nothing."""
    err = result.get("error")
    return err is None or err.get("code") == errors.PreconditionFailed.code


def count(iterate: Callable[[bytes, bytes], Iterator[tuple[bytes, bytes]]]) -> int:
    """How many sessions a backend holds (on opening it)."""
    return sum(1 for _ in iterate(HEAD, RESULT))


# -- the rules ---------------------------------------------------------------------------------


def head(tx: Writes, client: bytes) -> Head | None:
    pending = tx.session_heads.get(client)
    if pending is not None:
        return pending[1]
    raw = tx.get(head_key(client))
    return None if raw is None else decode_head(raw)


def flush(tx: Writes) -> None:
    """Put the heads written since the last flush, with their places in the time index.

    A session's head and time-index entry change with each of its writes; a batch of a
    thousand writes of one client would put and delete them a thousand times. So ``_store``
    keeps the head in ``tx.session_heads`` and this writes it once: before any scan of the
    session records (whose results must not depend on it) and before the batch is written.
    What is stored at the end is the same as with a write per store."""
    if not tx.session_heads:
        return
    heads, tx.session_heads = tx.session_heads, {}
    for client, (stored_last, new) in heads.items():
        if stored_last != new.last_seq:
            if stored_last is not None:
                tx.delete_ordered(time_key(stored_last, client))
            tx.put_ordered(time_key(new.last_seq, client), b"")
        tx.put_ordered(head_key(client), encode_head(new))


def stored(tx: Writes, client: bytes, cseq: int) -> dict[str, Any] | None:
    """The stored result of ``client``'s write ``cseq``, if any."""
    raw = tx.get(result_key(client, cseq))
    if raw is None:
        return None
    try:
        return decode_result(raw)
    except Malformed as exc:
        raise StorageCorrupt(f"stored session result: {exc}") from None


def refuses(req: Request, h: Head | None) -> bool:
    """Rule 2: a retry whose first attempt's result cannot be known any more."""
    return req.retry and (h is None or req.cseq <= h.mark)


def expired_error() -> dict[str, Any]:
    err = errors.SessionExpired(
        "the outcome of this write's earlier attempt cannot be known any more: its client "
        "session is gone here (expired or evicted) or has forgotten that write; nothing was "
        "done")
    return {"error": err.to_dict()}


def expire(tx: Writes, seq: bytes) -> int:
    """Drop the sessions not written for ``SESSION_TTL_MS`` of seq time before ``seq``, oldest
    first, at most ``EXPIRE_PER_WRITE_MAX``. Returns how many were dropped.

    Scanning the time index costs a backend iterator; every session write calls this. So the
    batch carries ``session_oldest_ns``, a lower bound on every session's latest write: while
    the cut-off is below it there is nothing to drop and nothing is read. A scan sets it to the
    oldest session it leaves (new sessions and writes are newer; a merge resets it). It only
    saves reads: what is dropped is the same with or without it, on every replica."""
    ts_ns = sequencer.parts(seq)[0] - SESSION_TTL_MS * 1_000_000
    if ts_ns <= 0 or ts_ns <= tx.session_oldest_ns:
        return 0
    flush(tx)
    oldest = tx.scan(BY_TIME, END, EXPIRE_PER_WRITE_MAX + 1)
    cut = BY_TIME + sequencer.make(ts_ns, 0, 0)
    dropped = 0
    for key, _ in oldest:
        if key >= cut or dropped == EXPIRE_PER_WRITE_MAX:
            tx.session_oldest_ns = sequencer.parts(key[len(BY_TIME):len(BY_TIME) + _SEQ_BYTES])[0]
            return dropped
        drop(tx, key[len(BY_TIME) + _SEQ_BYTES:])
        dropped += 1
    if len(oldest) <= EXPIRE_PER_WRITE_MAX:
        tx.session_oldest_ns = ts_ns  # every session left (none) is newer than the cut
    return dropped


def drop(tx: Writes, client: bytes) -> None:
    """Delete a session: its record, its place in the time index and every result."""
    flush(tx)
    h = head(tx, client)
    if h is None:
        raise StorageCorrupt(f"the session index names client {client.hex()}, which has no "
                             "session")
    tx.delete_ordered(head_key(client))
    tx.delete_ordered(time_key(h.last_seq, client))
    for key, _ in tx.scan(*_results_below(client, None)):
        tx.delete_ordered(key)
    tx.session_count -= 1
    assert tx.session_count >= 0, tx.session_count


def _make_room(tx: Writes) -> None:
    """Before a new session: evict the least recently written one if ``CLIENTS_MAX`` exist."""
    while tx.session_count >= CLIENTS_MAX:
        flush(tx)
        oldest = tx.scan(BY_TIME, END, 1)
        if not oldest:
            raise StorageCorrupt(f"{tx.session_count} sessions counted, none in the time index")
        drop(tx, oldest[0][0][len(BY_TIME) + _SEQ_BYTES:])


FORGET_BY_KEY_MAX = 64  # a mark moving up by at most this deletes by key, without a scan


def _forget_below(tx: Writes, client: bytes, cseq: int, from_cseq: int = 0) -> None:
    """Delete ``client``'s results with a cseq below ``cseq`` (and at or above ``from_cseq``:
    where the results forgotten before end, as RocksDB tombstones until a compaction, which a
    scan from the client's first result would step over every time)."""
    lo, hi = _results_below(client, cseq)
    if from_cseq > 0:
        lo = result_key(client, from_cseq)
    for key, _ in tx.scan(lo, hi):
        tx.delete_ordered(key)


def _forget_between(tx: Writes, client: bytes, old_mark: int, mark: int) -> None:
    """Delete ``client``'s results in (old_mark, mark]: the mark moved up. Every write moves it
    (the floor follows the client's answers), and a scan costs a backend iterator: a short move
    deletes those cseqs by key. (Results at or below the old mark are only ever held after a
    merge; they are still their writes' results, and go with the session.)"""
    if mark - old_mark > FORGET_BY_KEY_MAX:
        # (from old_mark + 1: a scan from the start stepped over every result forgotten before,
        # every batch; a load spent a tenth of its apply there)
        _forget_below(tx, client, mark + 1, old_mark + 1)
        return
    for cseq in range(old_mark + 1, mark + 1):
        key = result_key(client, cseq)
        if tx.get(key) is not None:
            tx.delete_ordered(key)


def _store(tx: Writes, client: bytes, old: Head | None, new: Head) -> None:
    """Write a session's record and its place in the time index (at the next ``flush``)."""
    pending = tx.session_heads.get(client)
    if pending is not None:
        stored_last = pending[0]
    elif old is None:
        _make_room(tx)
        tx.session_count += 1
        stored_last = None
    else:
        stored_last = old.last_seq
    tx.session_heads[client] = (stored_last, new)


def record(tx: Writes, req: Request, h: Head | None, seq: bytes,
           result: dict[str, Any] | None) -> None:
    """Note a write of ``req``'s session at ``seq``: decided with ``result`` (rule 3), or
    answered from its stored result (None: rule 1). Creates the session if there is none,
    advances its mark by the floor and the bound on results, stores ``result``."""
    if h is None:
        base = Head(req.cseq - 1, req.cseq, seq)
    else:
        base = Head(h.mark, max(h.top, req.cseq), max(h.last_seq, seq))
    mark = max(base.mark, req.floor - 1, base.top - RESULTS_PER_CLIENT_MAX)
    if h is not None and mark > h.mark:
        _forget_between(tx, req.client, h.mark, mark)
    new = Head(mark, base.top, base.last_seq)
    _store(tx, req.client, h, new)
    if result is not None and req.cseq > mark:
        tx.put_ordered(result_key(req.client, req.cseq), encode_result(result))


# -- moving sessions to another group ----------------------------------------------------------


def export_page(iterate: Callable[[bytes, bytes], Iterator[tuple[bytes, bytes]]],
                after: bytes | None, limit: int = EXPORT_CLIENTS_MAX,
                bytes_max: int = EXPORT_BYTES_MAX) -> tuple[list[list[Any]], bool]:
    """Sessions after client ``after`` (None: from the first), each as
    ``[client, mark, top, last_seq, [[cseq, result], ...]]`` (results as stored: msgpack
    bytes), at most ``limit`` and stopping once ``bytes_max`` of results are in (but at least
    one); and whether more follow."""
    assert limit >= 1, limit
    lo = HEAD if after is None else head_key(after) + b"\x00"
    items: list[list[Any]] = []
    nbytes = 0
    for key, raw in iterate(lo, RESULT):
        if len(items) >= limit or (items and nbytes >= bytes_max):
            return items, True
        client = key[len(HEAD):]
        h = decode_head(raw)
        results = []
        r_lo, r_hi = _results_below(client, None)
        for rkey, value in iterate(r_lo, r_hi):
            results.append([int.from_bytes(rkey[-8:], "big"), value])
            nbytes += len(value) + 16
        items.append([client, h.mark, h.top, h.last_seq, results])
    return items, False


def parse_export_item(item: Any) -> tuple[bytes, Head, list[tuple[int, bytes]]]:
    """(client, head, results) of one exported session; raises Malformed."""
    if not isinstance(item, (list, tuple)) or len(item) != 5:
        raise Malformed("a session is [client, mark, top, last_seq, results]")
    client = _client(item[0], "client")
    mark, top = _uint(item[1], "mark"), _uint(item[2], "top")
    last_seq = item[3]
    if not isinstance(last_seq, bytes) or len(last_seq) != _SEQ_BYTES:
        raise Malformed("a session's last_seq must be a 16-byte seq")
    raw_results = item[4]
    if not isinstance(raw_results, (list, tuple)):
        raise Malformed("a session's results are a list of [cseq, result]")
    results = []
    for pair in raw_results:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise Malformed("a session's result is [cseq, result]")
        cseq = _uint(pair[0], "a result's cseq", 1)
        raw = pair[1]
        if not isinstance(raw, bytes) or len(raw) > RESULT_BYTES_MAX:
            raise Malformed(f"a result is at most {RESULT_BYTES_MAX} bytes")
        decode_result(raw)
        if cseq > top:
            raise Malformed("a session holds a result above its top cseq")
        results.append((cseq, raw))
    return client, Head(mark, top, last_seq), results


def merge(tx: Writes, client: bytes, theirs: Head, results: list[tuple[int, bytes]]) -> int:
    """Merge a session copied from another group into this one's: the higher mark, top and
    latest seq, the union of the results (those the bound on results keeps). Idempotent.
    Returns the results added."""
    mine = head(tx, client)
    tx.session_oldest_ns = 0  # a copied session may be older than every one here
    if mine is None:
        merged = theirs
    else:
        merged = Head(max(mine.mark, theirs.mark), max(mine.top, theirs.top),
                      max(mine.last_seq, theirs.last_seq))
    window = merged.top - RESULTS_PER_CLIENT_MAX  # results at or below it are not kept
    merged = Head(max(merged.mark, window), merged.top, merged.last_seq)
    if mine is not None and window > max(0, mine.top - RESULTS_PER_CLIENT_MAX):
        _forget_below(tx, client, window + 1)
    _store(tx, client, mine, merged)
    added = 0
    for cseq, raw in results:
        key = result_key(client, cseq)
        if cseq > window and tx.get(key) is None:
            tx.put_ordered(key, raw)
            added += 1
    return added
