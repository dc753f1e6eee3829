"""Client sessions in the state machine (``storage/sessions.py``): a write of a client session
applies at most once, retried however often, across restarts, replicas and range moves; its
bounds evict deterministically; and a hypothesis property: a log with duplicated (client, cseq)
entries anywhere leaves the data as the log without them does."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv import sequencer
from rangekv.storage import sessions
from rangekv.storage.engine import (
    FORMAT_VERSION,
    IMPORTING,
    KEY_APPLIED_INDEX,
    KEY_FORMAT,
    KEY_LAST_SEQ,
    StateMachine,
    encode_command,
    open_memory,
)
from rangekv.storage.memory import MemoryBackend
from rangekv.storage.rocks import RocksBackend

T = 7
ZERO = bytes(16)
A, B, C, D = (bytes([c]) * 16 for c in b"ABCD")
BASE_NS = 1_700_000_000 * 10**9
HOUR_NS = sessions.SESSION_TTL_MS * 10**6


class Group:
    """A state machine fed consecutive entries, with seqs that are hybrid timestamps a
    leader gives (``at_ns`` moves the clock)."""

    def __init__(self, sm: StateMachine | None = None) -> None:
        self.sm = sm if sm is not None else open_memory()
        self.ns = BASE_NS

    def seq(self, at_ns: int | None = None) -> bytes:
        self.ns = max(self.ns + 1000, at_ns or 0)
        return sequencer.make(self.ns, 0, 1)

    def one(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd.get("s") is None:
            cmd["s"] = self.seq()
        (result,) = self.sm.apply([(self.sm.applied_index + 1, encode_command(cmd))])
        return result

    def table(self, start: bytes = b"", end: bytes | None = None) -> None:
        assert self.one({"op": "add_range", "t": T, "start": start, "end": end}) == {}

    def write(self, op: str, key: bytes, value: bytes = b"", *, client: bytes | None = None,
              cseq: int | None = None, floor: int = 0, retry: bool = False,
              if_seq: bytes | None = None, at_ns: int | None = None) -> dict[str, Any]:
        cmd: dict[str, Any] = {"op": op, "t": T, "k": key, "s": self.seq(at_ns), "c": if_seq}
        if op == "put":
            cmd["v"] = value
        if client is not None:
            cmd.update(sessions.command_fields(client, cseq, floor, retry))
        return self.one(cmd)

    def put(self, key: bytes, value: bytes, **kw: Any) -> dict[str, Any]:
        return self.write("put", key, value, **kw)

    def delete(self, key: bytes, **kw: Any) -> dict[str, Any]:
        return self.write("del", key, **kw)

    def results(self, client: bytes) -> list[int]:
        """The cseqs of ``client``'s stored results."""
        items, _ = self.sm.export_sessions(None, 10**6)
        return next(([n for n, _ in it[4]] for it in items if it[0] == client), [])


def code(result: dict[str, Any]) -> str | None:
    return result["error"]["code"] if "error" in result else None


@pytest.fixture
def g() -> Group:
    group = Group()
    group.table()
    return group


# -- the rules ---------------------------------------------------------------------------------


def test_a_duplicate_applies_nothing_and_answers_the_first_result(g: Group) -> None:
    first = g.put(b"k", b"v1", client=A, cseq=1, floor=1)
    assert code(first) is None
    other = g.put(b"k", b"v2")  # another writer, no session
    again = g.put(b"k", b"v1", client=A, cseq=1, floor=1, retry=True)
    assert again == {**first, "dup": True}
    assert g.sm.get(T, b"k") == (b"v2", other["seq"])  # not written twice
    # a delete retried after another writer re-created the key does not delete again
    deleted = g.delete(b"k", client=A, cseq=2, floor=2)
    assert deleted["deleted"] is True
    recreated = g.put(b"k", b"v3")
    again = g.delete(b"k", client=A, cseq=2, floor=2, retry=True)
    assert again == {**deleted, "dup": True}
    assert g.sm.get(T, b"k") == (b"v3", recreated["seq"])
    # without retry too: a (client, cseq) answered before is never applied again
    assert g.delete(b"k", client=A, cseq=2, floor=2)["dup"] is True
    assert g.sm.get(T, b"k") == (b"v3", recreated["seq"])


