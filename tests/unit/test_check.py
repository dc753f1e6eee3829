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

from rangekv.check import main as cmain
from rangekv.check import wgl
from rangekv.check.models import MODELS
from rangekv.check.parse import BadHistory, parse_edn, read_history

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


def test_rangekv_agrees_with_the_simulators_checker() -> None:
    from rangekv.sim import linearizable as simlin

    rng = random.Random(7)
    for _ in range(60):
        h = _random_rangekv_history(rng)
        ops = read_history(h)
        v, _ = wgl.check(MODELS["rangekv"], ops)
        sim_ops = [o.arg for o in ops]
        sim_ok, _ = simlin.check(sim_ops)
        assert (v == wgl.OK) == sim_ok, h


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
