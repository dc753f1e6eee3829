"""The client's methods, written once for :class:`rangekv.Client` and :class:`rangekv.AsyncClient`.

Each method builds a :class:`~rangekv.client._common.Call` and hands it to ``self._send``: the
sync client's returns the result, the async client's returns a coroutine of it (so that
``await db.put(...)`` works on the same method body). A method that does more with the result
goes through ``self._then(result, fn)`` for the same reason. Only ``scan`` (an iterator, or an
async one) and the lifecycle are written per client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rangekv import limits
from rangekv.client import _common
from rangekv.client._common import Call


class Api:
    """The operations (see ``rangekv.Client`` for the whole contract)."""

    def _send(self, call: Call) -> Any:  # pragma: no cover - each client defines its own
        raise NotImplementedError

    def _then(self, result: Any, fn: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    # --- tables -------------------------------------------------------------------------------

    def create_table(self, name: str) -> Any:
        return self._send(_common.call_create_table(name))

    def drop_table(self, name: str) -> Any:
        return self._send(_common.call_drop_table(name))

    def tables(self) -> Any:
        """The names of the tables, sorted."""
        return self._send(_common.call_tables())

    def ranges(self, table: str) -> Any:
        """The table's ranges in key order: start, end (None: unbounded), group, version."""
        return self._send(_common.call_ranges(table))

    def split(self, table: str, at: str | bytes, to: int | str | None = None) -> Any:
        """Cut the range of ``table`` holding ``at`` in two at ``at`` (both halves on the same
        group; with ``to``, a group id or "auto", the upper part then moves there, live); the
        table's ranges afterwards. Idempotent."""
        return self._send(_common.call_split(table, at, to))

    def move(self, table: str, at: str | bytes, to: int) -> Any:
        """Move the range of ``table`` holding ``at`` to group ``to``, live (docs/internals.md,
        "Moving a range"): ``{"ranges": [...], "done": bool}``; not done means the copy goes
        on in the background (watch :meth:`ranges`)."""
        return self._send(_common.call_move(table, at, to))

    # --- keys ---------------------------------------------------------------------------------

    def put(self, table: str, key: str | bytes, value: str | bytes, *,
            if_seq: str | None = None, if_absent: bool = False) -> Any:
        """Store ``value`` under ``key``; returns the seq (32 hex digits) of the new version.
        ``if_seq``: only if the live version has that seq (else ``PreconditionFailed`` with
        ``current_seq``); ``if_absent``: only if the key does not exist. Applied exactly once,
        however often it is retried (client sessions: docs/api.md)."""
        return self._send(_common.call_put(table, key, value, if_seq=if_seq,
                                           if_absent=if_absent))

    def get(self, table: str, key: str | bytes) -> Any:
        """The key's current version (an ``Item``: key, value, seq), or None if it does not
        exist. Linearizable: it sees every write acknowledged before it began."""
        return self._send(_common.call_get(table, key))

    def exists(self, table: str, key: str | bytes) -> Any:
        """Whether the key exists now (a linearizable read, as :meth:`get`)."""
        return self._then(self.get(table, key), lambda item: item is not None)

    def delete(self, table: str, key: str | bytes, *, if_seq: str | None = None) -> Any:
        """Delete the key; False if it did not exist."""
        return self._send(_common.call_delete(table, key, if_seq=if_seq))

    def list(self, table: str, *, start: str | bytes | None = None,
             end: str | bytes | None = None, limit: int = limits.LIST_LIMIT_DEFAULT,
             after: str | None = None) -> Any:
        """One page of keys ``start <= key < end`` in key order; ``after`` is ``Page.next``."""
        return self._send(_common.call_list(table, start=start, end=end, limit=limit,
                                            after=after))

    # --- batches --------------------------------------------------------------------------------

    def put_many(self, table: str, items: Mapping[Any, Any] | Iterable[tuple[Any, Any]], *,
                 if_absent: bool = False) -> Any:
        """Store many keys (a mapping, or (key, value) pairs) in one call: the seq of each, in
        order. Not a transaction: each item succeeds or fails alone; if any failed,
        ``BatchFailed`` is raised with ``results`` (a seq or the error, per item). Each is
        applied exactly once (client sessions). At most ``limits.BATCH_ITEMS_MAX`` items."""
        return self._send(_common.call_put_many(table, items, if_absent=if_absent))

    def get_many(self, table: str, keys: Iterable[str | bytes]) -> Any:
        """The current version of each key (an ``Item``, or None), in order; each read is
        linearizable. ``BatchFailed`` (with ``results``) if a read failed."""
        return self._send(_common.call_get_many(table, list(keys)))

    def delete_many(self, table: str, keys: Iterable[str | bytes]) -> Any:
        """Delete many keys: for each, whether it existed. Not a transaction (see
        :meth:`put_many`)."""
        return self._send(_common.call_delete_many(table, list(keys)))

    # --- the cluster ----------------------------------------------------------------------------

    def cluster(self) -> Any:
        """The topology: groups, their leaders and members, ranges, nodes, tables."""
        return self._send(_common.call_cluster())

    def cluster_status(self, table: str | None = None) -> Any:
        """The live status (``GET /v1/cluster/status``): the topology joined with what each
        node reports now: roles, log indexes, lag, each range's size and load. ``table``: only
        that table's ranges."""
        return self._send(_common.call_cluster_status(table))

    def remove_node(self, node_id: int) -> Any:
        """Remove the record of a dead or flagged node that takes part in no group:
        ``{"node": the record removed, "live": bool}``. Raises ``NodeInUse`` while the node is
        in a group, or live and not flagged; ``NodeNotFound`` if there is no such node."""
        return self._send(_common.call_remove_node(node_id))
