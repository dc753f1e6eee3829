"""Backup and restore of a whole cluster: ``rangekv backup DIR``, ``rangekv restore DIR
--data-dir D``, then ``rangekv up --data-dir D``; or, on several machines (docs/operations.md),
``rangekv restore DIR --metadata --etcd URLS`` into a fresh etcd and ``rangekv restore DIR
--node ID --node-dir PATH`` for each node on its machine (``restore.py``).

Invariants
----------
1. **Every write acknowledged before ``rangekv backup`` started is in the backup.** Each
   group's data is a checkpoint made by its leader after a linearizable barrier (a read round:
   the leader is still the leader and has applied everything committed when the request
   arrived), at that applied index or later (``node/backup.py``).
2. **Nothing is invented.** A group's checkpoint is its state machine at one applied index: a
   prefix of the group's committed log, so every key, value and seq in it was written by the
   cluster. A restored cluster starts from exactly those states.
3. **Group data and metadata describe the same range map.** The backup first asks the
   controller to pause range changes (``/rangekv/backup/pause`` under the backup's etcd
   lease); the active meta refuses new splits, merges, moves, table creations and drops from
   then on, lets unfinished moves finish, and answers ``/rangekv/backup/paused`` once none is in
   flight. Only then are the groups checkpointed. The tables, ranges and counters read after
   the answer (revision R1) must be unchanged at the end (revision R2), or the backup fails.
   The pause ends with the backup (the lease is revoked, or expires if the backup died).
4. **A backup is usable only if complete and intact.** ``backup.json`` is written last,
   atomically (temp file, fsync, rename, fsync of the directory); it lists every file with its
   size and sha256. Restore checks every file against it before writing anything, and refuses
   a directory without it.
5. **A restored group never goes back in epochs.** Each restored member gets the group's
   checkpoint as its state machine and an empty log based at (applied index, epoch of that
   entry); its hard state promises that epoch. The group's record in etcd gets
   ``max(recorded epoch, checkpoint epoch)`` and no leader, so meta elects one at a higher
   epoch once a majority heartbeats, as for a new group.

Why a pause rather than retrying groups whose ranges changed: a split, merge or move is a
sequence of steps across etcd and one or two groups (etcd first for a split, the group first
for a merge, a fence/copy/cleanup dance for a move), resumable from what a crashed meta leaves
behind. A group checkpoint and a metadata snapshot taken at different moments can pair states
that no crash can produce (etcd before a merge with the group after it), which the controller
has no rule to resume. Pausing the few seconds a backup takes is simple to reason about; writes
and reads go on throughout, only range changes wait, and a dead backup releases the pause
when its lease runs out (``PAUSE_LEASE_TTL_S``).

Why restore from the logical dump rather than the etcd snapshot: the metadata must be edited
on the way in (epochs, leaders, node addresses for another ``--base-port``, learners and flags
of nodes that now start afresh), and a fresh etcd started with ``rangekv up``'s own member name
and URLs needs no etcdctl. The etcd snapshot (``/v3/maintenance/snapshot``) is kept beside it
for disaster recovery by hand (``etcdutl snapshot restore``) and is checksummed like the rest.

Layout of a backup directory::

    backup.json                 the manifest (see ``manifest.py``), written last
    cluster.json                the shape: base port, nodes, rms, groups
    meta/dump.json              every key under /rangekv/ at revision R2 (logical dump)
    meta/etcd.snapshot          etcd's own snapshot (taken after R2)
    groups/G/group.json         the checkpoint's manifest (index, epoch, crc32c, digest), the
                                group's record, the ranges its state machine held, the leader
    groups/G/index/...          the RocksDB checkpoint of group G

The meta can also keep rolling metadata backups by itself (``--backup-dir``,
``rangekv.metadata.backups``): the logical dump on every metadata change (at most once per
``--backup-min-interval-s``) and every ``--backup-interval-s``, the last ``--backup-keep`` of
them.
"""

PAUSE_TIMEOUT_S_DEFAULT = 120.0  # for the meta to finish the range changes in flight
