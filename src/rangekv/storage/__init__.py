"""Storage of one node: the write-ahead log, the hard state and the state machine.

    wal.py        the node's only durable log: checksummed records in segment files, group
                  commit (append many, sync once), torn tails repaired, damage refused
    hardstate.py  a tiny atomic, checksummed record (the epoch a node promised, its id)
    engine.py     the state machine: deterministic command semantics over a Backend protocol
    rocks.py      the RocksDB Backend (its own WAL off: the WAL above is the log)
    memory.py     an in-memory Backend for tests and the simulator

Nothing here is imported by this package on purpose: importing ``rangekv.storage.wal`` does not
load RocksDB.
"""
