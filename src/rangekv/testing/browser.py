"""Headless Chromium driven over the DevTools protocol, for the dashboard's real-browser tests.

``chromium(profile)`` starts Debian's chromium (``scripts/bootstrap test`` installs it) with a
profile of its own and yields its DevTools port; ``with_page(port, url, body)`` opens the page
and hands ``body`` a :class:`DevTools` client whose ``state()`` reads the rendered dashboard
(only the DOM a person sees, by the data-attributes the page sets) and whose ``until`` polls it
without reloading the page.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from rangekv.testing.load import wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGE_WAIT_S = 30.0  # the page polls every 2 s; generous for a loaded machine
CDP_TIMEOUT_S = 30.0
WINDOW = (1400, 1000)

# What the test reads from the page: only the rendered DOM (what a person sees), by the data-
# attributes the page sets on its elements.
PAGE_STATE_JS = """(() => {
  // tolerant of a page still loading: absent elements read as empty
  const text = (id) => { const e = document.getElementById(id); return e ? e.innerText : ""; };
  const banner = document.getElementById("banner");
  return JSON.stringify({
    groups: [...document.querySelectorAll("article.group")].map((a) => ({
      id: a.dataset.group, leader: a.dataset.leader, health: [...a.classList].join(" "),
      down: [...a.querySelectorAll("tr.down")].map((r) => r.dataset.node),
      text: a.innerText})),
    tables: [...document.querySelectorAll(".table-block")].map((b) => ({
      name: b.dataset.table, text: b.innerText,
      keys: [...b.querySelectorAll("tbody tr")].map((r) => r.dataset.keys),
      rps: [...b.querySelectorAll("tbody tr")].map((r) => r.dataset.rps)})),
    others: [...document.querySelectorAll("#nodes tr[data-node]")].map((r) => ({
      id: r.dataset.node, state: r.dataset.state, text: r.innerText})),
    decisions: text("decisions"),  // innerText: CSS-uppercased parts read uppercased
    summary: text("summary"),
    banner: banner && !banner.hidden ? banner.innerText : null,
    refreshed: text("refreshed"),
    injected: document.querySelectorAll("#pwn, main script, main img").length,
  });
})()"""


class DevTools:
    """A minimal client of the Chrome DevTools protocol over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        async with asyncio.timeout(CDP_TIMEOUT_S):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"DevTools connection ended: {msg.type} {msg.data}")
                body = json.loads(msg.data)
                if body.get("id") == msg_id:  # events (no id) and other answers are skipped
                    if "error" in body:
                        raise AssertionError(f"{method}: {body['error']}")
                    result: dict[str, Any] = body.get("result", {})
                    return result

    async def state(self) -> dict[str, Any]:
        got = await self.call("Runtime.evaluate", expression=PAGE_STATE_JS, returnByValue=True)
        value = got["result"].get("value")
        assert isinstance(value, str), got
        state: dict[str, Any] = json.loads(value)
        return state

    async def until(self, what: str, ok: Callable[[dict[str, Any]], bool],
                    timeout_s: float = PAGE_WAIT_S) -> dict[str, Any]:
        """The page's state once ``ok`` holds for it (polled without reloading the page)."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = await self.state()
            if ok(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {what} within {timeout_s} s; "
                                     f"it shows: {json.dumps(state, indent=1)[:4000]}")
            await asyncio.sleep(0.25)

    async def screenshot(self, path: Path) -> None:
        metrics = await self.call("Page.getLayoutMetrics")
        height = max(WINDOW[1], int(metrics["cssContentSize"]["height"]) + 1)
        await self.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=height,
                        deviceScaleFactor=1, mobile=False)
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[int]:
    """Headless Chromium with its own profile dir; yields its DevTools port."""
    assert CHROMIUM is not None
    profile.mkdir(parents=True, exist_ok=True)
    with (profile.parent / "chromium.log").open("wb") as log:
        proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-extensions", "--remote-debugging-port=0",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            port_file = profile / "DevToolsActivePort"  # chromium writes its port here
            port = wait_for(lambda: port_file.exists() and port_file.read_text().split("\n")[0],
                            CDP_TIMEOUT_S, "chromium's DevTools port")
            yield int(port)
        finally:
            proc.kill()
            proc.wait(timeout=30)


async def with_page(port: int, url: str, body: Callable[[DevTools], Awaitable[None]]) -> None:
    """The browser's page on ``url``; ``body`` drives it."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = DevTools(ws)
            await tools.call("Page.navigate", url=url)
            await body(tools)


