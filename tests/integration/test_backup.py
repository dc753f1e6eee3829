"""Backup under a write load, wipe, restore, and every acknowledged write is back.

A real cluster of two groups, three tables. Writers overwrite keys the whole time (every value
unique, every outcome recorded with its acknowledgement time) while a split that moves half a
table to the other group is asked for and ``rangekv backup`` (the real CLI, a subprocess)
runs. Then the cluster is stopped and its data dir deleted, ``rangekv restore`` lays out a new
one, and the restored cluster must hold, for every key:

* if a put of it was acknowledged before the backup started: a version at least as new
  (by seq) as the newest of those;
* only values some put of that key sent, and for a value whose put was acknowledged,
  exactly the seq it was acknowledged with (nothing invented, nothing altered).

Afterwards, on the restored cluster, the controller's pause is checked directly: while a
backup's pause key is held, a split is refused ("a backup is running"); once the key goes, it
is done. The meta's rolling metadata backups are checked on a bare etcd.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from rangekv import errors, model, wire
from rangekv.backup import manifest as mf
from rangekv.client import AsyncClient
from rangekv.cluster.local import LocalCluster, find_free_base_port
from rangekv.metadata.backups import MetaBackups, existing_dumps, snapshot_path
from rangekv.metadata.etcd import EtcdClient

SEED = int(os.environ.get("RANGEKV_TEST_SEED", "7"))
TABLES = ("alpha", "beta", "gamma")
# across the tables; the "done when" is run by hand with RANGEKV_BACKUP_TEST_KEYS=100000
KEYS = int(os.environ.get("RANGEKV_BACKUP_TEST_KEYS", "10000"))

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400 + KEYS // 50)]
WRITERS = 32
READY_TIMEOUT_S = 120.0
CLI_TIMEOUT_S = 300.0


@dataclass
class Put:
    table: str
    key: str
    value: str
    sent_s: float
    acked_s: float | None = None  # None: no answer, or an error (outcome unknown)
    seq: str | None = None


def cli(*args: str, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rangekv.cli.main", *args], text=True,
                          capture_output=True, timeout=timeout_s, check=False,
                          stdin=subprocess.DEVNULL)


class Load:
    """Puts of unique values to keys of the tables, every outcome recorded."""

    def __init__(self, db: AsyncClient, rng: random.Random) -> None:
        self.db, self.rng = db, rng
        self.puts: list[Put] = []
        self.n = 0
        self.stop = asyncio.Event()

    def key(self, i: int) -> tuple[str, str]:
        return TABLES[i % len(TABLES)], f"k{i:07d}"

    async def put(self, i: int) -> None:
        table, key = self.key(i)
        self.n += 1
        rec = Put(table, key, f"{key}/{self.n}/{self.rng.getrandbits(32):08x}", time.monotonic())
        self.puts.append(rec)
        try:
            rec.seq = await self.db.put(table, key, rec.value)
            rec.acked_s = time.monotonic()
        except errors.RangeKVError:
            pass  # outcome unknown (or refused): never counted as acknowledged

    async def fill(self) -> None:
        """Every key once."""
        todo = iter(range(KEYS))

        async def worker() -> None:
            for i in todo:
                await self.put(i)

        await asyncio.gather(*(worker() for _ in range(WRITERS)))

    async def overwrite(self) -> None:
        """Random keys again, until ``stop``."""
        async def worker() -> None:
            while not self.stop.is_set():
                await self.put(self.rng.randrange(KEYS))

        await asyncio.gather(*(worker() for _ in range(WRITERS)))


async def read_all(db: AsyncClient) -> dict[tuple[str, str], tuple[str, str]]:
    out = {}
    for table in TABLES:
        async for item in db.scan(table, page_size=1000):
            out[(table, item.key.decode())] = (item.value.decode(), item.seq)
    return out


def check_restored(puts: list[Put], restored: dict[tuple[str, str], tuple[str, str]],
                   backup_started_s: float) -> dict[str, int]:
    by_value = {(p.table, p.key, p.value): p for p in puts}
    floor: dict[tuple[str, str], Put] = {}
    for p in puts:
        if p.acked_s is not None and p.acked_s < backup_started_s:
            best = floor.get((p.table, p.key))
            if best is None or p.seq > best.seq:  # type: ignore[operator]
                floor[(p.table, p.key)] = p
    invented, altered, older = [], [], []
    for (table, key), (value, seq) in restored.items():
        p = by_value.get((table, key, value))
        if p is None:
            invented.append((table, key, value, seq))
        elif p.seq is not None and p.seq != seq:
            altered.append((table, key, value, seq, p.seq))
        base = floor.get((table, key))
        if base is not None and seq < base.seq:  # type: ignore[operator]
            older.append((table, key, seq, base.seq))
    lost = [k for k in floor if k not in restored]
    assert not invented, f"{len(invented)} restored values no put sent, e.g. {invented[:3]}"
    assert not altered, f"{len(altered)} restored with another seq, e.g. {altered[:3]}"
    assert not lost, f"{len(lost)} keys acknowledged before the backup are gone: {lost[:5]}"
    assert not older, f"{len(older)} keys went back to older versions, e.g. {older[:3]}"
    return {"keys_restored": len(restored), "keys_acked_before_backup": len(floor)}


def test_backup_under_load_wipe_restore(tmp_path: Path) -> None:
    print(f"seed {SEED}, {KEYS} keys")
    rng = random.Random(SEED)
    base_port = find_free_base_port(6, 2)
    data, data2, backup = tmp_path / "data", tmp_path / "data2", tmp_path / "bk"
    cluster = LocalCluster(data, base_port, nodes=6, groups=2)
    try:
        cluster.start()
        cluster.wait_ready(READY_TIMEOUT_S)
        timing = asyncio.run(_load_and_back_up(cluster, rng, backup, data))
        puts, backup_started_s = timing
    finally:
        cluster.stop()
    began = time.monotonic()
    manifest = mf.verify(backup)
    print(f"backup verified in {time.monotonic() - began:.1f} s: "
          f"{sum(f[1] for f in manifest['files']):,} bytes in {len(manifest['files'])} files")
    assert len(manifest["groups"]) == 2
    assert_private_tree(backup)
    assert_private_data_dir(data)
    shutil.rmtree(data)

    done = cli("restore", str(backup), "--data-dir", str(data2))
    assert done.returncode == 0, done.stderr
    print(done.stdout.strip())
    restored_cluster = LocalCluster.open(data2)
    assert restored_cluster.base_port == base_port
    try:
        restored_cluster.start()
        restored_cluster.wait_ready(READY_TIMEOUT_S)
        figures = asyncio.run(_check_and_pause(restored_cluster, puts, backup_started_s))
        print(f"restore checked: {figures}")
    finally:
        with restored_cluster.logs_on_failure():
            restored_cluster.stop()
    assert_private_data_dir(data2)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_private_tree(root: Path) -> None:
    """A backup is its owner's only (rangekv.perms): every directory 0700, every file 0600."""
    for directory, _, files in os.walk(root):
        assert _mode(Path(directory)) == 0o700, directory
        for name in files:
            assert _mode(Path(directory, name)) == 0o600, Path(directory, name)


