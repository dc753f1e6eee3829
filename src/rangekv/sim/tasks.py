"""Production's coroutines run in simulated time, without an event loop.

The meta's range changes (``metadata.rangeops``) and moves (``metadata.mover.RangeMover.run``)
are ``async`` code that awaits two things only: the store (``MemoryStore``, whose calls never
suspend) and the group leaders' answers (``tell``). A simulation runs them as they are: a
``SimTask`` steps the coroutine by hand, and each time it suspends on a ``Wait`` (a request to a
node, or a pause of the retry backoff) the simulation carries the wait out with its own events
and resumes the task with the answer, or throws the error into it, when that event comes.

``asyncio.sleep(0)`` (a cooperative yield, in ``RangeStats``) suspends with a bare ``None``:
the task goes straight on. Anything else a coroutine awaits would be a real event loop's
business: that is a bug of the simulation, and it asserts.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from typing import Any

from rangekv import errors


class Wait:
    """What a task waits for (``what``: the simulation's description of it); awaited, it
    suspends the task until the simulation resumes it."""

    __slots__ = ("task", "what")

    def __init__(self, what: tuple[Any, ...]) -> None:
        self.what = what
        self.task: SimTask | None = None

    def __await__(self) -> Generator[Wait, Any, Any]:
        return (yield self)


class SimTask:
    """One coroutine stepped by the simulation. ``perform(task, wait)`` starts what a ``Wait``
    asks for; ``on_done(task, result, error)`` hears the end (``error``: a ``RangeKVError`` the
    coroutine raised; any other exception propagates, as a bug)."""

    def __init__(self, name: str, coro: Coroutine[Any, Any, Any],
                 perform: Callable[[SimTask, Wait], None],
                 on_done: Callable[[SimTask, Any, errors.RangeKVError | None], None]) -> None:
        self.name = name
        self.coro = coro
        self.perform = perform
        self.on_done = on_done
        self.waiting: Wait | None = None
        self.done = False

    def start(self) -> None:
        self._step(None, None)

    def resume(self, wait: Wait, value: Any = None,
               error: BaseException | None = None) -> None:
        """``wait`` ended with ``value`` or ``error``; nothing if the task waits for something
        else by now (an answer that came after its timeout) or has ended."""
        if self.done or self.waiting is not wait:
            return
        self.waiting = None
        self._step(value, error)

    def cancel(self) -> None:
        """The task ends where it is (its meta died): nothing it still waits for counts."""
        if not self.done:
            self.done = True
            self.waiting = None
            self.coro.close()

    def _step(self, value: Any, error: BaseException | None) -> None:
        while True:
            try:
                if error is not None:
                    yielded = self.coro.throw(error)
                else:
                    yielded = self.coro.send(value)
            except StopIteration as stop:
                self.done = True
                self.on_done(self, stop.value, None)
                return
            except errors.RangeKVError as exc:
                self.done = True
                self.on_done(self, None, exc)
                return
            if yielded is None:  # asyncio.sleep(0): a cooperative yield, go on at once
                value, error = None, None
                continue
            assert isinstance(yielded, Wait), f"{self.name} awaited {yielded!r}"
            yielded.task = self
            self.waiting = yielded
            self.perform(self, yielded)
            return


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that only ever yields cooperatively (``asyncio.sleep(0)``) to its end:
    its result."""
    while True:
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value
        assert yielded is None, f"{coro!r} waited for {yielded!r}"
