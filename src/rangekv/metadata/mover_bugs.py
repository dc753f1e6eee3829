"""Planted bugs in the range mover: ``RangeMover`` subclasses that each break one rule of a move
(``rangekv.controller.move``), in the one method of that rule. The simulator must catch each one
(``rangekv sim --bug NAME``, tests/sim/test_sim_ranges.py); a meta runs one with its hidden
``--planted-bug NAME`` option (``rangekv chaos --planted-bug`` passes it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rangekv.metadata.mover import RangeMover


class DropLastBatch(RangeMover):
    """The copy (step 5) leaves out the page that ends the range: the move finishes, the source
    drops its copy, and whatever that page held is gone, acknowledged writes included."""

    async def import_page(self, dst: int, table_id: int, items: list[Any], last: bool) -> None:
        if not last:
            await super().import_page(dst, table_id, items, last)


MoverFactory = Callable[..., RangeMover]

# name -> the mover a meta runs instead of ``RangeMover`` (``--planted-bug NAME``)
MOVER_BUGS: dict[str, MoverFactory] = {
    "move-drops-last-batch": DropLastBatch,
}
