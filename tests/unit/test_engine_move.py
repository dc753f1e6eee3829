"""Moving a range between two state machines (docs/internals.md, "Moving a range"): fence on
the source, import with merge-by-seq on the target while it takes writes, finish, drop; plus a
hypothesis comparison against a single-dict oracle of the whole history."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv import errors
from rangekv.node.ownership import check_current
from rangekv.storage.engine import FENCED, IMPORTING, StateMachine, encode_command, open_memory

T = 7
ZERO = bytes(16)


class M:
    """A state machine fed consecutive entries, issuing seqs as a leader would."""

    def __init__(self) -> None:
        self.sm: StateMachine = open_memory()

    @property
    def engine(self) -> StateMachine:  # (as a node's replica has it, for node/ownership.py)
        return self.sm

    def one(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if "s" in cmd and cmd["s"] is None:
            last = int.from_bytes(self.sm.last_seq, "big")
            cmd["s"] = (last + 1).to_bytes(16, "big")
        elif "s" in cmd:
            # the leader's rule: at least the proposed seq, above the last one
            cmd["s"] = max(cmd["s"], (int.from_bytes(self.sm.last_seq, "big") + 1)
                           .to_bytes(16, "big"))
        (result,) = self.sm.apply([(self.sm.applied_index + 1, encode_command(cmd))])
        return result

    def put(self, key: bytes, value: bytes, **kw: Any) -> dict[str, Any]:
        return self.one({"op": "put", "t": T, "k": key, "v": value, "s": None, "c": None, **kw})

    def delete(self, key: bytes, **kw: Any) -> dict[str, Any]:
        return self.one({"op": "del", "t": T, "k": key, "s": None, "c": None, **kw})


def export(src: M, start: bytes, end: bytes | None, page: int) -> list[list[Any]]:
    """Pages of [key, seq, tombstone, value] as the mover copies them."""
    pages, after = [], None
    while True:
        items, more = src.sm.scan_versions(T, start, end, after, page, 1 << 20)
        if items:
            pages.append([[k, s, tomb, v] for k, v, s, tomb in items])
            after = items[-1][0]
        if not more:
            return pages


def setup_pair() -> tuple[M, M]:
    src, dst = M(), M()
    src.one({"op": "add_range", "t": T, "start": b"", "end": None, "s": None})
    return src, dst


def test_fence_refuses_writes_keeps_reads_and_hands_over_the_highest_seq() -> None:
    src, _ = setup_pair()
    src.one({"op": "split_range", "t": T, "at": b"m", "s": None})
    src.put(b"a", b"1")
    put = src.put(b"x", b"2")
    fenced = src.one({"op": "fence_range", "t": T, "start": b"m", "end": None, "s": None})
    high = fenced["seq"]
    assert high > put["seq"]
    assert src.sm.mark(T, b"m") == (FENCED, high)
    refused = src.put(b"y", b"3")
    assert refused["error"]["code"] == "range_not_here"
    assert refused["error"]["moving"] is True
    assert src.put(b"b", b"4")["seq"]  # the range staying here still takes writes
    assert src.sm.get(T, b"x") == (b"2", put["seq"])
    assert not src.sm.writable(T, b"x") and src.sm.writable(T, b"a")
    # fencing again answers the same H (a resumed move)
    again = src.one({"op": "fence_range", "t": T, "start": b"m", "end": None, "s": None})
    assert again == {"seq": high}
    # a span that is not exactly one range is refused
    bad = src.one({"op": "fence_range", "t": T, "start": b"m", "end": b"z", "s": None})
    assert bad["error"]["code"] == "range_not_here"
    src.one({"op": "unfence_range", "t": T, "start": b"m", "end": None, "s": None})
    assert src.sm.mark(T, b"m") is None and src.put(b"y", b"5")["seq"]


def test_a_fenced_source_serves_reads_only_as_the_source() -> None:
    """A read routed by a map older than the switch must not read the fenced source as if it
    were the live copy: the target may already hold a newer acknowledged write (the stale
    read the simulator found). Read as the source (the rm asked the target first), it is
    served; the range staying here, and an unfenced one, are served as before."""
    src, _ = setup_pair()
    src.one({"op": "split_range", "t": T, "at": b"m", "s": None})
    src.put(b"x", b"1")
    check_current(src, T, b"x", as_source=False)  # not fenced: served
    src.one({"op": "fence_range", "t": T, "start": b"m", "end": None, "s": None})
    assert src.sm.fenced(T, b"x") and not src.sm.fenced(T, b"a")
    try:
        check_current(src, T, b"x", as_source=False)
    except errors.RangeNotHere as err:
        assert err.details["moving"] is True
    else:
        raise AssertionError("a fenced range served a read that did not come as the source's")
    check_current(src, T, b"x", as_source=True)
    check_current(src, T, b"a", as_source=False)  # the range staying here
    src.one({"op": "unfence_range", "t": T, "start": b"m", "end": None, "s": None})
    check_current(src, T, b"x", as_source=False)


def test_import_merges_by_seq_and_target_writes_win() -> None:
    src, dst = setup_pair()
    for i in range(10):
        src.put(b"k%d" % i, b"old")
    src.delete(b"k3")
    high = src.one({"op": "fence_range", "t": T, "start": b"", "end": None, "s": None})["seq"]
    dst.one({"op": "add_range", "t": T, "start": b"", "end": None, "st": IMPORTING, "s": high})
    assert dst.sm.mark(T, b"") == (IMPORTING, dst.sm.last_seq)
    assert dst.sm.last_seq >= high
    new = dst.put(b"k1", b"new")  # an unconditional put needs no base
    assert new["seq"] > high
    # a delete of a key not copied yet needs the source's version
    refused = dst.delete(b"k2")
    assert refused["error"]["code"] == "unavailable"
    base = src.sm.get_version(T, b"k2")
    assert base is not None
    done = dst.delete(b"k2", b=list(base))
    assert done["deleted"] is True
    # the source had nothing for k99: nil base, nothing to delete
    assert dst.delete(b"k99", b=None) == {"deleted": False, "seq": ZERO}
    # the source deleted k3: a create-only put succeeds with that tombstone as base
    assert "seq" in dst.put(b"k3", b"again", c=ZERO, b=list(src.sm.get_version(T, b"k3")))
    for page in export(src, b"", None, 3):
        dst.one({"op": "import", "t": T, "items": page, "s": None})
    dst.one({"op": "finish_import", "t": T, "start": b"", "end": None, "s": None})
    assert dst.sm.mark(T, b"") is None
    assert dst.sm.get(T, b"k1") == (b"new", new["seq"])
    assert dst.sm.get(T, b"k2") is None
    assert dst.sm.get(T, b"k3") is not None and dst.sm.get(T, b"k3")[0] == b"again"
    assert dst.sm.get(T, b"k5")[0] == b"old"
    # an import after the finish writes nothing
    assert dst.one({"op": "import", "t": T, "items": export(src, b"", None, 100)[0],
                    "s": None}) == {"imported": 0}
    src.one({"op": "drop_range", "t": T, "start": b"", "end": None, "s": None})
    assert not src.sm.has_table(T) and src.sm.scan_versions(T, b"", None, None, 10, 1 << 20) \
        == ([], False)


def test_drop_range_refuses_an_active_range_and_deletes_only_its_span() -> None:
    src, _ = setup_pair()
    src.one({"op": "split_range", "t": T, "at": b"m", "s": None})
    src.put(b"a", b"1")
    src.put(b"q", b"2")
    refused = src.one({"op": "drop_range", "t": T, "start": b"m", "end": None, "s": None})
    assert refused["error"]["code"] == "invalid_argument"
    src.one({"op": "fence_range", "t": T, "start": b"m", "end": None, "s": None})
    assert src.one({"op": "drop_range", "t": T, "start": b"m", "end": None, "s": None}) == {}
    assert src.sm.get(T, b"q") is None and src.sm.get(T, b"a") is not None
    assert src.sm.ranges() == [(T, b"", b"m")]
    assert src.one({"op": "drop_range", "t": T, "start": b"m", "end": None, "s": None}) == {}


def test_marks_survive_a_restart_and_count_in_the_content_hash() -> None:
    a, b = M(), M()
    for m in (a, b):
        m.one({"op": "add_range", "t": T, "start": b"", "end": None, "s": None})
        m.put(b"k", b"v")
    before = a.sm.content_hash()
    assert before == b.sm.content_hash()
    a.one({"op": "fence_range", "t": T, "start": b"", "end": None, "s": None})
    b.one({"op": "noop", "s": None})
    assert a.sm.content_hash() != b.sm.content_hash()


# -- the whole protocol against an oracle ------------------------------------------------------

keys = st.sampled_from([b"a", b"b", b"c", b"d", b"e"])
op = st.one_of(
    st.tuples(st.just("put"), keys, st.binary(max_size=3)),
    st.tuples(st.just("del"), keys, st.just(b"")),
    st.tuples(st.just("cas"), keys, st.binary(max_size=3)),
    st.tuples(st.just("create"), keys, st.binary(max_size=3)),
)


@settings(max_examples=150, deadline=None)
@given(before=st.lists(op, max_size=15), during=st.lists(op, max_size=15),
       page=st.integers(1, 4), order=st.randoms(use_true_random=False))
def test_a_move_under_writes_equals_one_history(before: list[Any], during: list[Any], page: int,
                                               order: Any) -> None:
    """Writes before the move land on the source, writes during it on the target (a delete or
    conditional put carrying the source's version of its key, as an rm sends it), import pages
    interleave with them in any order: the target ends up with exactly what one state machine
    given the whole history holds, and every write answers as it would there."""
    src, dst = setup_pair()
    oracle = M()
    oracle.one({"op": "add_range", "t": T, "start": b"", "end": None, "s": None})

    def run(target: M, kind: str, key: bytes, value: bytes, base: Any) -> Any:
        extra = {} if base is False else {"b": base}
        if kind == "put":
            return target.put(key, value, **extra)
        if kind == "del":
            return target.delete(key, **extra)
        live = target.sm.get(T, key) if target is not dst else None
        if kind == "create":
            return target.put(key, value, c=ZERO, **extra)
        return ("cas", live)

    def strip(result: Any) -> Any:
        if isinstance(result, dict) and "error" in result:
            return result["error"]["code"]
        return {k: v for k, v in result.items() if k != "seq"}

    for kind, key, value in before:
        if kind == "cas":
            continue
        assert strip(run(src, kind, key, value, False)) == strip(run(oracle, kind, key, value,
                                                                      False))
    high = src.one({"op": "fence_range", "t": T, "start": b"", "end": None, "s": None})["seq"]
    dst.one({"op": "add_range", "t": T, "start": b"", "end": None, "st": IMPORTING, "s": high})
    steps: list[Any] = [("w", w) for w in during] + [("i", p) for p in export(src, b"", None,
                                                                               page)]
    order.shuffle(steps)
    for kind, what in steps:
        if kind == "i":
            dst.one({"op": "import", "t": T, "items": what, "s": None})
            continue
        wkind, key, value = what
        if wkind == "cas":
            # If-Match the version a client reads just before, as an rm reads during a move:
            # the target's record if it has one, else the source's
            live = oracle.sm.get(T, key)
            read = dst.sm.get_version(T, key) or src.sm.get_version(T, key)
            assert (live is None) == (read is None or read[1]), (key, live, read)
            if live is None or read is None:
                continue
            base_v = src.sm.get_version(T, key)
            got = dst.put(key, value, c=read[0], b=None if base_v is None else list(base_v))
            want = oracle.put(key, value, c=live[1])
        else:
            base_v = src.sm.get_version(T, key)
            base = None if base_v is None else list(base_v)
            got = run(dst, wkind, key, value, base if wkind != "put" else False)
            want = run(oracle, wkind, key, value, False)
        assert strip(got) == strip(want), (what, got, want)
    dst.one({"op": "finish_import", "t": T, "start": b"", "end": None, "s": None})
    for key in (b"a", b"b", b"c", b"d", b"e"):
        got_v, want_v = dst.sm.get(T, key), oracle.sm.get(T, key)
        assert (got_v is None) == (want_v is None), key
        if got_v is not None and want_v is not None:
            assert got_v[0] == want_v[0], key


def test_merge_range_joins_neighbours_idempotently() -> None:
    src, _ = setup_pair()
    src.one({"op": "split_range", "t": T, "at": b"m", "s": None})
    src.put(b"a", b"1")
    src.put(b"x", b"2")
    assert src.one({"op": "merge_range", "t": T, "at": b"m", "s": None}) == {}
    assert src.sm.ranges() == [(T, b"", None)]
    assert src.one({"op": "merge_range", "t": T, "at": b"m", "s": None}) == {}
    assert src.sm.get(T, b"x") is not None and src.put(b"y", b"3")["seq"]
    src.one({"op": "split_range", "t": T, "at": b"m", "s": None})
    src.one({"op": "fence_range", "t": T, "start": b"m", "end": None, "s": None})
    refused = src.one({"op": "merge_range", "t": T, "at": b"m", "s": None})
    assert refused["error"]["code"] == "unavailable"
