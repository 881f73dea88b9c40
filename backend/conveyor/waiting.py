"""Wait for a task's result: block on its done list (threads) or share one subscription (asyncio).

The contract with the scripts: wait.lua reads a task and, when it is not finished, marks it
"waited" in the same step; finish.lua, reclaim.lua and cancel.lua, on finishing a marked task
(and delete.lua and drop.lua, on deleting one), put one token in its done list for
DONE_TTL_MS and publish its id on the done channel. A
waiter therefore looks (and marks) first and blocks second: a finish before the look is seen
by the look, a finish after it notifies. Every wake-up, timeout and reconnect is followed by
another look, so a lost notification costs latency, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from django.tasks.exceptions import TaskResultDoesNotExist

from .exceptions import ConveyorError, RedisUnavailable, ResultTimeout

if TYPE_CHECKING:
    from .store import Store

Look = dict[bytes, bytes] | str | None  # a finished record, a status, or no such task

BACKOFF_MAX = 1.0  # seconds between attempts to reach Redis again
LOOK_BATCH = 1000  # asyncio waiters looked at per round trip
LINGER = 10.0  # seconds the asyncio subscription stays open after its last waiter left
LAST_LOOK = 1.0  # seconds an asyncio waiter past its deadline gives its last look


def _finished(task_id: str, look: Look) -> dict[bytes, bytes] | None:
    """Return the record of a finished task, None for an unfinished one; raise for an unknown one."""
    if look is None:
        raise TaskResultDoesNotExist(task_id)
    return look if isinstance(look, dict) else None


def wait_for_record(store: Store, task_id: str, timeout: float | None) -> dict[bytes, bytes]:
    """Return a task's record once it is SUCCESSFUL or FAILED, blocking on one pool connection.

    Raise TaskResultDoesNotExist for no such task, ResultTimeout after timeout seconds
    (None: no limit). A single block stays under the socket timeout, which would otherwise
    cut it off as a dead connection; each block is followed by a look.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    chunk = max(store.options.socket_timeout - 1.0, store.options.socket_timeout / 2)
    status, backoff = "unknown", 0.05
    while True:
        try:
            look = store.look(task_id)
            record = _finished(task_id, look)
            if record is not None:
                return record
            status = str(look)
            left = chunk if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeout(task_id, status, timeout or 0.0)
            store.block_until_done(task_id, min(left, chunk))
            backoff = 0.05
        except RedisUnavailable as exc:  # a restart or outage: look again once Redis answers
            left = backoff if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise ResultTimeout(task_id, f"{status} (Redis unavailable)", timeout or 0.0) from exc
            time.sleep(min(left, backoff * random.uniform(0.5, 1.0)))
            backoff = min(backoff * 2, BACKOFF_MAX)