def test_a_retried_if_match_put_that_succeeded_answers_success(g: Group) -> None:
    base = g.put(b"k", b"v0")["seq"]
    first = g.put(b"k", b"v1", client=A, cseq=1, floor=1, if_seq=base)
    assert code(first) is None
    # the key's seq is no longer `base`: a blind retry would get 412
    again = g.put(b"k", b"v1", client=A, cseq=1, floor=1, if_seq=base, retry=True)
    assert code(again) is None and again["seq"] == first["seq"]
    assert g.sm.get(T, b"k") == (b"v1", first["seq"])


def test_a_failed_conditional_put_fails_the_same_on_retry(g: Group) -> None:
    g.put(b"k", b"v0")
    failed = g.put(b"k", b"v1", client=A, cseq=1, floor=1, if_seq=ZERO)  # create only
    assert code(failed) == "precondition_failed"
    g.delete(b"k")  # now a create would succeed
    again = g.put(b"k", b"v1", client=A, cseq=1, floor=1, if_seq=ZERO, retry=True)
    assert code(again) == "precondition_failed"
    assert again["error"] == failed["error"]
    assert g.sm.get(T, b"k") is None


def test_a_write_refused_for_routing_decides_nothing(g: Group) -> None:
    refused = g.one({"op": "put", "t": T + 1, "k": b"k", "v": b"v", "s": None, "c": None,
                     **sessions.command_fields(A, 1, 1, False)})
    assert code(refused) == "table_not_found"
    assert g.sm.session_count == 0  # nothing stored: the write may apply elsewhere
    g.one({"op": "add_range", "t": T + 1, "start": b"", "end": None, "s": None})
    applied = g.one({"op": "put", "t": T + 1, "k": b"k", "v": b"v", "s": None, "c": None,
                     **sessions.command_fields(A, 1, 1, True)})
    assert code(applied) == "session_expired"  # a retry of a client unknown here...
    applied = g.one({"op": "put", "t": T + 1, "k": b"k", "v": b"v", "s": None, "c": None,
                     **sessions.command_fields(A, 1, 1, False)})
    assert code(applied) is None  # ...but its first attempt here applies


def test_a_retry_of_an_unknown_client_is_refused_and_a_first_write_is_not(g: Group) -> None:
    assert code(g.put(b"k", b"v", client=A, cseq=5, floor=1, retry=True)) == "session_expired"
    assert g.sm.get(T, b"k") is None and g.sm.session_count == 0
    assert code(g.put(b"k", b"v", client=A, cseq=5, floor=1)) is None


def test_writes_without_a_session_are_untouched(g: Group) -> None:
    plain = Group()
    plain.table()
    for grp in (g, plain):
        grp.put(b"a", b"1")
        grp.delete(b"a")
        grp.put(b"b", b"2", if_seq=ZERO)
    assert g.sm.content_hash() == plain.sm.content_hash()
    assert g.sm.session_count == 0


def test_the_floor_forgets_results_below_it(g: Group) -> None:
    for n in (1, 2, 3):
        g.put(b"k%d" % n, b"v", client=A, cseq=n, floor=1)
    assert g.results(A) == [1, 2, 3]
    g.put(b"k4", b"v", client=A, cseq=4, floor=3)  # 1 and 2 answered: forgettable
    assert g.results(A) == [3, 4]
    assert code(g.put(b"k1", b"v", client=A, cseq=1, floor=3, retry=True)) == "session_expired"
    assert g.put(b"k3", b"v", client=A, cseq=3, floor=3, retry=True)["dup"] is True


