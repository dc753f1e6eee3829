"""The linearizability checker (``rangekv check-history``): test data verdicts, hand-made
histories for each model, generated histories, and the bounds."""

from __future__ import annotations

import heapq
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv.check import gen, kvdistinct, wgl
from rangekv.check import main as cmain
from rangekv.check.models import MODELS
from rangekv.check.parse import BadHistory, parse_edn, read_history

# The whole collection of recorded histories (40 Jepsen logs of etcd, 4 kv files), where the
# machine has it beside the checkout; every clone has the copies in tests/data/histories.
DATA = Path(__file__).resolve().parents[3] / "shared" / "testdata"
if not DATA.is_dir():  # the checkout may live elsewhere
    DATA = Path("/work/shared/testdata")

_VERDICTS: dict[str, str] = {}
if (DATA / "jepsen-etcd" / "VERDICTS.txt").exists():
    for _line in (DATA / "jepsen-etcd" / "VERDICTS.txt").read_text().splitlines():
        if _line.strip():
            _name, _verdict = _line.split()
            _VERDICTS[_name] = _verdict

needs_data = pytest.mark.skipif(not _VERDICTS, reason="shared test data not present")


def run_cli(tmp_path: Path, model: str, text: str, *extra: str) -> tuple[int, str]:
    f = tmp_path / "h.txt"
    f.write_text(text)
    return cmain.run(["--model", model, *extra, str(f)])


def verdict(model: str, text: str, **kw: Any) -> str:
    v, _ = wgl.check(MODELS[model], read_history(text), **kw)
    return v


# ---------------------------------------------------------------------------------------------
# the shared test data


@needs_data
@pytest.mark.parametrize("name", sorted(_VERDICTS) or ["none"])
def test_jepsen_etcd_verdicts(name: str) -> None:
    t0 = time.monotonic()
    code, out = cmain.run(["--model", "register", str(DATA / "jepsen-etcd" / name)])
    expected = {"linearizable": 0, "not-linearizable": 1}[_VERDICTS[name]]
    assert code == expected, out
    assert time.monotonic() - t0 < 10


@needs_data
@pytest.mark.parametrize("name,expected", [
    ("c01-ok.txt", 0), ("c01-bad.txt", 1), ("c10-ok.txt", 0), ("c10-bad.txt", 1)])
def test_kv_verdicts(name: str, expected: int) -> None:
    code, out = cmain.run(["--model", "kv", str(DATA / "kv" / name)])
    assert code == expected, out
    if expected == 1:
        assert "not linearizable: key" in out and "none of these can go next" in out


# ---------------------------------------------------------------------------------------------
# the same histories whatever separates their fields (tests/data/histories: copies that every
# clone has, see its README)

HISTORIES = Path(__file__).resolve().parents[1] / "data" / "histories"
HISTORY_VERDICTS = {  # file -> (model, exit code)
    "etcd_000.log": ("register", 1), "etcd_005.log": ("register", 0),
    "c01-ok.txt": ("kv", 0), "c01-bad.txt": ("kv", 1),
}
_JEPSEN_PREFIX = "INFO  jepsen.util - "


def _jepsen_fields(sep: str) -> Any:
    """Rewrite Jepsen lines with ``sep`` between their fields (the value keeps its own
    spaces)."""
    def rewrite(text: str) -> str:
        out = []
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\n")
            if body.startswith(_JEPSEN_PREFIX):
                fields = body[len(_JEPSEN_PREFIX):].split("\t", 3)
                body = _JEPSEN_PREFIX + sep.join(fields)
            out.append(body + line[len(line.rstrip("\n")):])
        return "".join(out)
    return rewrite


def _edn_fields(sep: str) -> Any:
    """Rewrite EDN map lines with ``sep`` between their forms (strings are left alone: the
    kv files' values hold no comma)."""
    return lambda text: text.replace(", :", sep + ":")


WHITESPACE_VARIANTS: dict[str, tuple[Any, Any]] = {  # name -> (Jepsen rewrite, EDN rewrite)
    "one space": (_jepsen_fields(" "), _edn_fields(" ")),
    "several spaces": (_jepsen_fields("    "), _edn_fields("   ")),
    "tabs": (_jepsen_fields("\t\t"), _edn_fields("\t")),
    "commas": (_jepsen_fields(", "), _edn_fields(",,")),
    "mixed": (_jepsen_fields(" \t, "), _edn_fields(" ,\t ")),
    "trailing whitespace": (lambda t: t.replace("\n", " \t\n"),
                            lambda t: t.replace("\n", " ,\t\n")),
    "crlf": (lambda t: t.replace("\n", "\r\n"), lambda t: t.replace("\n", "\r\n")),
    "byte order mark": (lambda t: "\ufeff" + t, lambda t: "\ufeff" + t),
    "timestamped layout": (  # Jepsen's logback layout: time, level, thread, logger
        lambda t: t.replace(_JEPSEN_PREFIX, "2020-03-01 17:02:09,925{GMT}\tINFO\t"
                            "[jepsen worker 1] jepsen.util: "),
        lambda t: t),
}


@pytest.mark.parametrize("variant", sorted(WHITESPACE_VARIANTS))
@pytest.mark.parametrize("name", sorted(HISTORY_VERDICTS))
def test_fields_may_be_separated_by_any_whitespace(tmp_path: Path, name: str,
                                                   variant: str) -> None:
    model, expected = HISTORY_VERDICTS[name]
    text = (HISTORIES / name).read_text()
    as_recorded = read_history(text)
    jepsen, edn_rewrite = WHITESPACE_VARIANTS[variant]
    changed = (jepsen if name.endswith(".log") else edn_rewrite)(text)
    assert changed != text or variant == "timestamped layout"
    ops = read_history(changed)
    assert [(o.process, o.f, o.key, o.value, o.output, o.known) for o in ops] == [
        (o.process, o.f, o.key, o.value, o.output, o.known) for o in as_recorded]
    f = tmp_path / name
    f.write_bytes(changed.encode())  # as is: CRLF stays CRLF
    code, out = cmain.run(["--model", model, str(f)])
    assert code == expected, out