class AsyncWaiters:
    """Every asyncio waiter of one store on one event loop, sharing one subscription.

    Owner (on its loop only, so no lock) of the futures waiters sleep on, the batch of
    task ids waiting to be looked at and the tasks that listen and look. It holds at most
    two connections of the loop's pool however many wait: the subscription, and one
    round trip of looks (LOOK_BATCH ids each) at a time.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}
        self._batch: dict[str, list[asyncio.Future[Look]]] = {}
        self._looker: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._failure: BaseException | None = None  # why the subscription is down, while it is

    # -- waiters --------------------------------------------------------------------

    async def wait(self, task_id: str, timeout: float | None) -> dict[bytes, bytes]:
        """Return a task's record once finished (see wait_for_record), holding no connection of its own.

        Order matters: a waiter is listed, then the subscription is confirmed, then it
        looks (marking the task), then it sleeps until its id is published.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        woken: asyncio.Future[None] = loop.create_future()
        waiting = self._waiting.setdefault(task_id, set())
        waiting.add(woken)
        status = "unknown"
        try:
            self._ensure_listener()
            try:
                while True:
                    await self._until(self._subscribed.wait(), deadline)
                    look = await self._until(self._look(task_id), deadline)
                    record = _finished(task_id, look)
                    if record is not None:
                        return record
                    status = str(look)
                    await self._until(woken, deadline)
                    waiting.discard(woken)  # woken: look again (a stale publish finds it unfinished)
                    woken = loop.create_future()
                    waiting.add(woken)
            except TimeoutError:
                pass
            # The deadline passed: one last look decides (finished just now, or a timeout).
            try:
                look = await asyncio.wait_for(self._look(task_id), LAST_LOOK)
            except TimeoutError:
                raise ResultTimeout(
                    task_id, f"{status} (Redis unavailable)", timeout or 0.0
                ) from self._failure
            record = _finished(task_id, look)
            if record is not None:
                return record
            raise ResultTimeout(task_id, str(look), timeout or 0.0)
        finally:
            waiting.discard(woken)
            if not waiting and self._waiting.get(task_id) is waiting:
                del self._waiting[task_id]

    @staticmethod
    async def _until[T](awaitable: Awaitable[T], deadline: float | None) -> T:
        if deadline is None:
            return await awaitable
        return await asyncio.wait_for(awaitable, max(deadline - asyncio.get_running_loop().time(), 0))

    def _wake(self, task_id: str) -> None:
        for woken in self._waiting.get(task_id, ()):
            if not woken.done():
                woken.set_result(None)

    # -- looks, batched ----------------------------------------------------------------

    async def _look(self, task_id: str) -> Look:
        """Look at a task (wait.lua) in the next batch, retrying while Redis is unreachable."""
        backoff = 0.05
        while True:
            future: asyncio.Future[Look] = asyncio.get_running_loop().create_future()
            self._batch.setdefault(task_id, []).append(future)
            if self._looker is None or self._looker.done():
                self._looker = asyncio.get_running_loop().create_task(self._run_looks())
            try:
                return await future
            except RedisUnavailable:
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _run_looks(self) -> None:
        while self._batch:
            ids = list(self._batch)[:LOOK_BATCH]
            futures = [self._batch.pop(i) for i in ids]
            try:
                looks = await self.store.alook(ids)
            except Exception as exc:  # handed to the waiters, who decide
                for waiting in futures:
                    for f in waiting:
                        if not f.done():
                            f.set_exception(exc)
                continue
            for look, waiting in zip(looks, futures, strict=True):
                for f in waiting:
                    if not f.done():
                        f.set_result(look)

    # -- the subscription ---------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._subscribed.clear()
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """Hold the subscription while anyone waits (and LINGER after); on every (re)subscribe wake all."""
        loop = asyncio.get_running_loop()
        backoff, idle_since, resubscribing = 0.05, loop.time(), False
        poll = min(1.0, self.store.options.socket_timeout)
        while self._waiting or loop.time() - idle_since < LINGER:
            try:
                async with self.store.adone_subscription() as next_id:
                    self._failure, backoff = None, 0.05
                    self._subscribed.set()
                    if resubscribing:  # ids published while the subscription was down are lost
                        for task_id in list(self._waiting):
                            self._wake(task_id)
                    resubscribing = True
                    while self._waiting or loop.time() - idle_since < LINGER:
                        if self._waiting:
                            idle_since = loop.time()
                        task_id = await next_id(poll)
                        if task_id is not None:
                            self._wake(task_id)
                    self._subscribed.clear()  # a waiter arriving while it closes subscribes again
            except ConveyorError as exc:
                self._subscribed.clear()
                self._failure = exc
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, BACKOFF_MAX)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, AsyncWaiters]] = (
    weakref.WeakKeyDictionary()
)


def async_waiters(store: Store) -> AsyncWaiters:
    """Return the AsyncWaiters of a store on the running loop (one per store and loop)."""
    per_loop = _hubs.setdefault(asyncio.get_running_loop(), {})
    hub = per_loop.get(id(store))
    if hub is None or hub.store is not store:
        hub = per_loop[id(store)] = AsyncWaiters(store)
    return hub


__all__ = ["AsyncWaiters", "async_waiters", "wait_for_record"]