def assert_private_data_dir(data: Path) -> None:
    """A data dir of `rangekv up` and every process's dir in it are 0700 (what protects the
    files RocksDB and etcd make with their own modes), and the files rangekv writes there
    itself are 0600: its settings, logs and pid files, each node's identity, promise and
    WAL."""
    dirs = [data, data / "logs", data / "run", data / "etcd", data / "backups",
            *sorted(data.glob("node-*"))]
    if (data / "backups" / "meta").exists():
        dirs.append(data / "backups" / "meta")
    for d in dirs:
        assert _mode(d) == 0o700, d
    files = [data / "cluster.json", *(data / "logs").iterdir(), *(data / "run").iterdir()]
    for node_dir in data.glob("node-*"):
        files += [node_dir / "node.id", *(node_dir / "wal").glob("*.wal")]
        files += [p for p in (node_dir / "hardstate", node_dir / "node.group") if p.exists()]
    files += list((data / "backups" / "meta").glob("*")) if (data / "backups").exists() else []
    for path in files:
        assert _mode(path) == 0o600, path


async def _load_and_back_up(cluster: LocalCluster, rng: random.Random, backup: Path,
                            data: Path) -> tuple[list[Put], float]:
    async with AsyncClient(cluster.native_endpoint, timeout_s=15.0) as db:
        for table in TABLES:
            await db.create_table(table)
        load = Load(db, rng)
        began = time.monotonic()
        await load.fill()
        print(f"filled {KEYS} keys in {time.monotonic() - began:.1f} s")
        writers = asyncio.ensure_future(load.overwrite())
        alpha = await db.ranges("alpha")
        other = next(g["id"] for g in (await db.cluster())["groups"]
                     if g["id"] != alpha[0]["group"])
        # A split that moves the upper half of alpha to the other group, asked for just
        # before the backup: the backup's pause waits for the move to finish, or the split is
        # refused because the pause came first; either way the backup sees one range map.
        split = asyncio.ensure_future(db.split("alpha", f"k{KEYS // 2:07d}", to=other))
        # (the backup starts once the move is under way, if it is not over by then already)
        while not split.done() and not any(r["state"] == "moving" or "moving" in r
                                           for r in await db.ranges("alpha")):
            await asyncio.sleep(0.01)
        print(f"a move in flight when the backup starts: {not split.done()}")
        backup_started_s = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rangekv.cli.main", "backup", str(backup), "--data-dir",
            str(data), "--json", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
        assert proc.returncode == 0, err.decode()
        summary = json.loads(out)
        print(f"backup: {summary['seconds']} s (of which {summary['pause_wait_s']} s waiting "
              f"for range changes in flight), groups {summary['groups']}")
        try:
            print("split:", await split)
        except errors.Unavailable as exc:
            assert "backup is running" in exc.message, exc
            print("split refused during the backup:", exc.message)
        acked_at_end = sum(1 for p in load.puts if p.acked_s is not None)
        while sum(1 for p in load.puts if p.acked_s is not None) < acked_at_end + 200:
            await asyncio.sleep(0.05)  # more writes after the backup: none may come back
        load.stop.set()
        await writers
        acked = sum(1 for p in load.puts if p.acked_s is not None)
        during = sum(1 for p in load.puts if p.acked_s is not None
                     and p.sent_s >= backup_started_s)
        print(f"{len(load.puts)} puts, {acked} acknowledged, {during} of them sent during or "
              "after the backup")
        assert during > 0, "no write went on during the backup"
        return load.puts, backup_started_s