def test_history_copies_match_the_shared_test_data() -> None:
    """The copies in tests/data give the verdicts the shared data's VERDICTS.txt gives."""
    for name, (model, expected) in HISTORY_VERDICTS.items():
        if name in _VERDICTS:
            assert expected == {"linearizable": 0, "not-linearizable": 1}[_VERDICTS[name]]
        shared = DATA / ("jepsen-etcd" if model == "register" else "kv") / name
        if shared.exists():
            assert shared.read_bytes() == (HISTORIES / name).read_bytes()


def test_jepsen_fields_may_not_run_together() -> None:
    """Whitespace is needed between fields: a line whose fields touch is not an event."""
    with pytest.raises(BadHistory, match="no events"):
        read_history("INFO  jepsen.util - 0:invoke:read nil\n")


# ---------------------------------------------------------------------------------------------
# register, Jepsen log format


def jlog(*events: str) -> str:
    lines = []
    for e in events:
        p, typ, f, v = e.split()
        lines.append(f"INFO  jepsen.util - {p}\t:{typ}\t:{f}\t{v.replace('_', ' ')}")
    return "\n".join(lines) + "\n"


def test_register_sequential_ok_and_stale_read() -> None:
    good = jlog("0 invoke write 1", "0 ok write 1", "1 invoke read nil", "1 ok read 1",
                "0 invoke cas [1_2]", "0 ok cas [1_2]", "1 invoke read nil", "1 ok read 2")
    assert verdict("register", good) == wgl.OK
    stale = good.replace("1\t:ok\t:read\t2", "1\t:ok\t:read\t1")
    assert verdict("register", stale) == wgl.ILLEGAL


def test_register_read_nil_means_never_written() -> None:
    assert verdict("register", jlog("0 invoke read nil", "0 ok read nil")) == wgl.OK
    h = jlog("0 invoke write 1", "0 ok write 1", "1 invoke read nil", "1 ok read nil")
    assert verdict("register", h) == wgl.ILLEGAL


def test_register_concurrent_reads_may_see_either_order() -> None:
    # write 1 and write 2 overlap: readers after both may see either, but all the same one
    h = jlog("0 invoke write 1", "1 invoke write 2", "0 ok write 1", "1 ok write 2",
             "2 invoke read nil", "2 ok read 1")
    assert verdict("register", h) == wgl.OK
    h2 = h + jlog("3 invoke read nil", "3 ok read 2")
    assert verdict("register", h2) == wgl.ILLEGAL
    # but a read concurrent with a write may see the old or the new value
    h3 = jlog("0 invoke write 1", "0 ok write 1", "0 invoke write 2", "1 invoke read nil",
              "1 ok read 1", "2 invoke read nil", "2 ok read 2", "0 ok write 2")
    assert verdict("register", h3) == wgl.OK
    h4 = jlog("0 invoke write 1", "0 ok write 1", "0 invoke write 2", "1 invoke read nil",
              "1 ok read 2", "1 invoke read nil", "1 ok read 1", "0 ok write 2")
    assert verdict("register", h4) == wgl.ILLEGAL  # new then old: not atomic


def test_register_info_may_take_effect_late_or_never() -> None:
    # the timed-out write of 5 shows up long after it timed out: allowed
    h = jlog("0 invoke write 5", "0 info write :timed-out", "1 invoke write 1", "1 ok write 1",
             "2 invoke read nil", "2 ok read 1", "2 invoke read nil", "2 ok read 5")
    assert verdict("register", h) == wgl.OK
    # ... or never
    h2 = jlog("0 invoke write 5", "0 info write :timed-out", "1 invoke read nil", "1 ok read nil")
    assert verdict("register", h2) == wgl.OK
    # a process that never completes is the same as :info
    h3 = jlog("0 invoke write 5", "1 invoke read nil", "1 ok read 5")
    assert verdict("register", h3) == wgl.OK
    # but not before it was invoked
    h4 = jlog("1 invoke read nil", "1 ok read 5", "0 invoke write 5", "0 info write :timed-out")
    assert verdict("register", h4) == wgl.ILLEGAL
    # and at most once: 5, then 1, then 5 again needs two writes of 5
    h5 = jlog("0 invoke write 5", "0 info write :timed-out", "1 invoke write 1",
              "2 invoke read nil", "2 ok read 5", "1 ok write 1", "2 invoke read nil",
              "2 ok read 1", "2 invoke read nil", "2 ok read 5")
    assert verdict("register", h5) == wgl.ILLEGAL


def test_register_fail_did_not_happen() -> None:
    h = jlog("0 invoke write 1", "0 ok write 1", "1 invoke cas [1_7]", "1 fail cas [1_7]",
             "2 invoke read nil", "2 ok read 1")
    assert verdict("register", h) == wgl.OK
    h2 = h.replace("2\t:ok\t:read\t1", "2\t:ok\t:read\t7")
    assert verdict("register", h2) == wgl.ILLEGAL


def test_register_cas_that_ignores_expected_is_caught() -> None:
    h = jlog("0 invoke write 1", "0 ok write 1", "1 invoke cas [3_7]", "1 ok cas [3_7]")
    assert verdict("register", h) == wgl.ILLEGAL