def test_a_new_session_knows_nothing_below_its_first_write(g: Group) -> None:
    """A session dropped while a write was in doubt must not look like a fresh client: the
    retry of an earlier cseq is refused, not applied blindly."""
    g.put(b"k", b"v", client=A, cseq=7, floor=5)
    assert code(g.put(b"k", b"old", client=A, cseq=5, floor=5, retry=True)) == "session_expired"
    assert g.sm.get(T, b"k")[0] == b"v"
    # a first attempt below the mark (out of order) applies; its answer is not kept
    assert code(g.put(b"j", b"x", client=A, cseq=6, floor=5)) is None
    assert g.results(A) == [7]


def test_the_results_of_a_client_are_bounded_oldest_first(
        g: Group, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "RESULTS_PER_CLIENT_MAX", 3)
    for n in range(1, 6):
        g.put(b"k%d" % n, b"v", client=A, cseq=n, floor=1)
    assert g.results(A) == [3, 4, 5]
    assert code(g.put(b"k2", b"v", client=A, cseq=2, floor=1, retry=True)) == "session_expired"
    assert g.put(b"k3", b"v", client=A, cseq=3, floor=1, retry=True)["dup"] is True
    # a cseq far ahead moves the window with it
    g.put(b"k", b"v", client=A, cseq=100, floor=1)
    assert g.results(A) == [100]


def test_too_many_clients_evict_the_least_recently_writing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "CLIENTS_MAX", 3)
    replicas = [Group(), Group()]
    for r in replicas:
        r.table()
        r.put(b"a", b"1", client=A, cseq=1, floor=1)
        r.put(b"b", b"1", client=B, cseq=1, floor=1)
        r.put(b"c", b"1", client=C, cseq=1, floor=1)
        r.put(b"a", b"2", client=A, cseq=2, floor=1)  # A writes again: B is now the oldest
        r.put(b"d", b"1", client=D, cseq=1, floor=1)  # a fourth client: B goes
        assert r.sm.session_count == 3
        assert code(r.put(b"b", b"1", client=B, cseq=1, floor=1, retry=True)) == \
            "session_expired"
        assert r.put(b"c", b"1", client=C, cseq=1, floor=1, retry=True)["dup"] is True
        assert r.put(b"a", b"1", client=A, cseq=1, floor=1, retry=True)["dup"] is True
    assert replicas[0].sm.content_hash() == replicas[1].sm.content_hash()


