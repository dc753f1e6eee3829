"""``rangekv check-history``: is a recorded history linearizable?

    rangekv check-history --model register|kv|rangekv [--time-limit-s S] [--states-max N]
                          [--format auto|jepsen|edn|jsonl] [--quiet] FILE

Exit status: 0 linearizable; 1 not linearizable (the key / partition is printed, with the
longest linearizable prefix found and the operations none of which could go next after it);
2 could not decide within the bounds (``--time-limit-s`` per partition, default 10;
``--states-max`` memo entries per partition, default 4,000,000), or bad input. "Could not
decide" is never a pass. ``-`` reads standard input.

Formats (detected from the first line): Jepsen's log (``INFO  jepsen.util - 3\\t:ok\\t:read\\t4``),
EDN maps one a line (``{:process 0, :type :ok, :f :get, :key "1", :value "x"}``), or JSON lines.

The JSON-lines format (one object a line; events in real-time order, or give every event a
numeric ``time`` and they are ordered by it, a call before a return at the same instant):

    {"process": 1, "type": "invoke", "f": "put", "key": "k", "value": "v1"}
    {"process": 1, "type": "ok", "f": "put", "key": "k", "result": {"seq": "0000...01"}}

* ``process``: any JSON value; one operation open per process at a time.
* ``type``: ``invoke``; then ``ok`` (the ``result`` is known), ``fail`` (it did not take
  effect: dropped) or ``info`` (unknown: may take effect at any time after the call, or never;
  an invocation left open at the end of the file is the same).
* ``f``, ``key`` (on the invoke), ``value`` (the input), ``expect``, ``result`` (on ``ok``).
* ``time``: optional, a number (e.g. monotonic seconds).

Per model (``f`` and fields):

* ``register``: ``read`` (``result`` = the value, null = never written), ``write`` (``value``),
  ``cas`` (``value`` [old, new], or ``expect`` old + ``value`` new).
* ``kv``: ``get`` (``result`` a string, "" or null = absent), ``put`` / ``append`` (``value``;
  append concatenates).
* ``rangekv`` (the model of :mod:`rangekv.check.keys`, the one the simulator checks with; seqs
  are hex strings of the 16-byte seq, or non-negative integers):
  ``put`` value -> ``{"seq": S}``;
  ``cas`` value, expect S0 -> ``{"seq": S}`` or ``{"failed": true}`` (the key's seq was not S0);
  ``delete`` -> ``{"deleted": true|false, "seq": S|null}``;
  ``get`` -> ``{"value": V|null, "seq": S|null}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from rangekv.check import wgl
from rangekv.check.models import MODELS
from rangekv.check.parse import BadHistory, read_history

EXIT_OK, EXIT_ILLEGAL, EXIT_UNDECIDED = 0, 1, 2
_SHOW = 12  # operations shown per list in an explanation


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rangekv check-history",
        description="Check that a recorded history is linearizable (exit 0 yes, 1 no, "
                    "2 undecided or bad input).")
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--time-limit-s", type=float, default=10.0, metavar="S",
                   help="search time per partition (default 10)")
    p.add_argument("--states-max", type=int, default=4_000_000, metavar="N",
                   help="memo entries per partition (default 4000000)")
    p.add_argument("--format", default="auto", choices=["auto", "jepsen", "edn", "jsonl"])
    p.add_argument("--quiet", "-q", action="store_true", help="print only the verdict")
    p.add_argument("file", metavar="FILE")
    return p


def _key(key: object) -> str:
    return "the history (a single register)" if key is None else f"key {key!r}"


def _ops_list(model: object, ops: list, *, tail: bool) -> str:
    describe = model.describe  # type: ignore[attr-defined]
    if len(ops) <= _SHOW:
        shown, more = ops, ""
    elif tail:
        shown, more = ops[-_SHOW:], f"    ... {len(ops) - _SHOW} earlier operations\n"
    else:
        shown, more = ops[:_SHOW], ""
    text = more + "".join(f"    {describe(o)}\n" for o in shown)
    if not tail and len(ops) > _SHOW:
        text += f"    ... and {len(ops) - _SHOW} more\n"
    return text


def run(argv: Sequence[str]) -> tuple[int, str]:
    p = build_parser()
    try:
        args = p.parse_args(list(argv))
    except SystemExit as e:
        return (EXIT_UNDECIDED if e.code else EXIT_OK), ""
    if args.time_limit_s <= 0 or args.states_max <= 0:
        return EXIT_UNDECIDED, "error: --time-limit-s and --states-max must be positive\n"
    model = MODELS[args.model]
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as fh:
                text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        return EXIT_UNDECIDED, f"error: cannot read {args.file}: {e}\n"
    t0 = time.monotonic()
    try:
        ops = read_history(text, args.format)
        verdict, results = wgl.check(model, ops, time_limit_s=args.time_limit_s,
                                     states_max=args.states_max)
    except BadHistory as e:
        return EXIT_UNDECIDED, f"error: bad history {args.file}: {e}\n"
    elapsed = time.monotonic() - t0
    summary = (f"{len(ops)} operations, {len(results)} partition(s) checked, "
               f"{sum(r.states for r in results)} states, {elapsed:.2f} s")
    if verdict == wgl.OK:
        return EXIT_OK, f"linearizable ({summary})\n"
    if verdict == wgl.UNKNOWN:
        out = "could not decide (this is not a pass):\n"
        for r in results:
            if r.verdict == wgl.UNKNOWN:
                out += f"  {_key(r.key)}: {r.why}\n"
        return EXIT_UNDECIDED, out + f"({summary})\n"
    bad = next(r for r in results if r.verdict == wgl.ILLEGAL)
    out = f"not linearizable: {_key(bad.key)} ({bad.ops} operations)\n"
    if args.quiet:
        return EXIT_ILLEGAL, out
    if bad.why:  # decided by the model's own procedure, which says why
        out += (f"why: {bad.why}\nlinearizable prefix in the order the reads force: "
                f"{len(bad.prefix)} operation(s), leaving the state "
                f"{model.describe_state(bad.prefix_state)}\n")
    else:
        out += (f"longest linearizable prefix: {len(bad.prefix)} operation(s), leaving the "
                f"state {model.describe_state(bad.prefix_state)}\n")
    out += _ops_list(model, bad.prefix, tail=True)
    out += "after it, none of these can go next (each is illegal there, or leads nowhere):\n"
    out += _ops_list(model, bad.stuck, tail=False)
    return EXIT_ILLEGAL, out + f"({summary})\n"


def main(argv: Sequence[str] | None = None) -> int:
    code, out = run(sys.argv[1:] if argv is None else argv)
    if out:
        (sys.stdout if code != EXIT_UNDECIDED or not out.startswith("error") else
         sys.stderr).write(out)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
