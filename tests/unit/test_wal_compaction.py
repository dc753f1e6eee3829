"""The WAL's base: drop_prefix, reset, the ``base`` file, and crashes at every step of them.

A crash is simulated by making the k-th mutating call of wal.py (create, write, rename, unlink,
truncate, fsync) raise, for every k until the operation completes: the files are then exactly
what a process killed at that point leaves, and the log must open as the old log or the new one
(for ``reset``: the new one, or a prefix of the old one under the old base). A second test checks
the order of those calls in a clean run (every rename or unlink is made durable before the next
change), which is what makes "what a killed process leaves" also what a power loss leaves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rangekv.storage import wal as wal_module
from rangekv.storage.wal import (
    BASE_NAME,
    WAL,
    WALCorrupt,
    decode_base,
    encode_base,
    encode_record,
    segment_name,
)

SEGMENT_BYTES = 300  # a few records per segment, so that segments roll and get dropped


def payload(index: int, size: int = 30) -> bytes:
    return (f"e{index}-".encode() * size)[:size]


def records(lo: int, hi: int, epoch: int = 1) -> list[tuple[int, int, bytes]]:
    return [(epoch, i, payload(i)) for i in range(lo, hi + 1)]


def open_wal(path: Path) -> WAL:
    w = WAL.open(path, segment_bytes_max=SEGMENT_BYTES)
    w.sync()
    return w


def filled(path: Path, count: int, epoch: int = 1) -> WAL:
    w = open_wal(path)
    w.append(records(1, count, epoch))
    w.sync()
    return w


def segment_firsts(path: Path) -> list[int]:
    return sorted(int(p.name[:20]) for p in path.glob("*.wal"))


def state(w: WAL) -> tuple[int, int, list[tuple[int, int, bytes]]]:
    """(base index, base epoch, entries) of an open log."""
    base = w.first_index - 1
    return base, w.epoch_at(base), w.entries(w.first_index, w.last_index + 1)


# -- drop_prefix ------------------------------------------------------------------------------


def test_drop_prefix_moves_the_base_and_removes_whole_segments(tmp_path: Path) -> None:
    w = filled(tmp_path / "wal", 40, epoch=3)
    before = segment_firsts(tmp_path / "wal")
    assert len(before) > 4
    w.drop_prefix(25)
    assert (w.first_index, w.base_index, w.last_index) == (26, 25, 40)
    assert w.epoch_at(25) == 3 and w.epoch_at(26) == 3
    with pytest.raises(IndexError):
        w.epoch_at(24)
    with pytest.raises(AssertionError):
        w.entries(25, 27)
    assert w.entries(26, 41) == records(26, 40, 3)
    after = segment_firsts(tmp_path / "wal")
    # Every segment left holds an entry after the base; the first one holds the entry base + 1.
    assert after == [f for f in before if f >= after[0]]
    assert after[0] <= 26 and (len(after) == 1 or after[1] > 26)
    assert decode_base((tmp_path / "wal" / BASE_NAME).read_bytes()) == (25, 3)
    w.append(records(41, 45, 4))
    w.sync()
    w.close()
    w = open_wal(tmp_path / "wal")
    assert state(w) == (25, 3, records(26, 40, 3) + records(41, 45, 4))
    assert w.last_epoch == 4
    w.close()


def test_drop_prefix_of_everything_keeps_the_last_segment(tmp_path: Path) -> None:
    w = filled(tmp_path / "wal", 20, epoch=2)
    w.drop_prefix(20)
    assert (w.first_index, w.last_index, w.last_epoch) == (21, 20, 2)
    assert w.entries(21, 21) == []
    assert len(segment_firsts(tmp_path / "wal")) == 1
    w.close()
    w = open_wal(tmp_path / "wal")
    assert state(w) == (20, 2, [])
    w.append(records(21, 22, 5))
    w.sync()
    w.close()
    w = open_wal(tmp_path / "wal")
    assert state(w) == (20, 2, records(21, 22, 5))
    w.close()


def test_drop_prefix_refuses_what_is_not_durable(tmp_path: Path) -> None:
    w = filled(tmp_path / "wal", 10)
    w.append(records(11, 12))
    with pytest.raises(AssertionError):
        w.drop_prefix(11)  # written, not yet synced: a crash could lose the entry at the base
    w.sync()
    w.drop_prefix(11)
    with pytest.raises(AssertionError):
        w.drop_prefix(10)  # the base never goes back
    w.drop_prefix(11)  # the same base again: nothing to do
    w.close()


def test_truncate_after_a_drop_down_to_the_base(tmp_path: Path) -> None:
    w = filled(tmp_path / "wal", 30, epoch=1)
    w.append(records(31, 35, 2))
    w.sync()
    w.drop_prefix(30)
    w.truncate_suffix(31)
    assert (w.last_index, w.last_epoch) == (30, 1)
    with pytest.raises(AssertionError):
        w.truncate_suffix(30)  # below the first index: a compacted entry is committed
    w.append(records(31, 33, 4))
    w.sync()
    w.close()
    w = open_wal(tmp_path / "wal")
    assert state(w) == (30, 1, records(31, 33, 4))
    w.close()


def test_sync_failed_note_never_cuts_below_the_base(tmp_path: Path) -> None:
    w = filled(tmp_path / "wal", 30)
    w.drop_prefix(20)
    w.close()
    # A note from before the base was written (it can only be older): nothing at or below the
    # base is cut, only what follows it.
    (tmp_path / "wal" / wal_module.SYNC_FAILED_NAME).write_bytes(wal_module.encode_sync_failed(5))
    w = open_wal(tmp_path / "wal")
    assert state(w) == (20, 1, [])
    assert w.unsynced_entries_cut == 10
    w.close()


# -- reset ------------------------------------------------------------------------------------


def test_reset_empties_the_log_under_a_new_base(tmp_path: Path) -> None:
    w = filled(tmp_path / "wal", 30, epoch=2)
    w.drop_prefix(10)
    w.reset(500, 7)
    assert (w.first_index, w.last_index, w.last_epoch, w.epoch_at(500)) == (501, 500, 7, 7)
    assert segment_firsts(tmp_path / "wal") == [501]
    w.append(records(501, 503, 7))
    w.sync()
    w.close()
    w = open_wal(tmp_path / "wal")
    assert state(w) == (500, 7, records(501, 503, 7))
    w.reset(500, 7)  # idempotent as a retry after a crash: the same base, nothing after it
    assert state(w) == (500, 7, [])
    with pytest.raises(AssertionError):
        w.reset(499, 7)  # never below the base
    w.close()


def test_reset_below_the_last_index(tmp_path: Path) -> None:
    """A follower whose log diverged from the snapshot: everything goes, even entries above."""
    w = filled(tmp_path / "wal", 30, epoch=2)
    w.reset(12, 3)
    assert state(w) == (12, 3, [])
    w.append(records(13, 14, 3))
    w.sync()
    w.close()
    w = open_wal(tmp_path / "wal")
    assert state(w) == (12, 3, records(13, 14, 3))
    w.close()


# -- what open refuses ------------------------------------------------------------------------


def write_base(path: Path, index: int, epoch: int) -> None:
    (path / BASE_NAME).write_bytes(encode_base(index, epoch))


def test_base_file_round_trip_and_damage() -> None:
    assert decode_base(encode_base(12, 3)) == (12, 3)
    data = encode_base(12, 3)
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x01
        assert decode_base(bytes(damaged)) is None, i
    assert decode_base(data[:-1]) is None
    assert decode_base(b"") is None


def test_a_damaged_base_file_is_corruption(tmp_path: Path) -> None:
    filled(tmp_path / "wal", 10).close()
    (tmp_path / "wal" / BASE_NAME).write_bytes(encode_base(5, 1).replace(b" 5 ", b" 6 "))
    with pytest.raises(WALCorrupt, match="base file does not verify"):
        WAL.open(tmp_path / "wal")


def test_a_log_that_ends_before_its_base_is_corruption(tmp_path: Path) -> None:
    filled(tmp_path / "wal", 10).close()
    write_base(tmp_path / "wal", 11, 1)
    with pytest.raises(WALCorrupt, match="ends at 10, before its base 11"):
        WAL.open(tmp_path / "wal", segment_bytes_max=SEGMENT_BYTES)


def test_a_first_segment_after_the_base_is_corruption(tmp_path: Path) -> None:
    w = filled(tmp_path / "wal", 40)
    w.drop_prefix(20)
    w.close()
    first = segment_firsts(tmp_path / "wal")[0]
    (tmp_path / "wal" / segment_name(first)).unlink()
    with pytest.raises(WALCorrupt, match="entries after the base are lost"):
        WAL.open(tmp_path / "wal", segment_bytes_max=SEGMENT_BYTES)


def test_a_record_at_the_base_with_another_epoch_is_corruption(tmp_path: Path) -> None:
    w = WAL.open(tmp_path / "wal")  # one segment: the record at the base is in it
    w.append(records(1, 10, 2))
    w.close()
    write_base(tmp_path / "wal", 5, 3)
    with pytest.raises(WALCorrupt, match="record 5 has epoch 2, not the base's 3"):
        WAL.open(tmp_path / "wal")


def test_an_entry_after_the_base_with_a_lower_epoch_is_corruption(tmp_path: Path) -> None:
    w = WAL.open(tmp_path / "wal")
    w.reset(10, 5)
    w.close()
    # Hand-write a record after the base with an older epoch.
    (tmp_path / "wal" / segment_name(11)).write_bytes(encode_record(4, 11, b"x"))
    with pytest.raises(WALCorrupt, match="below the base's 5"):
        WAL.open(tmp_path / "wal")


def test_open_removes_dead_segments_and_a_stale_temp_file(tmp_path: Path) -> None:
    filled(tmp_path / "wal", 40).close()
    firsts = segment_firsts(tmp_path / "wal")
    # As if drop_prefix(30) crashed after writing the base, before removing anything.
    write_base(tmp_path / "wal", 30, 1)
    (tmp_path / "wal" / (BASE_NAME + ".tmp")).write_bytes(b"half a base")
    w = open_wal(tmp_path / "wal")
    assert state(w) == (30, 1, records(31, 40))
    left = segment_firsts(tmp_path / "wal")
    assert left == [f for f in firsts if f >= left[0]] and left[0] <= 31 < left[0] + 10
    assert not (tmp_path / "wal" / (BASE_NAME + ".tmp")).exists()
    w.close()


# -- crashes at every step --------------------------------------------------------------------


class Crash(OSError):
    """The simulated end of the process (an OSError, so that the WAL's note is not written)."""


class CrashingOS:
    """What wal.py sees as ``os``: the ``at``-th mutating call raises ``Crash``, and so does every
    mutating call after it (a dead process changes nothing more). ``trace`` lists the calls."""

    MUTATING = ("unlink", "replace", "rename", "ftruncate", "pwrite", "write", "rmdir")

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.steps = 0
        self.crashed = False
        self.trace: list[tuple[str, str]] = []
        self.fd_paths: dict[int, str] = {}

    def step(self, name: str, target: str) -> None:
        self.steps += 1
        if self.crashed or (self.at is not None and self.steps >= self.at):
            self.crashed = True
            raise Crash(f"crashed before {name} {target}")
        self.trace.append((name, target))

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name == "open":
            def opener(path: str, flags: int, *args: Any) -> int:
                if flags & os.O_CREAT:
                    self.step("create", os.path.basename(path))
                fd = real(path, flags, *args)
                self.fd_paths[fd] = os.path.basename(path)
                return fd
            return opener
        if name in self.MUTATING:
            def mutate(*args: Any, **kwargs: Any) -> Any:
                first = args[0] if args else ""
                target = self.fd_paths.get(first, "?") if isinstance(first, int) else (
                    os.path.basename(str(first)))
                self.step(name, target)
                return real(*args, **kwargs)
            return mutate
        return real


@contextmanager
def crashing(monkeypatch: pytest.MonkeyPatch, at: int | None) -> Iterator[CrashingOS]:
    fake = CrashingOS(at)
    real_sync_file = wal_module.sync_file

    def sync_file(fd: int, path: str, *, data_only: bool = True) -> None:
        fake.step("fsync", os.path.basename(path))
        real_sync_file(fd, path, data_only=data_only)

    def fsync_dir(directory: str) -> None:
        fake.step("fsync_dir", os.path.basename(directory))
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    with monkeypatch.context() as m:
        m.setattr(wal_module, "os", fake)
        m.setattr(wal_module, "sync_file", sync_file)
        m.setattr(wal_module, "fsync_dir", fsync_dir)
        yield fake


def crash_at_every_step(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prepare: Callable[[Path], WAL],
    operation: Callable[[WAL], None],
    check: Callable[[WAL, bool], None],
) -> int:
    """Run ``operation`` on a fresh copy of the log once per step, crashing at that step, and
    ``check`` the reopened log (told whether the operation completed). Returns the step count."""
    at = 1
    while True:
        path = tmp_path / f"run{at}"
        w = prepare(path)
        with crashing(monkeypatch, at) as fake:
            try:
                operation(w)
                completed = True
            except Crash:
                completed = False
        if completed:
            w.close()
        else:
            w._close_fds()  # the process is gone: no sync, no cleanup
        reopened = open_wal(path)
        try:
            check(reopened, completed)
        finally:
            reopened.close()
        if completed:
            assert not fake.crashed
            return at
        at += 1


def test_crash_at_every_step_of_drop_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    old = (0, 0, records(1, 40, 2))
    new = (27, 2, records(28, 40, 2))
    seen = set()

    def check(w: WAL, completed: bool) -> None:
        got = state(w)
        assert got in (old, new), got[:2]
        assert not completed or got == new
        seen.add(got[:2])

    steps = crash_at_every_step(tmp_path, monkeypatch, lambda p: filled(p, 40, epoch=2),
                                lambda w: w.drop_prefix(27), check)
    assert steps > 5 and seen == {(0, 0), (27, 2)}


def test_crash_at_every_step_of_a_second_drop_prefix(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def prepare(path: Path) -> WAL:
        w = filled(path, 30, epoch=1)
        w.append(records(31, 50, 3))
        w.sync()
        w.drop_prefix(12)
        return w

    old = (12, 1, records(13, 30, 1) + records(31, 50, 3))
    new = (44, 3, records(45, 50, 3))

    def check(w: WAL, completed: bool) -> None:
        assert state(w) in (old, new)
        assert not completed or state(w) == new

    crash_at_every_step(tmp_path, monkeypatch, prepare, lambda w: w.drop_prefix(44), check)


def test_crash_at_every_step_of_reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def prepare(path: Path) -> WAL:
        w = filled(path, 40, epoch=2)
        w.drop_prefix(9)
        return w

    old_entries = records(10, 40, 2)
    seen: set[str] = set()

    def check(w: WAL, completed: bool) -> None:
        base, epoch, entries = state(w)
        if (base, epoch) == (300, 6):
            assert entries == []
            seen.add("new")
        else:
            # A prefix of the old log under the old base (the caller redoes the reset).
            assert not completed
            assert (base, epoch) == (9, 2) and entries == old_entries[: len(entries)]
            seen.add("prefix" if entries != old_entries else "old")
        if completed:
            assert (base, epoch) == (300, 6)

    crash_at_every_step(tmp_path, monkeypatch, prepare, lambda w: w.reset(300, 6), check)
    assert seen == {"old", "prefix", "new"}


def test_crash_after_a_reset_before_the_first_append_is_durable(tmp_path: Path) -> None:
    w = filled(tmp_path / "wal", 10)
    w.reset(100, 4)
    w.append(records(101, 103, 4))
    w._close_fds()  # killed before the sync: the appended records may or may not be there
    w = open_wal(tmp_path / "wal")
    assert state(w)[:2] == (100, 4)
    w.close()


def namespace_changes_are_durable_in_order(trace: list[tuple[str, str]]) -> None:
    """Every create, rename or unlink is followed by an fsync of the directory before the next
    such change (a temp file created and then renamed over its target counts as one change),
    and a file written before a rename is fsynced before it."""
    pending_dir = None
    written: set[str] = set()
    for name, target in trace:
        if name in ("create", "replace", "rename", "unlink"):
            temp_renamed = name in ("replace", "rename") and pending_dir == f"create {target}"
            assert pending_dir is None or temp_renamed, \
                f"{name} {target} before the directory was synced after {pending_dir}"
            if name in ("replace", "rename"):
                assert not written & {target}, f"{target} renamed before it was synced"
            pending_dir = f"{name} {target}"
        elif name == "fsync_dir":
            pending_dir = None
        elif name in ("pwrite", "write"):
            written.add(target)
        elif name == "fsync":
            written.discard(target)
    assert pending_dir is None, f"the operation ended before the directory was synced after " \
        f"{pending_dir}"


def test_drop_prefix_and_reset_make_each_change_durable_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = filled(tmp_path / "wal", 60)
    with crashing(monkeypatch, None) as fake:
        w.drop_prefix(45)
    assert [n for n, _ in fake.trace].count("unlink") >= 3
    namespace_changes_are_durable_in_order(fake.trace)
    with crashing(monkeypatch, None) as fake:
        w.reset(90, 2)
    assert [n for n, _ in fake.trace].count("unlink") >= 2
    namespace_changes_are_durable_in_order(fake.trace)
    w.close()


# -- against an oracle, with crashes anywhere -------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 8), st.integers(0, 1)),
        st.tuples(st.just("drop"), st.integers(0, 100)),
        st.tuples(st.just("truncate"), st.integers(0, 100)),
        st.tuples(st.just("reset"), st.integers(0, 30), st.integers(0, 2)),
        st.tuples(st.just("crash"), st.integers(1, 20), st.sampled_from(["drop", "reset"]),
                  st.integers(0, 100)),
        st.tuples(st.just("reopen")),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_wal_with_a_base_matches_an_oracle(ops: list[tuple[Any, ...]], tmp_path_factory: Any,
                                           ) -> None:
    path = tmp_path_factory.mktemp("oracle") / "wal"
    mp = pytest.MonkeyPatch()
    w = open_wal(path)
    base, base_epoch, entries = 0, 0, []  # the oracle: entries after the base
    try:
        for op in ops:
            last = base + len(entries)
            last_epoch = entries[-1][0] if entries else base_epoch
            if op[0] == "append":
                epoch = last_epoch + op[2]
                new = [(epoch, last + 1 + i, payload(last + 1 + i)) for i in range(op[1])]
                w.append(new)
                w.sync()
                entries += new
            elif op[0] == "drop":
                index = base + op[1] % (len(entries) + 1)
                w.drop_prefix(index)
                if index > base:
                    base_epoch = entries[index - base - 1][0]
                    entries = entries[index - base:]
                    base = index
            elif op[0] == "truncate":
                cut = base + 1 + op[1] % (len(entries) + 1)
                w.truncate_suffix(cut)
                entries = entries[: cut - base - 1]
            elif op[0] == "reset":
                new_base = last + op[1]
                new_epoch = base_epoch if new_base == base else last_epoch + op[2]
                w.reset(new_base, new_epoch)
                base, base_epoch, entries = new_base, new_epoch, []
            elif op[0] == "crash":
                _, at, kind, arg = op
                with crashing(mp, at):
                    try:
                        if kind == "drop":
                            index = base + 1 + arg % len(entries) if entries else base
                            w.drop_prefix(index)
                        else:
                            index = last + arg % 5
                            w.reset(index, last_epoch)
                        done = True
                    except Crash:
                        done = False
                event(f"crash during {kind}: {'completed' if done else 'interrupted'}")
                if not done:
                    w._close_fds()
                else:
                    w.close()
                w = open_wal(path)
                got = state(w)
                if kind == "drop" and index > base:
                    new_state = (index, entries[index - base - 1][0], entries[index - base:])
                elif kind == "drop":
                    new_state = (base, base_epoch, entries)
                else:
                    new_state = (index, last_epoch, [])
                if done:
                    assert got == new_state
                elif kind == "drop":
                    assert got in ((base, base_epoch, entries), new_state)
                else:
                    assert got == new_state or (
                        got[:2] == (base, base_epoch) and got[2] == entries[: len(got[2])])
                base, base_epoch, entries = got[0], got[1], list(got[2])
            else:
                w.close()
                w = open_wal(path)
            assert state(w) == (base, base_epoch, entries)
            assert w.last_index == base + len(entries)
            assert w.last_epoch == (entries[-1][0] if entries else base_epoch)
    finally:
        mp.undo()
        if not w.closed:
            w.close()


def test_readers_near_the_end_while_the_prefix_is_dropped(tmp_path: Path) -> None:
    """Readers in other threads (the event loop reads the entries it ships) see consistent
    entries while the writer appends and drops whole segments under them."""
    import threading

    w = filled(tmp_path / "wal", 30)
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        try:
            while not stop.is_set():
                last = w.last_index
                got = w.entries(last - 4, last + 1)  # the writer keeps the last 200 entries
                assert [(i, p) for _, i, p in got] == [(i, payload(i)) for i in
                                                       range(last - 4, last + 1)]
                reads[0] += 1
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for last in range(31, 700):
            w.append(records(last, last))
            w.sync()
            if last % 7 == 0 and last > 200:
                w.drop_prefix(last - 200)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert reads[0] > 100
    assert w.first_index > 450 and len(segment_firsts(tmp_path / "wal")) < 50
    w.close()