def test_explanation_names_the_prefix_and_the_stuck_ops(tmp_path: Path) -> None:
    h = jlog("0 invoke write 1", "0 ok write 1", "1 invoke read nil", "1 ok read 2")
    code, out = run_cli(tmp_path, "register", h)
    assert code == 1
    assert "not linearizable: the history" in out
    assert "longest linearizable prefix: 1 operation(s), leaving the state 1" in out
    assert "line 1: process 0 write 1" in out
    assert "line 3: process 1 read -> 2" in out.split("none of these can go next")[1]


# ---------------------------------------------------------------------------------------------
# kv, EDN format


def edn(*events: tuple[int, str, str, str, str | None]) -> str:
    out = []
    for p, typ, f, k, v in events:
        val = "nil" if v is None else json.dumps(v)
        out.append(f'{{:process {p}, :type :{typ}, :f :{f}, :key "{k}", :value {val}}}')
    return "\n".join(out) + "\n"


def test_kv_append_concatenates_per_key() -> None:
    h = edn((0, "invoke", "append", "a", "x"), (0, "ok", "append", "a", "x"),
            (1, "invoke", "append", "b", "q"), (1, "ok", "append", "b", "q"),
            (0, "invoke", "append", "a", "y"), (1, "invoke", "get", "a", None),
            (0, "ok", "append", "a", "y"), (1, "ok", "get", "a", "xy"),
            (1, "invoke", "get", "c", None), (1, "ok", "get", "c", ""),
            (0, "invoke", "put", "b", "z"), (0, "ok", "put", "b", "z"),
            (0, "invoke", "append", "b", "w"), (0, "ok", "append", "b", "w"),
            (1, "invoke", "get", "b", None), (1, "ok", "get", "b", "zw"))
    assert verdict("kv", h) == wgl.OK
    _, results = wgl.check(MODELS["kv"], read_history(h))
    assert {r.key for r in results} == {"a", "b", "c"}  # partitioned by key


def test_kv_retried_append_applied_twice_is_caught() -> None:
    h = edn((0, "invoke", "append", "a", "x"), (0, "info", "append", "a", "x"),
            (1, "invoke", "append", "a", "x"), (1, "ok", "append", "a", "x"),
            (2, "invoke", "get", "a", None), (2, "ok", "get", "a", "x"))
    assert verdict("kv", h) == wgl.OK
    # "xx" is fine too: the timed-out one and the retry both applied
    assert verdict("kv", h.replace('"ok", :f :get, :key "a", :value "x"', "")
                   .replace(':type :ok, :f :get, :key "a", :value "x"}',
                            ':type :ok, :f :get, :key "a", :value "xx"}')) == wgl.OK
    h3 = edn((1, "invoke", "append", "a", "x"), (1, "ok", "append", "a", "x"),
             (2, "invoke", "get", "a", None), (2, "ok", "get", "a", "xx"))
    assert verdict("kv", h3) == wgl.ILLEGAL  # one acknowledged append, applied twice


def test_kv_lost_acknowledged_write_is_caught() -> None:
    h = edn((0, "invoke", "put", "k", "v1"), (0, "ok", "put", "k", "v1"),
            (1, "invoke", "get", "k", None), (1, "ok", "get", "k", ""))
    assert verdict("kv", h) == wgl.ILLEGAL
    # keys are independent: the same on another key does not hide it
    h2 = h + edn((1, "invoke", "get", "other", None), (1, "ok", "get", "other", ""))
    code_v, results = wgl.check(MODELS["kv"], read_history(h2), stop_at_first_illegal=False)
    assert code_v == wgl.ILLEGAL
    assert {r.key: r.verdict for r in results} == {"k": wgl.ILLEGAL, "other": wgl.OK}


# ---------------------------------------------------------------------------------------------
# rangekv, JSON lines


