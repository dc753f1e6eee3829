"""The Python client of rangekv: :class:`Client` (sync) and :class:`AsyncClient` (asyncio).

Both speak the HTTP API of the request managers (directly or through HAProxy), raise only
:mod:`rangekv.errors` exceptions, time out by default, fail over between endpoints and retry
with backoff and jitter only when that is safe (see ``_common`` for the exact rules).
"""

from rangekv.client._async import AsyncClient
from rangekv.client._common import DEFAULT_ENDPOINT, Backoff, Item, Page
from rangekv.client._sync import Client

__all__ = ["DEFAULT_ENDPOINT", "AsyncClient", "Backoff", "Client", "Item", "Page"]
