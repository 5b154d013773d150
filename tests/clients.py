"""Both clients behind one blocking interface, so one test runs against each.

``Blocking("sync", ...)`` is a :class:`zring.Client`; ``Blocking("async", ...)`` an
:class:`zring.AsyncClient` whose every call runs to its end on the facade's own event loop.
The ``client_kind`` parameter of a test picks one; ``connect`` fixtures build them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from zring import AsyncClient, Client

KINDS = ("sync", "async")


async def _awaited(method, args, kwargs):
    return await method(*args, **kwargs)


class Blocking:
    """A Client or an AsyncClient with the blocking Client API."""

    def __init__(self, kind: str, *args: Any, **kwargs: Any) -> None:
        self.kind = kind
        self.loop = asyncio.new_event_loop() if kind == "async" else None
        self.client = (AsyncClient if kind == "async" else Client)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.client, name)
        if self.loop is None or name.startswith("_") or not callable(value):
            return value
        return lambda *args, **kwargs: self.loop.run_until_complete(
            _awaited(value, args, kwargs))

    def close(self) -> None:
        """The client's own close() (not a coroutine in either)."""
        self.client.close()

    def finish(self) -> None:
        """Close the client for good (and the facade's event loop)."""
        if self.loop is None:
            self.client.close()
            return
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


class Connector:
    """Builds facades of one kind and closes them all at the end of the test."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.made: list[Blocking] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Blocking:
        facade = Blocking(self.kind, *args, **kwargs)
        self.made.append(facade)
        return facade

    def close(self) -> None:
        for facade in self.made:
            facade.finish()


@contextmanager
def first_seed(index: int) -> Iterator[None]:
    """Clients built inside start at their ``seeds[index]``; elsewhere each picks its first
    seed with ``random.randrange`` (to spread clients over the seeds). Read it back as the
    client's ``seed``."""
    randrange = random.randrange

    def pick(stop: int) -> int:
        assert 0 <= index < stop, f"no seed {index} of {stop}"
        return index
    random.randrange = pick
    try:
        yield
    finally:
        random.randrange = randrange


def open_sockets() -> list:
    # pyzmq's context tracks its sockets (weakly): the clients' DEALERs are among them (a
    # client's gossip SUB lives on across event loops until close())
    return [s for s in zmq.Context.instance()._sockets
            if not s.closed and s.type == zmq.DEALER]


def run(coro):
    """Run ``coro`` in a fresh event loop and check it left no task or socket behind."""
    async def checked():
        try:
            return await coro
        finally:
            await asyncio.sleep(0)
            leftover = asyncio.all_tasks() - {asyncio.current_task()}
            assert not leftover, leftover
            assert not open_sockets()
    return asyncio.run(checked())