def jl(*events: dict[str, Any]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def inv(p: int, f: str, key: str = "k", **kw: Any) -> dict[str, Any]:
    return {"process": p, "type": "invoke", "f": f, "key": key, **kw}


def ok(p: int, f: str, result: Any, key: str = "k") -> dict[str, Any]:
    return {"process": p, "type": "ok", "f": f, "key": key, "result": result}


S1, S2, S3 = "01" * 16, "02" * 16, "03" * 16


def test_rangekv_put_get_cas_delete_ok() -> None:
    h = jl(inv(0, "put", value="a"), ok(0, "put", {"seq": S1}),
           inv(1, "get"), ok(1, "get", {"value": "a", "seq": S1}),
           inv(0, "cas", value="b", expect=S1), ok(0, "cas", {"seq": S2}),
           inv(1, "cas", value="c", expect=S1), ok(1, "cas", {"failed": True}),
           inv(1, "delete"), ok(1, "delete", {"deleted": True, "seq": S3}),
           inv(0, "get"), ok(0, "get", {"value": None, "seq": None}),
           inv(0, "delete"), ok(0, "delete", {"deleted": False, "seq": None}))
    assert verdict("rangekv", h) == wgl.OK


def test_rangekv_stale_follower_read_is_caught() -> None:
    h = jl(inv(0, "put", value="a"), ok(0, "put", {"seq": S1}),
           inv(0, "put", value="b"), ok(0, "put", {"seq": S2}),
           inv(1, "get"), ok(1, "get", {"value": "a", "seq": S1}))
    assert verdict("rangekv", h) == wgl.ILLEGAL


def test_rangekv_cas_ignoring_expected_is_caught() -> None:
    h = jl(inv(0, "put", value="a"), ok(0, "put", {"seq": S2}),
           inv(1, "cas", value="c", expect=S1), ok(1, "cas", {"seq": S3}))
    assert verdict("rangekv", h) == wgl.ILLEGAL


def test_rangekv_seqs_must_increase_and_unknown_put_may_land() -> None:
    h = jl(inv(0, "put", value="a"), ok(0, "put", {"seq": S2}),
           inv(0, "put", value="b"), ok(0, "put", {"seq": S1}))
    assert verdict("rangekv", h) == wgl.ILLEGAL
    h2 = jl(inv(0, "put", value="a"), {"process": 0, "type": "info", "f": "put", "key": "k"},
            inv(1, "get"), ok(1, "get", {"value": "a", "seq": S3}))
    assert verdict("rangekv", h2) == wgl.OK


def test_rangekv_model_agrees_with_a_naive_search() -> None:
    """The one search (wgl) under the rangekv model, from a recorded history and from the
    simulator's in-memory ops (check_ops), against trying every order that real time allows."""
    from rangekv.check.history import check_ops

    rng = random.Random(7)
    verdicts = set()
    for _ in range(200):
        h = _random_rangekv_history(rng)
        ops = read_history(h)
        v, _ = wgl.check(MODELS["rangekv"], ops)
        sim_ops = [o.arg for o in ops]
        naive = _naive_linearizable(sim_ops)
        assert (v == wgl.OK) == naive, h
        assert check_ops(sim_ops)[0] == naive, h
        verdicts.add(naive)
    assert verdicts == {True, False}


def _naive_linearizable(ops: list[Any]) -> bool:
    """Every key on its own; an order of its operations that real time allows (an operation goes
    next only if invoked before every other one left returned), in which each step is legal;
    an operation of unknown outcome may also never happen. No memo, no pruning: small only."""
    from rangekv.check import keys

    def search(left: list[Any], state: Any) -> bool:
        if all(not o.known for o in left):
            return True
        for o in left:
            rest = [p for p in left if p is not o]
            if any(p.known and p.complete_t < o.invoke_t for p in rest):
                continue
            if not o.known and search(rest, state):  # never happens
                return True
            if any(search(rest, new) for new in keys.steps(state, o)):
                return True
        return False

    by_key: dict[str, list[Any]] = {}
    for o in ops:
        by_key.setdefault(o.key, []).append(o)
    return all(search(k_ops, (None, b"")) for k_ops in by_key.values())


def _random_rangekv_history(rng: random.Random) -> str:
    """Small histories, sometimes wrong, over two keys and three processes."""
    events = []
    seq = 0
    state: dict[str, tuple[str | None, int]] = {}
    open_: dict[int, dict[str, Any]] = {}
    for _ in range(rng.randint(2, 9)):
        p = rng.randrange(3)
        if p in open_:
            e = open_.pop(p)
            k = e["key"]
            val, s = state.get(k, (None, 0))
            if rng.random() < 0.15:
                events.append({"process": p, "type": "info", "f": e["f"], "key": k})
                continue
            if e["f"] == "put":
                seq += 1
                state[k] = (e["value"], seq)
                res: dict[str, Any] = {"seq": seq}
            elif e["f"] == "get":
                res = {"value": val, "seq": s if val is not None else None}
                if rng.random() < 0.2:
                    res = {"value": "a", "seq": 1}
            else:
                existed = val is not None
                seq += 1
                state[k] = (None, seq)
                res = {"deleted": existed, "seq": seq if existed else None}
            events.append(ok(p, e["f"], res, key=k))
        else:
            f = rng.choice(["put", "get", "delete"])
            e = inv(p, f, key=rng.choice("xy"))
            if f == "put":
                e["value"] = rng.choice("ab")
            open_[p] = e
            events.append(e)
    return jl(*events)


# ---------------------------------------------------------------------------------------------
# generated register histories: linearizable by construction, then broken


@st.composite
def register_histories(draw: st.DrawFn) -> tuple[str, list[int]]:
    """A concurrent history made by applying each operation at a point inside its interval.
    Returns the Jepsen log and the line indexes of the ok reads."""
    procs = draw(st.integers(1, 4))
    state: int | None = None
    open_ops: dict[int, list[Any]] = {}  # proc -> [f, arg, applied, result]
    lines: list[str] = []
    reads: list[int] = []
    for _ in range(draw(st.integers(1, 40))):
        p = draw(st.integers(0, procs - 1))
        op = open_ops.get(p)
        if op is None:
            f = draw(st.sampled_from(["read", "write", "cas"]))
            arg: Any = None if f == "read" else draw(st.integers(0, 3)) if f == "write" else \
                [draw(st.integers(0, 3)), draw(st.integers(0, 3))]
            open_ops[p] = [f, arg, False, None]
            shown = "nil" if arg is None else (f"[{arg[0]} {arg[1]}]" if f == "cas" else arg)
            lines.append(f"INFO  jepsen.util - {p}\t:invoke\t:{f}\t{shown}")
        elif not op[2]:
            f, arg = op[0], op[1]  # its linearization point
            if f == "read":
                op[3] = state
            elif f == "write":
                state = arg
            else:
                op[3] = state == arg[0]
                if op[3]:
                    state = arg[1]
            op[2] = True
        else:
            f, arg, _, res = open_ops.pop(p)
            if f == "read":
                reads.append(len(lines))
                lines.append(f"INFO  jepsen.util - {p}\t:ok\t:read\t{'nil' if res is None else res}")
            elif draw(st.booleans()) and f != "read":
                lines.append(f"INFO  jepsen.util - {p}\t:info\t:{f}\t:timed-out")
            elif f == "write":
                lines.append(f"INFO  jepsen.util - {p}\t:ok\t:write\t{arg}")
            else:
                typ = "ok" if res else "fail"
                lines.append(f"INFO  jepsen.util - {p}\t:{typ}\t:cas\t[{arg[0]} {arg[1]}]")
    return "\n".join(lines) + "\n", reads


@settings(max_examples=150)
@given(register_histories(), st.data())
def test_register_generated_histories(hist: tuple[str, list[int]], data: st.DataObject) -> None:
    text, reads = hist
    assert verdict("register", text) == wgl.OK
    if reads:
        i = data.draw(st.sampled_from(reads))
        lines = text.splitlines()
        lines[i] = lines[i].rsplit("\t", 1)[0] + "\t99"  # never written
        assert verdict("register", "\n".join(lines) + "\n") == wgl.ILLEGAL


# ---------------------------------------------------------------------------------------------
# bounds and bad input


def _pathological(n: int) -> str:
    # n overlapping writes of distinct values whose outcome is unknown, and reads that rule out
    # every order: the search has to try all subsets
    ev = [f"{p} invoke write {p + 10}" for p in range(n)]
    ev += [f"{p} info write :timed-out" for p in range(n)]
    ev += ["99 invoke read nil", "99 ok read 7"]
    return jlog(*ev)


def test_states_bound_gives_undecided_never_a_pass(tmp_path: Path) -> None:
    text = _pathological(14)
    code, out = run_cli(tmp_path, "register", text, "--states-max", "100")
    assert code == 2
    assert "could not decide" in out and "memory bound of 100 states" in out
    assert verdict("register", _pathological(8)) == wgl.ILLEGAL


def test_time_bound_gives_undecided(tmp_path: Path) -> None:
    code, out = run_cli(tmp_path, "register", _pathological(22), "--time-limit-s", "0.2")
    assert code == 2 and "time limit" in out


def test_bad_input(tmp_path: Path) -> None:
    code, out = run_cli(tmp_path, "register", "hello world\n")
    assert code == 2 and "error: bad history" in out
    code, out = run_cli(tmp_path, "kv", '{:process 0, :type :ok, :f :get, :key "a", :value ""}\n')
    assert code == 2 and "no open invocation" in out
    code, out = run_cli(tmp_path, "register", jlog("0 invoke append 1"))
    assert code == 2 and "no :append" in out
    code, out = cmain.run(["--model", "kv", str(tmp_path / "missing")])
    assert code == 2 and "cannot read" in out
    code, _ = cmain.run(["--model", "nope", "x"])
    assert code == 2
    with pytest.raises(BadHistory):
        parse_edn("{:a 1")


def test_main_prints_and_returns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "h.log"
    f.write_text(jlog("0 invoke write 1", "0 ok write 1"))
    assert cmain.main(["--model", "register", str(f)]) == 0
    assert capsys.readouterr().out.startswith("linearizable")


def _kv_history(seed: int, clients: int, keys: int, nops: int, info: float, lat: float) -> str:
    """A linearizable kv history by simulation: each operation takes effect at a random point
    between its call and its return (exponential delays); some time out (:info)."""
    rng = random.Random(seed)
    state: dict[str, str] = {}
    queue: list[tuple[float, int, str, int, Any]] = []
    tick = 0
    for p in range(clients):
        heapq.heappush(queue, (rng.expovariate(1), tick, "invoke", p, None))
        tick += 1
    out: list[str] = []
    count, next_pid = 0, clients
    while queue:
        t, _, kind, p, op = heapq.heappop(queue)
        if kind == "invoke":
            if count >= nops:
                continue
            count += 1
            k = str(rng.randrange(keys))
            f = rng.choice(["get", "append", "append", "put"])
            v = None if f == "get" else f"x {p} {count} y"
            op = [f, k, v, None]
            out.append(edn((p, "invoke", f, k, v)))
            kind2, delay = "apply", rng.expovariate(1 / lat)
        elif kind == "apply":
            f, k, v, _ = op
            cur = state.get(k, "")
            if f == "get":
                op[3] = cur
            else:
                state[k] = v if f == "put" else cur + v
            kind2, delay = "ret", rng.expovariate(1 / lat)
        else:
            f, k, v, res = op
            if f != "get" and rng.random() < info:
                out.append(edn((p, "info", f, k, v)))
                p, next_pid = next_pid, next_pid + 1  # Jepsen: a new process after :info
            else:
                out.append(edn((p, "ok", f, k, res if f == "get" else v)))
            kind2, delay, op = "invoke", rng.expovariate(2), None
        heapq.heappush(queue, (t + delay, tick, kind2, p, op))
        tick += 1
    return "".join(out)


def test_larger_history_fifty_clients_is_fast() -> None:
    """50 clients over 10 keys, 4000 operations, 1% of the updates timing out."""
    text = _kv_history(5, 50, 10, 4000, 0.01, 0.25)
    t0 = time.monotonic()
    assert verdict("kv", text) == wgl.OK
    assert time.monotonic() - t0 < 20
    # and a lost update in it is found
    lines = text.splitlines(keepends=True)
    i = next(j for j, line in enumerate(lines) if ":type :ok, :f :get" in line
             and ':value ""' not in line)
    lines[i] = lines[i].rsplit(":value", 1)[0] + ':value "lost"}\n'
    assert verdict("kv", "".join(lines)) == wgl.ILLEGAL


# ---------------------------------------------------------------------------------------------
# kv against a brute-force oracle: small histories of puts, appends and gets, some of unknown
# outcome, linearizable or not, with distinct values (the model's own decision) or colliding
# ones (the search)


def brute_force(model: str, ops: list[Any]) -> bool:
    """Is the history linearizable? By trying every order of the operations (each after all
    those that returned before it was called), each of unknown outcome taking effect once or
    never; the whole history at once (no partitions). Memoized on (done, state) only."""
    m = MODELS[model]
    for o in ops:
        m.prepare(o)
    ops = [o for o in ops if o.known or o.f not in m.pure]
    n = len(ops)
    keys = sorted({o.key for o in ops}, key=str)
    init = tuple(m.init(k) for k in keys)
    need = sum(1 << i for i, o in enumerate(ops) if o.known)
    seen: set[tuple[int, Any]] = set()

    def go(done: int, state: tuple[Any, ...]) -> bool:
        if done & need == need:
            return True
        if (done, state) in seen:
            return False
        seen.add((done, state))
        owed = min(ops[i].ret for i in range(n) if not done >> i & 1 and ops[i].known)
        for i, o in enumerate(ops):
            if done >> i & 1 or o.call > owed:
                continue
            j = keys.index(o.key)
            for s in m.step(state[j], o):
                if go(done | 1 << i, state[:j] + (s,) + state[j + 1:]):
                    return True
        return False

    return go(0, init)


@st.composite
def kv_small_histories(draw: st.DrawFn) -> str:
    """A history made by a store that applies each operation at one point of its interval (or,
    for a timed-out one, maybe later or never), whose reads are then sometimes tampered with."""
    procs = draw(st.integers(1, 4))
    nkeys = draw(st.integers(1, 2))
    distinct = draw(st.booleans())  # distinct values, or a small alphabet that collides
    store: dict[str, str] = {}
    open_ops: dict[int, list[Any]] = {}  # proc -> [f, key, value, applied, result, outcome]
    late: list[list[Any]] = []
    events: list[tuple[int, str, str, str, str | None]] = []
    next_proc = procs
    alive = list(range(procs))
    count = 0
    for _ in range(draw(st.integers(1, 45))):
        p = draw(st.sampled_from(alive))
        op = open_ops.get(p)
        action = draw(st.integers(0, 9))
        if late and action == 0:
            f, k, v = late.pop(0)[:3]  # a timed-out operation takes effect now
            store[k] = v if f == "put" else store.get(k, "") + v
        elif op is None:
            count += 1
            f = draw(st.sampled_from(["get", "get", "append", "append", "put"]))
            k = str(draw(st.integers(0, nkeys - 1)))
            if f == "get":
                v = None
            elif distinct:
                v = f"<{count}>"
            else:
                v = draw(st.sampled_from(["a", "b", "ab", "ba"]))
            outcome = draw(st.sampled_from(["ok", "ok", "ok", "info", "fail"]))
            open_ops[p] = [f, k, v, False, None, outcome]
            events.append((p, "invoke", f, k, v))
        elif not op[3] and not (op[5] == "fail" and op[0] != "get"):
            f, k, v = op[:3]
            if f == "get":
                op[4] = store.get(k, "")
            elif op[5] == "info" and draw(st.booleans()):
                late.append(op)  # after its timeout, or never
            else:
                store[k] = v if f == "put" else store.get(k, "") + v
            op[3] = True
        else:
            f, k, v, applied, res, outcome = open_ops.pop(p)
            if outcome == "ok" and f == "get" and not applied:
                open_ops[p] = [f, k, v, applied, res, outcome]
                continue
            if outcome == "info" or (outcome == "fail" and f == "get"):
                events.append((p, "info", f, k, v))
                alive.remove(p)
                alive.append(next_proc)
                next_proc += 1
            elif outcome == "fail":
                events.append((p, "fail", f, k, v))
            elif f == "get":
                if draw(st.integers(0, 2)) == 0:  # tamper
                    res = draw(st.sampled_from(
                        [res[:-1], res[1:], res + "a", res[::-1], "", res + res[-3:]]))
                events.append((p, "ok", f, k, res))
            elif not applied:
                open_ops[p] = [f, k, v, applied, res, outcome]
                continue
            else:
                events.append((p, "ok", f, k, v))
    return edn(*events) if events else edn((0, "invoke", "get", "0", None))


def valid_linearization(model: str, ops: list[Any], order: list[Any]) -> bool:
    """Is ``order`` a linearization of the partition ``ops``: every operation of known outcome
    once, others at most once, in an order that respects real time, each step legal?"""
    m = MODELS[model]
    ids = [id(o) for o in order]
    if len(set(ids)) != len(ids) or not set(ids) <= {id(o) for o in ops}:
        return False
    if not {id(o) for o in ops if o.known} <= set(ids):
        return False
    mx = -1.0
    state = m.init(order[0].key if order else None)
    for o in order:
        if o.ret < mx:
            return False
        mx = max(mx, o.call)
        nxt = m.step(state, o)
        if len(nxt) != 1:
            return False
        state = nxt[0]
    return True


@settings(max_examples=600, deadline=None)
@given(kv_small_histories())
def test_kv_agrees_with_brute_force(text: str) -> None:
    expected = brute_force("kv", read_history(text))
    got = verdict("kv", text)
    assert got == (wgl.OK if expected else wgl.ILLEGAL), text
    # and when the distinct-values procedure answers yes, its linearization is one
    kv = MODELS["kv"]
    for key, part in wgl.partition(kv, read_history(text)).items():
        part = kv.prune([o for o in part if o.known or o.f != "get"])
        d = kvdistinct.decide(part, time.monotonic() + 10)
        if d is not None and d.linearizable:
            assert valid_linearization("kv", part, d.order), (key, text)


@settings(max_examples=300, deadline=None)
@given(register_histories(), st.data())
def test_register_agrees_with_brute_force(hist: tuple[str, list[int]], data: st.DataObject,
                                          ) -> None:
    """Generated register histories, some reads changed to any value (so linearizable or
    not): the search (with its pruning of interchangeable unknown outcomes) agrees with
    trying every order."""
    text, reads = hist
    lines = text.splitlines()
    for i in reads:
        if data.draw(st.integers(0, 3)) == 0:
            lines[i] = lines[i].rsplit("\t", 1)[0] + "\t" + data.draw(
                st.sampled_from(["nil", "0", "1", "2", "3"]))
    text = "\n".join(lines) + "\n"
    expected = brute_force("register", read_history(text))
    assert verdict("register", text) == (wgl.OK if expected else wgl.ILLEGAL), text


# ---------------------------------------------------------------------------------------------
# dense kv histories (50 clients on one key, many timeouts): the distinct-values procedure


@pytest.mark.parametrize("info", [0.0, 0.1, 0.3])
def test_dense_append_history_is_fast(info: float) -> None:
    text = gen.kv_history(3, clients=50, nops=4000, keys=1, info=info)
    ops = read_history(text)
    t0 = time.monotonic()
    v, results = wgl.check(MODELS["kv"], ops)
    assert v == wgl.OK
    assert time.monotonic() - t0 < 3  # about 0.05 s; the search alone could not decide
    assert results[0].states == 0  # decided without searching


@pytest.mark.parametrize("fault", sorted(gen.FAULTS))
@pytest.mark.parametrize("info", [0.0, 0.3])
def test_dense_faulty_histories_are_rejected(tmp_path: Path, fault: str, info: float) -> None:
    text = gen.kv_history(4, clients=50, nops=2000, keys=1, info=info, fault=fault)
    t0 = time.monotonic()
    code, out = run_cli(tmp_path, "kv", text)
    assert code == 1, out  # never 0 (a wrong pass) nor 2 (undecided)
    assert time.monotonic() - t0 < 5
    assert "why: " in out and "none of these can go next" in out


@pytest.mark.parametrize("fault", [None, "phantom", "double", "reorder"])
def test_dense_histories_with_puts(fault: str | None) -> None:
    """Puts split the key's history into epochs (see kvdistinct); these faults stay certain
    with puts (a value nobody wrote, a write seen twice, two appends seen in both orders)."""
    text = gen.kv_history(5, clients=50, nops=3000, keys=2, info=0.2, puts=0.1, fault=fault)
    t0 = time.monotonic()
    v, results = wgl.check(MODELS["kv"], read_history(text))
    assert v == (wgl.OK if fault is None else wgl.ILLEGAL)
    assert time.monotonic() - t0 < 3
    assert all(r.states == 0 for r in results)


def test_generator_is_reproducible_and_linearizable_when_small() -> None:
    a = gen.kv_history(9, clients=4, nops=12, info=0.3, puts=0.2)
    assert a == gen.kv_history(9, clients=4, nops=12, info=0.3, puts=0.2)
    assert a != gen.kv_history(10, clients=4, nops=12, info=0.3, puts=0.2)
    for seed in range(40):
        text = gen.kv_history(seed, clients=4, nops=10, info=0.3, puts=0.2)
        assert brute_force("kv", read_history(text)), text
    for fault in gen.FAULTS:  # the faults are certain, checked the slow way
        text = gen.kv_history(1, clients=3, nops=14, info=0.2, fault=fault, fault_at=0.3)
        assert not brute_force("kv", read_history(text)), (fault, text)


def kv_ops(*spec: tuple[int, str, str, str | None, str]) -> str:
    """(process, f, value, result, how) -> EDN: how is "ok", "info", or "open" (no completion);
    the events are invoke and completion, one operation after the other unless ``how`` is
    "<" (invoke only; completed by a later ("ok>") entry for the same process)."""
    ev: list[tuple[int, str, str, str, str | None]] = []
    for p, f, v, res, how in spec:
        if how in ("ok", "info", "open", "<"):
            ev.append((p, "invoke", f, "k", v))
        if how in ("ok", "ok>"):
            ev.append((p, "ok", f, "k", res if f == "get" else v))
        elif how == "info":
            ev.append((p, "info", f, "k", v))
    return edn(*ev)


def checked(model: str, text: str) -> str:
    """The verdict, asserted to agree with the brute-force oracle."""
    v = verdict(model, text)
    assert v == (wgl.OK if brute_force(model, read_history(text)) else wgl.ILLEGAL), text
    return v


def test_kv_distinct_values_epochs() -> None:
    # two puts, each read with appends after it; the epochs can go in one order only
    h = kv_ops((0, "put", "P1", None, "ok"), (1, "append", "a", None, "ok"),
               (2, "get", None, "P1a", "ok"), (0, "put", "P2", None, "ok"),
               (2, "get", None, "P2", "ok"), (1, "append", "b", None, "ok"),
               (2, "get", None, "P2b", "ok"))
    assert checked("kv", h) == wgl.OK
    # a get reading P1 after P2's epoch was seen, with no time overlap: not linearizable
    bad = h + kv_ops((3, "get", None, "P1a", "ok"))
    assert checked("kv", bad) == wgl.ILLEGAL
    # an acknowledged put nobody read must fit where no get sees it: here it cannot
    h3 = kv_ops((0, "append", "a", None, "ok"), (1, "put", "Z", None, "ok"),
                (2, "get", None, "a", "ok"))
    assert checked("kv", h3) == wgl.ILLEGAL
    # ... but concurrent with the get it can go after it
    h4 = kv_ops((0, "append", "a", None, "ok"), (1, "put", "Z", None, "<"),
                (2, "get", None, "a", "ok"), (1, "put", "Z", None, "ok>"))
    assert checked("kv", h4) == wgl.OK


def test_kv_distinct_values_split_must_extend() -> None:
    # appends "a", "bc" and "ab": "ab" splits only as [ab], "abc" only as [a, bc]; with no put
    # the second state must extend the first, so no order works
    h = kv_ops((0, "append", "a", None, "<"), (1, "append", "bc", None, "<"),
               (2, "append", "ab", None, "<"), (0, "append", "a", None, "ok>"),
               (1, "append", "bc", None, "ok>"), (2, "append", "ab", None, "ok>"),
               (3, "get", None, "ab", "ok"), (3, "get", None, "abc", "ok"))
    assert checked("kv", h) == wgl.ILLEGAL
    assert brute_force("kv", read_history(h)) is False
    # with colliding splits ("a"+"b" or "ab"), the search decides
    h2 = kv_ops((0, "append", "a", None, "<"), (1, "append", "b", None, "<"),
                (2, "append", "ab", None, "info"), (0, "append", "a", None, "ok>"),
                (1, "append", "b", None, "ok>"), (3, "get", None, "ab", "ok"))
    ops = read_history(h2)
    for o in ops:
        MODELS["kv"].prepare(o)
    assert kvdistinct.decide(ops, time.monotonic() + 1) is None
    assert checked("kv", h2) == wgl.OK


def test_kv_prune_keeps_what_could_matter() -> None:
    # an unknown put of "" is in every value read: kept, and it explains the empty read
    h = kv_ops((0, "append", "a", None, "ok"), (1, "put", "", None, "info"),
               (2, "get", None, "", "ok"))
    assert checked("kv", h) == wgl.OK
    # an unknown put never read is left out; it could not explain this read anyway
    h2 = kv_ops((0, "append", "a", None, "ok"), (1, "put", "zz", None, "info"),
                (2, "get", None, "", "ok"))
    assert checked("kv", h2) == wgl.ILLEGAL
    ops = read_history(h2)
    for o in ops:
        MODELS["kv"].prepare(o)
    assert [o.value for o in MODELS["kv"].prune(ops)] == ["a", None]
    # an unknown append read is kept (it took effect)
    h3 = kv_ops((1, "append", "b", None, "info"), (0, "append", "a", None, "ok"),
                (2, "get", None, "ba", "ok"))
    assert checked("kv", h3) == wgl.OK


def test_interchangeable_unknown_outcomes_are_tried_once() -> None:
    # 40 timed-out writes of the same value and a read nobody wrote: 2^40 subsets before
    ev = [f"{p} invoke write 5" for p in range(40)] + [f"{p} info write :timed-out"
                                                       for p in range(40)]
    ev += ["99 invoke read nil", "99 ok read 7"]
    t0 = time.monotonic()
    assert verdict("register", jlog(*ev)) == wgl.ILLEGAL
    ev[-1] = "99 ok read 5"
    assert verdict("register", jlog(*ev)) == wgl.OK
    assert time.monotonic() - t0 < 2


def test_edn_strings_keep_their_commas_and_escapes() -> None:
    assert parse_edn('{:value "a, b", :k [1, 2]}') == {"value": "a, b", "k": [1, 2]}
    assert parse_edn(r'{:value "q\"u\\", :x nil}') == {"value": 'q"u\\', "x": None}
    long = "x 1 2 y" * 20000
    assert parse_edn('{:value "' + long + '"}') == {"value": long}
    with pytest.raises(BadHistory):
        parse_edn('{:value "open}')
    with pytest.raises(BadHistory):
        parse_edn("{:a 1} trailing")


@pytest.mark.parametrize("fault", [None, "phantom"])
def test_dense_history_with_retried_appends_is_searched_fast(fault: str | None) -> None:
    """Retried appends repeat values: the distinct-values procedure steps aside and the search
    decides, with the kv guard (the state must be a prefix of what the next get read)."""
    text = gen.kv_history(6, clients=50, nops=3000, keys=1, info=0.3, retries=0.7, fault=fault)
    ops = read_history(text)
    assert len({o.value for o in ops if o.f == "append"}) < sum(o.f == "append" for o in ops)
    t0 = time.monotonic()
    v, results = wgl.check(MODELS["kv"], ops)
    assert v == (wgl.OK if fault is None else wgl.ILLEGAL)
    assert time.monotonic() - t0 < 5
    assert results[0].states > 0  # searched


def test_kv_guard_with_repeated_values_and_puts() -> None:
    # two appends of "a" (so the search decides), the second concurrent with a put of "P"
    h = kv_ops((0, "append", "a", None, "ok"), (1, "put", "P", None, "<"),
               (2, "append", "a", None, "<"), (1, "put", "P", None, "ok>"),
               (2, "append", "a", None, "ok>"), (3, "get", None, "Pa", "ok"))
    assert checked("kv", h) == wgl.OK  # the put, then the second append
    # only the second append can follow the put
    assert checked("kv", h + kv_ops((3, "get", None, "Paa", "ok"))) == wgl.ILLEGAL
    # while the put may still go before the first get, the state need not be a prefix of
    # what it read: "a" then "P" then "a"
    h2 = kv_ops((0, "append", "a", None, "<"), (1, "put", "P", None, "<"),
                (2, "append", "a", None, "<"), (0, "append", "a", None, "ok>"),
                (1, "put", "P", None, "ok>"), (2, "append", "a", None, "ok>"),
                (3, "get", None, "Pa", "ok"))
    assert checked("kv", h2) == wgl.OK