async def _check_and_pause(cluster: LocalCluster, puts: list[Put],
                           backup_started_s: float) -> dict[str, int]:
    async with AsyncClient(cluster.native_endpoint, timeout_s=15.0) as db:
        restored = await read_all(db)
        figures = check_restored(puts, restored, backup_started_s)
        # The pause, deterministically: hold a backup's pause key as rangekv backup does.
        etcd = EtcdClient([cluster.etcd_endpoint])
        try:
            # A move under way when the pause comes: the answer waits until it is over.
            gamma = await db.ranges("gamma")
            other = next(g["id"] for g in (await db.cluster())["groups"]
                         if g["id"] != gamma[0]["group"])
            move = asyncio.ensure_future(db.move("gamma", "k0000002", other))
            while not move.done() and not any("moving" in r for r in await db.ranges("gamma")):
                await asyncio.sleep(0.01)
            lease = await etcd.lease_grant(60)
            await etcd.put(model.BACKUP_PAUSE, model.dumps({"token": "t1", "lease": lease}),
                           lease=lease)
            deadline = time.monotonic() + 60
            while (answer := await etcd.get(model.BACKUP_PAUSED)) is None:
                assert time.monotonic() < deadline, "the meta never answered the pause"
                await asyncio.sleep(0.05)
            assert json.loads(answer.value) == {"token": "t1"}
            ranges, _ = await etcd.get_prefix(model.RANGES)
            unfinished = [r for r in map(model.Range.load, (kv.value for kv in ranges))
                          if r.state != model.RANGE_ACTIVE or r.source is not None]
            assert not unfinished, f"paused with range changes in flight: {unfinished}"
            print("move asked just before the pause:", await move)
            active = await etcd.get(model.META_ACTIVE)
            assert active is not None
            meta = wire.Connection(json.loads(active.value)["address"])
            try:
                with pytest.raises(errors.Unavailable, match="backup is running"):
                    await meta.request("split_range", timeout_s=10.0, name="beta",
                                       at=b"k0000100")
            finally:
                await meta.close()
            # Through an rm the split waits (it retries meta's "unavailable") until the pause
            # ends, and then is done.
            before = await db.ranges("beta")
            split = asyncio.ensure_future(db.split("beta", "k0000100"))
            await asyncio.sleep(0)
            assert await db.ranges("beta") == before and not split.done()
            await etcd.lease_revoke(lease)
            ranges = await split
            assert any(r["start"] == "k0000100" for r in ranges), ranges
        finally:
            await etcd.close()
        # and the restored cluster takes writes
        seq = await db.put("gamma", "after-restore", "v")
        assert (await db.get("gamma", "after-restore")).seq == seq  # type: ignore[union-attr]
        return figures


