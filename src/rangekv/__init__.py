"""rangekv: a durable, strongly consistent, range-partitioned key-value database.

    import rangekv

    with rangekv.Client("http://127.0.0.1:8400") as db:
        db.create_table("Stocks")
        db.put("Stocks", "B", "100")
        db.get("Stocks", "B")        # Item(key=b'B', value=b'100', seq='...')

``Client``, ``AsyncClient``, ``Item`` and ``Page`` are imported on first use, so that the server
processes (``rangekv node``, ``meta``, ``rm``) do not pay for loading the HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rangekv import errors

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "Item", "Page", "__version__", "errors"]

if TYPE_CHECKING:
    from rangekv.client import AsyncClient, Client, Item, Page

_LAZY = {"Client", "AsyncClient", "Item", "Page"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from rangekv import client

        return getattr(client, name)
    raise AttributeError(f"module 'rangekv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