def test_sessions_expire_by_seq_time(g: Group) -> None:
    g.put(b"a", b"1", client=A, cseq=1, floor=1)
    g.put(b"b", b"1", client=B, cseq=1, floor=1, at_ns=BASE_NS + HOUR_NS // 2)
    # an hour of seq time after A's last write, another client's write drops A, not B
    g.put(b"c", b"1", client=C, cseq=1, floor=1, at_ns=BASE_NS + HOUR_NS + 10**9)
    assert g.sm.session_count == 2
    assert code(g.put(b"a", b"1", client=A, cseq=1, floor=1, retry=True)) == "session_expired"
    assert g.sm.get(T, b"a")[0] == b"1"
    assert g.put(b"b", b"1", client=B, cseq=1, floor=1, retry=True)["dup"] is True
    # a write without a session drops nothing (only session writes expire sessions)
    g.put(b"d", b"1", at_ns=BASE_NS + 3 * HOUR_NS)
    assert g.sm.session_count == 2


def test_expiry_drops_a_bounded_number_per_write(g: Group) -> None:
    clients = [bytes([i]) * 16 for i in range(1, 11)]
    for i, c in enumerate(clients):
        g.put(b"k", b"v", client=c, cseq=1, floor=1, at_ns=BASE_NS + i)
    later = BASE_NS + 2 * HOUR_NS
    g.put(b"x", b"v", client=A, cseq=1, floor=1, at_ns=later)
    assert g.sm.session_count == 1 + 10 - sessions.EXPIRE_PER_WRITE_MAX
    g.put(b"x", b"v", client=A, cseq=2, floor=1, at_ns=later + 1)
    g.put(b"x", b"v", client=A, cseq=3, floor=1, at_ns=later + 2)
    assert g.sm.session_count == 1


def test_a_batch_applies_each_item_once(g: Group) -> None:
    seqs = [g.seq() for _ in range(4)]
    batch = {"op": "batch", "t": T, "s": g.seq(), "ci": A, "cf": 1, "cr": False, "items": [
        ["put", b"a", b"1", None, seqs[0], 1],
        ["put", b"b", b"1", ZERO, seqs[1], 2],
        ["del", b"zz", None, None, seqs[2], 3],
        ["put", b"a", b"again", None, seqs[3], 1],  # the same cseq twice: once
    ]}
    results = g.one(batch)["results"]
    assert [code(r) for r in results] == [None, None, None, None]
    assert results[3] == {**results[0], "dup": True}
    assert results[2] == {"deleted": False, "seq": ZERO}
    assert g.sm.get(T, b"a") == (b"1", seqs[0])
    # the whole batch retried: nothing applies again, every result as the first time
    g.put(b"b", b"other")
    retry = {**batch, "s": g.seq(), "cr": True,
             "items": [[*it[:4], g.seq(), it[5]] for it in batch["items"]]}
    retry["s"] = g.seq()
    again = g.one(retry)["results"]
    assert [{k: v for k, v in r.items() if k != "dup"} for r in again[:3]] == results[:3]
    assert g.sm.get(T, b"b")[0] == b"other"


def test_a_batch_answers_each_item_for_itself(g: Group) -> None:
    g.put(b"b", b"0")
    batch_seq = g.seq()
    late = g.seq()  # above the batch's seq: refused for that item alone
    items = [["put", b"a", b"1", None, sequencer.make(BASE_NS, 1, 1), None],
             ["put", b"b", b"1", ZERO, sequencer.make(BASE_NS, 2, 1), None],
             ["put", b"c", b"1", None, late, None],
             ["nope", b"d", b"1", None, sequencer.make(BASE_NS, 3, 1), None]]
    results = g.one({"op": "batch", "t": T, "s": batch_seq, "items": items})["results"]
    assert [code(r) for r in results] == [None, "precondition_failed", "invalid_argument",
                                          "invalid_argument"]
    assert g.sm.get(T, b"a")[0] == b"1" and g.sm.get(T, b"c") is None


# -- replicas, restarts, old data ------------------------------------------------------------


def _session_log(rng: random.Random, n: int) -> list[dict[str, Any]]:
    g = Group()  # (only for its seqs)
    cmds: list[dict[str, Any]] = [{"op": "add_range", "t": T, "start": b"", "end": None,
                                   "s": g.seq()}]
    cseqs = {c: 0 for c in (A, B, C)}
    sent: list[dict[str, Any]] = []
    for _ in range(n):
        if sent and rng.random() < 0.3:
            cmd = {**rng.choice(sent), "s": g.seq(), "cr": True}
        else:
            client = rng.choice([A, B, C])
            cseqs[client] += 1
            cmd = {"op": rng.choice(["put", "del"]), "t": T, "k": rng.choice([b"a", b"b"]),
                   "v": b"v%d" % rng.randrange(9), "s": g.seq(), "c": None,
                   **sessions.command_fields(client, cseqs[client],
                                             max(1, cseqs[client] - 2), False)}
            sent.append(cmd)
        cmds.append(cmd)
    return cmds


def test_replicas_applying_one_log_in_any_batches_agree() -> None:
    cmds = _session_log(random.Random(5), 300)
    hashes = set()
    for cut in (1, 7, 300):
        sm = open_memory()
        payloads = [encode_command(c) for c in cmds]
        for lo in range(0, len(payloads), cut):
            sm.apply([(lo + i + 1, p) for i, p in enumerate(payloads[lo:lo + cut])])
        hashes.add(sm.content_hash())
        assert sm.session_count == 3
    assert len(hashes) == 1


@pytest.fixture(params=["memory", "rocks"])
def reopenable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    memory = MemoryBackend()

    def open_() -> StateMachine:
        if request.param == "rocks":
            return StateMachine(RocksBackend(tmp_path / "rocks"))
        return StateMachine(memory)

    yield open_


def test_sessions_survive_a_reopen(reopenable: Any) -> None:
    g = Group(reopenable())
    g.table()
    first = g.put(b"k", b"v", client=A, cseq=1, floor=1)
    g.put(b"j", b"v", client=B, cseq=3, floor=2)
    before = g.sm.content_hash()
    g.sm.close()
    g.sm = reopenable()
    assert g.sm.content_hash() == before and g.sm.session_count == 2
    g.put(b"k", b"other")
    assert g.put(b"k", b"v", client=A, cseq=1, floor=1, retry=True) == {**first, "dup": True}
    assert code(g.put(b"j", b"v", client=B, cseq=2, floor=2, retry=True)) == "session_expired"


def test_state_written_before_sessions_opens_as_it_was() -> None:
    """The records an engine without sessions wrote (format 1, a range, a moving range's
    17-byte state, a data record) open; the first session write then works."""
    backend = MemoryBackend()
    seq = sequencer.make(BASE_NS, 0, 1)
    table = T.to_bytes(8, "big")
    backend.write([
        ("put", KEY_FORMAT, FORMAT_VERSION.to_bytes(4, "big")),
        ("put", KEY_APPLIED_INDEX, (3).to_bytes(8, "big")),
        ("put", KEY_LAST_SEQ, seq),
        ("put", b"\x00r" + table + b"", b"\x01m"),
        ("put", b"\x00r" + table + b"m", b"\x00"),
        ("put", b"\x00q" + table + b"m", b"\x02" + seq),  # importing at H = seq
        ("put", b"\x01" + table + b"a", seq + b"\x00" + b"old"),
    ])
    sm = StateMachine(backend)
    assert sm.applied_index == 3 and sm.session_count == 0
    assert sm.mark(T, b"m") == (IMPORTING, seq) and not sm.sessions_copied(T, b"m")
    assert sm.get(T, b"a") == (b"old", seq)
    g = Group(sm)
    assert code(g.put(b"a", b"new", client=A, cseq=1, floor=1)) is None
    assert g.put(b"a", b"new", client=A, cseq=1, floor=1, retry=True)["dup"] is True


# -- moving a range: the sessions go along ------------------------------------------------------


def test_a_retry_after_a_move_finds_the_first_result() -> None:
    src, dst = Group(), Group()
    src.table()
    src.put(b"k", b"v", client=A, cseq=1, floor=1)
    first = src.delete(b"k", client=A, cseq=2, floor=1)
    assert first["deleted"] is True
    high = src.one({"op": "fence_range", "t": T, "start": b"", "end": None})["seq"]
    dst.ns = sequencer.parts(high)[0]
    dst.one({"op": "add_range", "t": T, "start": b"", "end": None, "st": IMPORTING,
             "s": high})
    dst.put(b"k", b"recreated", client=B, cseq=1, floor=1)  # a write on the target
    # the retry reaches the target before the sessions: it waits
    waits = dst.delete(b"k", client=A, cseq=2, floor=1, retry=True)
    assert code(waits) == "unavailable"
    assert dst.sm.get(T, b"k")[0] == b"recreated"
    # a first attempt is not held back
    assert code(dst.put(b"n", b"1", client=A, cseq=3, floor=1)) is None
    items, more = src.sm.export_sessions(None)
    assert not more and [it[0] for it in items] == [A]
    assert dst.one({"op": "import_sessions", "t": T, "start": b"", "end": None,
                    "items": items, "done": True}) == {"imported": 1}
    assert dst.sm.sessions_copied(T, b"")
    again = dst.delete(b"k", client=A, cseq=2, floor=1, retry=True)
    assert again == {**first, "dup": True}
    assert dst.sm.get(T, b"k")[0] == b"recreated"
    assert dst.put(b"n", b"1", client=A, cseq=3, floor=1, retry=True)["dup"] is True
    assert dst.put(b"k", b"recreated", client=B, cseq=1, floor=1, retry=True)["dup"] is True
    # merging again changes nothing; finishing clears the flag with the mark
    before = dst.sm.content_hash()
    dst.sm.apply([(dst.sm.applied_index + 1, encode_command({
        "op": "import_sessions", "t": T, "start": b"", "end": None, "items": items,
        "done": True, "s": dst.sm.last_seq}))])
    assert dst.sm.content_hash() == before
    dst.one({"op": "finish_import", "t": T, "start": b"", "end": None})
    assert dst.sm.mark(T, b"") is None and not dst.sm.sessions_copied(T, b"")


def test_merging_sessions_unions_results_and_takes_the_higher_mark() -> None:
    s, d = Group(), Group()
    s.table()
    d.table()
    s.put(b"a", b"1", client=A, cseq=1, floor=1)
    s.put(b"a", b"2", client=A, cseq=2, floor=1)
    d.put(b"a", b"3", client=A, cseq=4, floor=2)  # d: mark 3 (a new session at 4)
    items, _ = s.sm.export_sessions(None)
    d.one({"op": "import_sessions", "t": T, "start": b"", "end": None, "items": items,
           "done": False})
    assert d.results(A) == [1, 2, 4]
    assert d.put(b"a", b"x", client=A, cseq=2, floor=2, retry=True)["dup"] is True
    assert code(d.put(b"a", b"x", client=A, cseq=3, floor=2, retry=True)) == "session_expired"
    (merged,) = d.sm.export_sessions(None)[0]
    assert merged[1:3] == [3, 4]  # the higher mark, the higher top


def test_export_pages_cover_every_session_once() -> None:
    g = Group()
    g.table()
    clients = [bytes([i]) * 16 for i in range(1, 8)]
    for c in clients:
        g.put(b"k", b"v", client=c, cseq=1, floor=1)
    seen, after = [], None
    while True:
        items, more = g.sm.export_sessions(after, 3)
        seen += [it[0] for it in items]
        if not more:
            break
        after = items[-1][0]
    assert seen == sorted(clients)


def test_malformed_session_fields_are_invalid_not_a_crash(g: Group) -> None:
    for bad in ({"ci": b"short", "cn": 1}, {"ci": A, "cn": 0}, {"ci": A},
                {"ci": A, "cn": 1, "cr": 1}, {"ci": A, "cn": 1, "cf": -1}):
        assert code(g.one({"op": "put", "t": T, "k": b"k", "v": b"v", "s": None, "c": None,
                           **bad})) == "invalid_argument", bad
    for items in ([[A, 0, 0, ZERO]], [[A, 0, 1, ZERO, [[1, b"\x01"]]]],
                  [[A, 0, 1, ZERO, [[2, sessions.encode_result({"seq": ZERO})]]]]):
        assert code(g.one({"op": "import_sessions", "t": T, "start": b"", "end": None,
                           "items": items, "s": None})) == "invalid_argument"
    for bad in ({"ci": b"short"}, {"ci": A, "cr": 1}, {"ci": A, "cf": -1}):
        results = g.one({"op": "batch", "t": T, "s": g.seq(), **bad, "items": [
            ["put", b"k", b"v", None, sequencer.make(BASE_NS, 1, 1), 1],
            ["put", b"j", b"v", None, sequencer.make(BASE_NS, 2, 1), 2]]})["results"]
        assert [code(r) for r in results] == ["invalid_argument"] * 2, bad
    assert g.sm.session_count == 0 and g.sm.get(T, b"k") is None


# -- the property ----------------------------------------------------------------------------

writes = st.lists(st.tuples(st.sampled_from([A, B]), st.sampled_from(["put", "del", "create"]),
                            st.sampled_from([b"a", b"b", b"c"]), st.binary(max_size=2),
                            st.integers(0, 3)), min_size=1, max_size=25)


@settings(max_examples=200, deadline=None)
@given(log=writes, dups=st.lists(st.tuples(st.integers(0, 24), st.integers(0, 60)),
                                 max_size=15),
       results_max=st.sampled_from([2, 10_000]), cut=st.integers(1, 8))
def test_duplicated_writes_leave_the_data_of_the_log_without_them(
        log: list[Any], dups: list[tuple[int, int]], results_max: int, cut: int) -> None:
    """Each write gets its client's next cseq (and a floor some way below it); copies of
    writes are inserted anywhere, before or after the original (a delayed first attempt, a
    retry). With sessions, the log gives the same data as the log of each (client, cseq)'s
    first occurrence alone, without sessions; every copy answers the first result or
    ``session_expired``, with results forgotten at once (a bound of 2) or not. (Sessions are
    not dropped here: see ``sessions.py`` on what a dropped session cannot protect.)"""
    cseqs = {A: 0, B: 0}
    entries: list[tuple[bytes, int, int, str, bytes, bytes]] = []
    for client, op, key, value, lag in log:
        cseqs[client] += 1
        n = cseqs[client]
        entries.append((client, n, max(0, n - lag), op, key, value))
    full = list(entries)
    for which, where in dups:
        full.insert(min(where, len(full)), entries[which % len(entries)])
    g = Group()
    seqs = [g.seq() for _ in full]  # one seq per position, shared by both runs
    seen: dict[tuple[bytes, int], int] = {}
    first_of: list[bool] = []
    for client, n, *_ in full:
        first_of.append((client, n) not in seen)
        seen.setdefault((client, n), len(first_of) - 1)

    def command(i: int, with_session: bool) -> dict[str, Any]:
        client, n, floor, op, key, value = full[i]
        cmd: dict[str, Any] = {"op": "del" if op == "del" else "put", "t": T, "k": key,
                               "v": value, "s": seqs[i], "c": ZERO if op == "create" else None}
        if with_session:
            cmd.update(sessions.command_fields(client, n, floor, not first_of[i]))
        return cmd

    def run(cmds: list[dict[str, Any]]) -> tuple[StateMachine, list[dict[str, Any]]]:
        sm = open_memory()
        payloads = [encode_command({"op": "add_range", "t": T, "start": b"", "end": None,
                                    "s": ZERO})] + [encode_command(c) for c in cmds]
        out = []
        for lo in range(0, len(payloads), cut):
            out += sm.apply([(lo + i + 1, p) for i, p in enumerate(payloads[lo:lo + cut])])
        return sm, out[1:]

    saved = sessions.RESULTS_PER_CLIENT_MAX
    sessions.RESULTS_PER_CLIENT_MAX = results_max
    try:
        with_dups, answers = run([command(i, True) for i in range(len(full))])
    finally:
        sessions.RESULTS_PER_CLIENT_MAX = saved
    oracle, expected = run([command(i, False) for i in range(len(full)) if first_of[i]])
    assert (with_dups.scan_versions(T, b"", None, None, 100, 1 << 20)
            == oracle.scan_versions(T, b"", None, None, 100, 1 << 20))
    firsts = iter(expected)
    first_answer: dict[tuple[bytes, int], dict[str, Any]] = {}
    for i, answer in enumerate(answers):
        key = (full[i][0], full[i][1])
        if first_of[i]:
            first_answer[key] = next(firsts)
            assert answer == first_answer[key], (i, answer)
        else:
            assert (code(answer) == "session_expired"
                    or {k: v for k, v in answer.items() if k != "dup"} == first_answer[key]), \
                (i, answer, first_answer[key])


def test_expiry_skips_its_scan_only_when_nothing_is_due() -> None:
    """The expiry shortcut (a lower bound on every session's latest write, held in memory) only
    saves reads: a replica reopened every few entries (the bound forgotten) drops exactly the
    same sessions as one that kept it, over hours of seq time with clients coming and going."""
    rng = random.Random(11)
    clock = Group()  # (only for its seqs)
    clients = [bytes([i]) * 16 for i in range(1, 30)]
    cseqs = dict.fromkeys(clients, 0)
    cmds: list[dict[str, Any]] = [{"op": "add_range", "t": T, "start": b"", "end": None,
                                   "s": clock.seq()}]
    for _ in range(400):
        client = rng.choice(clients[:rng.randrange(1, len(clients))])
        cseqs[client] += 1
        at = clock.ns + rng.choice([10**6, 10**9, 60 * 10**9, HOUR_NS // 3])
        cmds.append({"op": "put", "t": T, "k": b"k%d" % rng.randrange(20), "v": b"v",
                     "s": clock.seq(at), "c": None,
                     **sessions.command_fields(client, cseqs[client],
                                               max(1, cseqs[client] - 1), False)})
    payloads = [encode_command(c) for c in cmds]
    kept = open_memory()
    backend = MemoryBackend()
    reopened = StateMachine(backend)
    counts = []
    for i, payload in enumerate(payloads, start=1):
        kept.apply([(i, payload)])
        if i % 3 == 0:
            reopened = StateMachine(backend)
        reopened.apply([(i, payload)])
        assert reopened.session_count == kept.session_count, i
        counts.append(kept.session_count)
    assert kept.content_hash() == reopened.content_hash()
    assert max(counts) > min(counts[50:])  # sessions did expire along the way


def test_merging_a_session_with_a_higher_top_below_the_results_bound_does_not_crash() -> None:
    """Found by chaos (seed 77): the source's session had the higher top, both tops below
    RESULTS_PER_CLIENT_MAX; the merge asked to forget results below a negative cseq and every
    replica of the target crashed applying the import."""
    s, d = Group(), Group()
    s.table()
    d.table()
    d.put(b"a", b"1", client=A, cseq=3, floor=3)
    for n in range(5, 9):
        s.put(b"a", b"%d" % n, client=A, cseq=n, floor=5)
    items, _ = s.sm.export_sessions(None)
    assert d.one({"op": "import_sessions", "t": T, "start": b"", "end": None, "items": items,
                  "done": True}) == {"imported": 1}
    assert d.put(b"a", b"x", client=A, cseq=7, floor=5, retry=True)["dup"] is True


def test_a_long_move_of_the_mark_scans_only_the_results_it_forgets() -> None:
    """The results a client's floor forgot before lie below its mark as deletions; a later
    forget must start past them (from the old mark), not step over all of them each time."""
    scans: list[tuple[bytes, bytes]] = []

    class Recording(MemoryBackend):
        def iterate(self, lo: bytes, hi: bytes) -> Iterator[tuple[bytes, bytes]]:
            scans.append((lo, hi))
            return super().iterate(lo, hi)

    g = Group(StateMachine(Recording()))
    g.table()
    n = sessions.FORGET_BY_KEY_MAX * 3
    for cseq in range(1, n + 1):
        g.put(b"k%d" % cseq, b"v", client=A, cseq=cseq, floor=1)
    scans.clear()
    g.put(b"last", b"v", client=A, cseq=n + 1, floor=n + 1)  # forgets 1..n: a scan
    forget = [s for s in scans if s[0].startswith(sessions.RESULT + A)]
    assert forget == [(sessions.result_key(A, 1), sessions.result_key(A, n + 1))]
    assert g.results(A) == [n + 1]
    for cseq in range(n + 2, 2 * n + 2):
        g.put(b"k%d" % cseq, b"v", client=A, cseq=cseq, floor=n + 1)
    scans.clear()
    g.put(b"again", b"v", client=A, cseq=2 * n + 2, floor=2 * n + 2)
    forget = [s for s in scans if s[0].startswith(sessions.RESULT + A)]
    assert forget == [(sessions.result_key(A, n + 1), sessions.result_key(A, 2 * n + 2))]
    assert g.results(A) == [2 * n + 2]