def test_meta_rolling_backups(etcd_endpoint: str, tmp_path: Path) -> None:
    async def run() -> None:
        etcd = EtcdClient([etcd_endpoint])
        try:
            backups = MetaBackups(etcd, tmp_path / "mb", active=lambda: True,
                                  min_interval_s=0.0, interval_s=60.0, keep=3)
            task = asyncio.ensure_future(backups.run())
            for i in range(5):
                await etcd.put(model.PREFIX + f"tables/t{i}".encode(), b'{"i":%d}' % i)
                backups.changed()
                deadline = time.monotonic() + 10
                while backups.written < i + 1:
                    assert time.monotonic() < deadline, "no metadata backup after a change"
                    await asyncio.sleep(0.02)
            assert await backups.dump_once() is None  # nothing new: no second dump
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            dumps = existing_dumps(tmp_path / "mb")
            assert len(dumps) == 3
            newest = json.loads(dumps[-1].read_text())
            assert [kv["key"] for kv in newest["kvs"]] == [f"/rangekv/tables/t{i}"
                                                          for i in range(5)]
            assert not list((tmp_path / "mb").glob("*.tmp"))
            # etcd's own snapshot beside each kept dump, and none beside the deleted ones
            snaps = sorted((tmp_path / "mb").glob("*.etcd.snapshot"))
            assert snaps == [snapshot_path(d) for d in dumps]
            data = snaps[-1].read_bytes()
            assert hashlib.sha256(data[:-32]).digest() == data[-32:]
            etcdutl = shutil.which("etcdutl") or shutil.which("etcdctl")
            if etcdutl is not None:  # etcd 3.4's etcdctl reads it (etcd-client, bootstrap)
                out = await asyncio.to_thread(
                    subprocess.run, [etcdutl, "snapshot", "status", str(snaps[-1]), "-w", "json"],
                    capture_output=True, text=True, timeout=30,
                    env={**os.environ, "ETCDCTL_API": "3"}, check=True)
                assert json.loads(out.stdout)["totalKey"] > 0
        finally:
            await etcd.close()

    asyncio.run(run())
