"""The Redis client: one method per state change; every script call goes through transport.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    ClusterError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .durability import PARAMETERS, Durability
from .exceptions import ConveyorError, RedisUnavailable
from .keys import Keys
from .options import Options
from .transport import (
    CLUSTER_WAIT,
    ClusterTransport,
    ScriptCall,
    Sent,
    Transport,
    script_sha,
    script_source,
)

__all__ = [
    "Claimed",
    "EntryState",
    "Holder",
    "Promotion",
    "QueueStats",
    "Reclaimed",
    "ScriptCall",
    "Sent",
    "Store",
    "UniqueLock",
    "script_source",
]

# Answers of renew.lua besides 0 (the lease was lost).
RENEWED = 1
CANCEL_REQUESTED = 2

# Idle workers block on a per-queue list; enqueue pushes one token and trims the list
# so tokens from a busy period cannot pile up.
WAKE_CAP = 256

# A finished task's done list (written only when someone waits for it) outlives the finish
# by this much, for a waiter that looks just before the finish and blocks just after.
DONE_TTL_MS = 60_000
# HASH_TAG_PER_QUEUE: a worker serving several slots counts the ready tasks of the slots it does
# not claim from at least every this many claim round trips (and whenever its slot may run dry).
COUNT_EVERY = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """Counts for one queue, read with a fixed number of commands."""

    queue: str
    ready: int
    scheduled: int  # every waiting task, due or not
    due: int  # scheduled tasks whose due time has passed; only a worker promotes them to ready
    running: int
    oldest_ready_ms: int | None  # when the oldest ready task became ready (server ms)
    read_at_ms: int  # the server clock the counts were read by
    paused: bool = False  # no worker claims from it: its ready and due tasks want no slot

    @property
    def work(self) -> int:
        """Return the tasks that want a worker slot now: ready, due and running (only running when paused)."""
        return self.running if self.paused else self.ready + self.due + self.running


@dataclass(frozen=True, slots=True, kw_only=True)
class Claimed:
    """A task this worker now holds the lease on, with its raw record."""

    task_id: str
    queue: str
    fields: dict[bytes, bytes]

    @property
    def token(self) -> str:
        """Return this delivery's fencing token ("<worker id>#<fence>"), checked by every later call."""
        return self.fields[b"owner"].decode()

    @property
    def lost_worker(self) -> bool:
        """Tell whether an earlier delivery of this task lost its worker (it then runs alone)."""
        lost = self.fields.get(b"lost")
        return bool(lost) and lost != b"0"


@dataclass(frozen=True, slots=True, kw_only=True)
class UniqueLock:
    """The lock a unique task takes at enqueue: its key, how long it lasts, whether RUNNING holds it."""

    key: str
    window_ms: int
    while_running: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Holder:
    """The task whose unique lock turned an enqueue away, with its raw record."""

    task_id: str
    fields: dict[bytes, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reclaimed:
    """What a reclaim call did: tasks requeued and failed, or how long it holds off after an outage."""

    requeued: int
    failed: int
    held_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryState:
    """A schedule entry as stored: its next tick (None: not stored yet, -1: never) and timing fingerprint."""

    next_ms: int | None
    fingerprint: str


# Answers of tick.lua.
TICK_LOST, TICK_NOTED, TICK_ENQUEUED, TICK_SKIPPED_PENDING, TICK_SKIPPED_MISSED = 0, 1, 2, 3, 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Promotion:
    """What a promote call did and when the next scheduled task falls due."""

    promoted: int
    next_due_ms: int | None
    server_now_ms: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _primary_moved(exc: ResponseError) -> bool:
    """Tell whether an error reply means the primary is gone from this server (Sentinel failover)."""
    # READONLY: a demoted primary; NOREPLICAS: a primary cut off from its replicas
    # (min-replicas-to-write), the old side of a failover still under way.
    return str(exc).startswith(("READONLY", "NOREPLICAS")) or isinstance(exc, redis.exceptions.ReadOnlyError)


class _SentinelConnection(redis.sentinel.SentinelManagedConnection):
    """A connection to the primary Sentinel names; asks again after READONLY or NOREPLICAS."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Send a command, connecting first through the sentinels when not connected."""
        if not self._sock:  # redis-py would reconnect to the last address, perhaps the old primary
            self.connect()
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """Read a reply; a reply saying the primary moved drops the connection as a connection error."""
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not _primary_moved(exc):
                raise
            self.disconnect()  # the next connect() asks the sentinels where the primary is
            raise RedisConnectionError(f"no longer the primary: {exc}") from exc


class _SentinelSSLConnection(_SentinelConnection, redis.SSLConnection):
    """A TLS connection to the primary Sentinel names."""


class _AsyncSentinelConnection(redis.asyncio.sentinel.SentinelManagedConnection):
    """The asyncio twin of _SentinelConnection."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Send a command, connecting first through the sentinels when not connected."""
        if not self.is_connected:
            await self.connect()
        await super().send_packed_command(command, check_health)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """Read a reply; a reply saying the primary moved drops the connection as a connection error."""
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if not _primary_moved(exc):
                raise
            await self.disconnect()
            raise RedisConnectionError(f"no longer the primary: {exc}") from exc


class _AsyncSentinelSSLConnection(_AsyncSentinelConnection, redis.asyncio.SSLConnection):
    """The asyncio twin of _SentinelSSLConnection."""


class Store:
    """Issue conveyor's Redis commands for one backend; connections are made lazily."""

    def __init__(self, options: Options, keys: Keys, *, client_name: str | None = None) -> None:
        self.options = options
        self.keys = keys
        self._client_name = client_name
        self._client: Any = None  # redis.Redis, or redis.cluster.RedisCluster with CLUSTER
        self._sentinel: redis.sentinel.Sentinel | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        # Script calls go through the transport, on connections of the client's pool.
        self.transport: Transport | ClusterTransport = (
            ClusterTransport(lambda: self.client, self._translate_any)
            if options.cluster
            else Transport(self._new_connection, self._translate_any)
        )
        # HASH_TAG_PER_QUEUE: queues whose names this process has added to the backend's set.
        self._announced: set[str] = set()
        # HASH_TAG_PER_QUEUE: ready tasks each slot (by tag) had at its last claim (which to claim next).
        self._slot_waiting: dict[str, int] = {}
        self._claim_turn = itertools.count()
        # HASH_TAG_PER_QUEUE: one wake-list wait per slot, kept across calls (see wait_for_work).
        self._waits: dict[str, concurrent.futures.Future[Any]] = {}
        self._wait_pool: concurrent.futures.ThreadPoolExecutor | None = None
        # The keys of enqueue.lua besides the task's own, per queue name (built once each).
        self._enqueue_keys: dict[str, tuple[str, ...]] = {}
        # A claim's memo outlives any wait for its reply (a replay comes after a timeout at most).
        self._memo_ms = max(10_000, int(3000 * (options.socket_timeout + options.connect_timeout)))
        self._done_channel = keys.done_channel
        self._done_prefix = keys.done_prefix  # finish_call appends an id itself: no call on the hot path

    # -- connections -------------------------------------------------------------

    def _pool_kwargs(self, tls_class: type, retry: Any) -> dict[str, Any]:
        kwargs = self.options.connection_kwargs()
        # One retry, so a call that timed out or met a connection Redis closed (a restart)
        # is sent again once: every script is safe to repeat (enqueue is idempotent by
        # task id, the rest are fenced by owner). asyncio needs redis.asyncio's own Retry.
        kwargs["retry"] = retry
        if self.options.ssl and not (self.options.url or "").startswith("unix://"):
            kwargs["connection_class"] = tls_class  # SSL=True; a rediss:// URL picks it itself
        if self._client_name:
            kwargs["client_name"] = self._client_name
        return kwargs

    @property
    def client(self) -> redis.Redis:
        """Return the synchronous client, creating its pool on first use."""
        if self._client is None:
            kwargs = self._pool_kwargs(redis.SSLConnection, Retry(NoBackoff(), 1))
            if self.options.cluster:
                self._client = self._cluster_client(redis.cluster.RedisCluster, kwargs)
                return self._client  # type: ignore[no-any-return]
            if self.options.sentinels:
                # Each new connection asks the sentinels for the primary; one that meets
                # READONLY/NOREPLICAS or a broken socket is dropped, so the retry asks again.
                kwargs["connection_class"] = (
                    _SentinelSSLConnection if self.options.ssl else _SentinelConnection
                )
                self._sentinel = redis.sentinel.Sentinel(
                    list(self.options.sentinels), sentinel_kwargs=self.options.sentinel_kwargs()
                )
                name = self.options.service_name
                pool: redis.ConnectionPool = redis.sentinel.SentinelConnectionPool(
                    name, self._sentinel, **kwargs
                )
            elif self.options.url is not None:
                pool = redis.ConnectionPool.from_url(self.options.url, **kwargs)
            else:
                pool = redis.ConnectionPool(**kwargs)
            self._client = redis.Redis(connection_pool=pool)
        return self._client  # type: ignore[no-any-return]

    def _cluster_client(self, cls: Any, kwargs: dict[str, Any]) -> Any:
        """Return a cluster client (sync or asyncio cls) that starts from the configured node."""
        kwargs.pop("db", None)
        kwargs.pop("connection_class", None)  # a rediss:// URL or ssl=True picks TLS itself
        if self.options.ssl:
            kwargs["ssl"] = True
        if self.options.url is not None:
            return cls.from_url(self.options.url, **kwargs)
        return cls(host=self.options.host, port=self.options.port, **kwargs)

    def _async_client(self) -> Any:
        """Return the asyncio client of the running loop (clients are bound to their loop)."""
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is None:
            kwargs = self._pool_kwargs(redis.asyncio.SSLConnection, AsyncRetry(NoBackoff(), 1))
            if self.options.cluster:
                entry = self._cluster_client(redis.asyncio.cluster.RedisCluster, kwargs)
                self._async[loop] = entry
                return entry
            if self.options.sentinels:
                kwargs["connection_class"] = (
                    _AsyncSentinelSSLConnection if self.options.ssl else _AsyncSentinelConnection
                )
                sentinel = redis.asyncio.sentinel.Sentinel(
                    list(self.options.sentinels), sentinel_kwargs=self.options.sentinel_kwargs()
                )
                pool: redis.asyncio.ConnectionPool = redis.asyncio.sentinel.SentinelConnectionPool(
                    self.options.service_name, sentinel, **kwargs
                )
            elif self.options.url is not None:
                pool = redis.asyncio.ConnectionPool.from_url(self.options.url, **kwargs)
            else:
                pool = redis.asyncio.ConnectionPool(**kwargs)
            entry = redis.asyncio.Redis(connection_pool=pool)
            self._async[loop] = entry
        return entry

    def _new_connection(self) -> Any:
        return self.client.connection_pool.make_connection()

    def close(self) -> None:
        """Close the synchronous pool."""
        self.transport.close()
        if self._wait_pool is not None:
            self._wait_pool.shutdown(wait=False, cancel_futures=True)
            self._wait_pool, self._waits = None, {}
        if self._client is not None:
            self._client.close()
            if not self.options.cluster:
                self._client.connection_pool.disconnect()
            self._client = None
        if self._sentinel is not None:
            self._sentinel.close()
            self._sentinel = None

    # -- error translation -------------------------------------------------------

    def _translate(self, exc: RedisError) -> ConveyorError:
        target = self.options.describe_target()
        if isinstance(exc, AuthenticationError) or "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
            return RedisUnavailable(
                f"Redis at {target} refused the credentials ({exc}); check USERNAME/PASSWORD "
                "or the user:password part of URL."
            )
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            return RedisUnavailable(f"Redis at {target} is unreachable: {exc}")
        if isinstance(exc, ResponseError):
            return ConveyorError(f"Redis at {target} answered with an error: {exc}")
        return ConveyorError(f"Redis error from {target}: {exc}")

    def _translate_any(self, exc: RedisError | OSError) -> ConveyorError:
        if isinstance(exc, RedisError):
            return self._translate(exc)
        return RedisUnavailable(f"Redis at {self.options.describe_target()}: {exc}")

    @contextmanager
    def _boundary(self) -> Iterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise self._translate_any(exc) from exc
        except RedisClusterException as exc:  # the cluster client's own (no node reachable, no slot map)
            raise RedisUnavailable(f"Redis Cluster at {self.options.describe_target()}: {exc}") from exc

    @asynccontextmanager
    async def _aboundary(self) -> Any:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise self._translate_any(exc) from exc
        except RedisClusterException as exc:
            raise RedisUnavailable(f"Redis Cluster at {self.options.describe_target()}: {exc}") from exc

    def slots(self, queues: Sequence[str]) -> list[tuple[Keys, list[str]]]:
        """Group queues by the slot their keys live in: one group unless HASH_TAG_PER_QUEUE."""
        if not self.keys.per_queue:
            return [(self.keys, list(queues))]
        groups: dict[str, tuple[Keys, list[str]]] = {}
        for queue in queues:
            k = self.keys.of(queue)
            groups.setdefault(k.tag, (k, []))[1].append(queue)
        return list(groups.values())

    def announce(self, queue: str) -> None:
        """Add a queue to the backend's set of queues (per queue tags: scripts add it to their slot's)."""
        if self.keys.per_queue and queue not in self._announced:
            with self._boundary():
                self.client.sadd(self.keys.queues, queue)
            self._announced.add(queue)

    async def aannounce(self, queue: str) -> None:
        """Add a queue to the backend's set of queues like announce(), on the running event loop."""
        if self.keys.per_queue and queue not in self._announced:
            async with self._aboundary():
                await self._async_client().sadd(self.keys.queues, queue)
            self._announced.add(queue)

    # -- web side ----------------------------------------------------------------

    def _enqueue_call(
        self,
        task_id: str,
        queue: str,
        priority: int,
        due_ms: int | None,
        fields: dict[str, str],
        unique: UniqueLock | None = None,
    ) -> tuple[list[str], list[Any]]:
        k = self.keys.of(queue)
        shared = self._enqueue_keys.get(queue)
        if shared is None:
            if len(self._enqueue_keys) >= 1024:  # any queue name may come: keep the memo small
                self._enqueue_keys.clear()
            shared = (
                k.ready(queue),
                k.ready_since(queue),
                k.scheduled(queue),
                k.queues,
                k.seq,
                k.wake(queue),
            )
            self._enqueue_keys[queue] = shared
        keys = [k.task_prefix + task_id, *shared]
        args: list[Any] = [task_id, queue, priority, "" if due_ms is None else due_ms, WAKE_CAP]
        if unique is None:
            args += ("", "0")
        else:
            keys += (unique.key, k.task_prefix)
            args += (unique.window_ms, "1" if unique.while_running else "0")
        for name, value in fields.items():
            args += (name, value)
        return keys, args

    @staticmethod
    def _enqueued(reply: Any) -> bool | Holder:
        if type(reply) is int:
            return bool(reply)
        holder, flat = reply
        return Holder(task_id=holder.decode(), fields=dict(zip(flat[::2], flat[1::2], strict=True)))

    def enqueue(
        self,
        task_id: str,
        queue: str,
        priority: int,
        due_ms: int | None,
        fields: dict[str, str],
        *,
        unique: UniqueLock | None = None,
    ) -> bool | Holder:
        """Store a task atomically in one round trip; False when the id already existed.

        With a unique lock whose task is still READY (or RUNNING, if that holds the lock),
        nothing is stored and that task comes back as a Holder.
        """
        keys, args = self._enqueue_call(task_id, queue, priority, due_ms, fields, unique)
        if self.keys.per_queue:
            self.announce(queue)
        (reply,) = self.transport.run([ScriptCall(name="enqueue", keys=keys, args=args)])
        return self._enqueued(reply)

    async def aenqueue(
        self,
        task_id: str,
        queue: str,
        priority: int,
        due_ms: int | None,
        fields: dict[str, str],
        *,
        unique: UniqueLock | None = None,
    ) -> bool | Holder:
        """Store a task like enqueue(), on the running event loop."""
        keys, args = self._enqueue_call(task_id, queue, priority, due_ms, fields, unique)
        if self.keys.per_queue:
            await self.aannounce(queue)
        (reply,) = await self.arun([ScriptCall(name="enqueue", keys=keys, args=args)])
        return self._enqueued(reply)

    def enqueue_many_call(
        self,
        queue: str,
        priority: int,
        due_ms: int | None,
        shared: dict[str, str],
        records: Sequence[tuple[str, str, str]],
    ) -> ScriptCall:
        """Return the script call that stores (task id, args JSON, kwargs JSON) records atomically."""
        k = self.keys.of(queue)
        keys = [k.ready(queue), k.ready_since(queue), k.scheduled(queue), k.queues, k.seq, k.wake(queue)]
        args: list[Any] = [queue, priority, "" if due_ms is None else due_ms, WAKE_CAP, len(shared)]
        for name, value in shared.items():
            args += (name, value)
        prefix = k.task_prefix
        for task_id, args_json, kwargs_json in records:
            keys.append(prefix + task_id)
            args += (task_id, args_json, kwargs_json)
        return ScriptCall(name="enqueue_many", keys=keys, args=args)

    async def arun(self, calls: Sequence[ScriptCall], *, check: bool = True) -> list[Any]:
        """Send script calls in one round trip on the running event loop, like run()."""
        async with self._aboundary():
            client = self._async_client()
            replies: list[Any] = [None] * len(calls)
            todo = list(range(len(calls)))
            deadline, pause = time.monotonic() + CLUSTER_WAIT, 0.02
            while True:  # calls refused while their slot moves go again (CLUSTER; see ClusterTransport.run)
                try:
                    for i, reply in zip(
                        todo, await self._acomplete(client, [calls[i] for i in todo]), strict=True
                    ):
                        replies[i] = reply
                    todo = [i for i in todo if isinstance(replies[i], (TryAgainError, ClusterError))]
                except (ClusterError, TryAgainError):
                    if not self.options.cluster or time.monotonic() > deadline:
                        raise
                except (RedisConnectionError, RedisTimeoutError, OSError):  # a primary gone: a failover?
                    if not self.options.cluster or time.monotonic() > deadline:
                        raise
                    with suppress(RedisError, RedisClusterException, OSError):
                        await client.nodes_manager.initialize()
                else:
                    if not todo or not self.options.cluster or time.monotonic() > deadline:
                        break
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
        translated = [self._translate(r) if isinstance(r, RedisError) else r for r in replies]
        if check:
            for reply in translated:
                if isinstance(reply, ConveyorError):
                    raise reply
        return translated

    async def _acomplete(self, client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
        """Send calls in one pipeline; load scripts Redis lost (a restart, SCRIPT FLUSH), send those again."""
        replies = await self._apipeline(client, calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            for name in {calls[i].name for i in missing}:
                await client.script_load(script_source(name))
            again = await self._apipeline(client, [calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    @staticmethod
    async def _apipeline(client: Any, calls: Sequence[ScriptCall]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command("EVALSHA", script_sha(call.name), len(call.keys), *call.keys, *call.args)
        return list(await pipe.execute(raise_on_error=False))

    def get(self, task_id: str) -> dict[bytes, bytes]:
        """Return a task's raw hash (empty when unknown)."""
        with self._boundary():
            return self.client.hgetall(self.keys.task(task_id))  # type: ignore[return-value]

    async def aget(self, task_id: str) -> dict[bytes, bytes]:
        """Return a task's raw hash like get(), on the running event loop."""
        async with self._aboundary():
            client = self._async_client()
            return await client.hgetall(self.keys.task(task_id))  # type: ignore[no-any-return]

    # -- waiting for results (conveyor.waiting) ------------------------------------------

    def look_call(self, task_id: str) -> ScriptCall:
        """Return the script call that reads a task for a waiter and marks it waited (see wait.lua)."""
        return ScriptCall(name="wait", keys=[self.keys.task(task_id)], args=[])

    @staticmethod
    def _parse_look(reply: Any) -> dict[bytes, bytes] | str | None:
        if reply is None:
            return None
        if isinstance(reply, list):
            return dict(zip(reply[::2], reply[1::2], strict=True))
        return bytes(reply).decode(errors="replace")

    def look(self, task_id: str) -> dict[bytes, bytes] | str | None:
        """Return a finished task's record, else its status (now marked waited); None when unknown."""
        (reply,) = self.run([self.look_call(task_id)])
        return self._parse_look(reply)

    async def alook(self, task_ids: Sequence[str]) -> list[dict[bytes, bytes] | str | None]:
        """Look at many tasks like look(), in one round trip on the running event loop."""
        sha = script_sha("wait")
        async with self._aboundary():
            client = self._async_client()
            for attempt in (1, 2):
                pipe = client.pipeline(transaction=False)
                for task_id in task_ids:
                    pipe.execute_command("EVALSHA", sha, 1, self.keys.task(task_id))
                replies = await pipe.execute(raise_on_error=False)
                if attempt == 1 and any(isinstance(r, NoScriptError) for r in replies):
                    await client.script_load(script_source("wait"))  # Redis lost it: load, send again
                    continue
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
                return [self._parse_look(r) for r in replies]
        raise AssertionError("unreachable")

    def block_until_done(self, task_id: str, timeout: float) -> bool:
        """Block until the task's done list holds its token or timeout seconds pass; True when it does.

        BLMOVE from the list onto itself leaves the token, so every waiter of the task wakes.
        """
        key = self.keys.done(task_id)
        with self._boundary():
            return (
                self.client.execute_command("BLMOVE", key, key, "LEFT", "LEFT", max(timeout, 0.001))
                is not None
            )

    @asynccontextmanager
    async def adone_subscription(self) -> Any:
        """Yield a function returning the next finished waited-for task id (None after timeout seconds).

        The subscription is confirmed before the block starts; it holds one connection of
        the running loop's pool until the block ends. Redis errors leave as ConveyorError.
        """
        loop = asyncio.get_running_loop()
        silence = self.options.socket_timeout  # quiet this long: PING; twice as long: dead
        async with self._aboundary():
            node = await self._async_node_client() if self.options.cluster else None
            pubsub = (node or self._async_client()).pubsub()
            try:
                await pubsub.subscribe(self._done_channel)
                heard = loop.time()
                while (await pubsub.get_message(timeout=0.1)) is None:  # the confirmation
                    if loop.time() - heard > silence:
                        raise RedisTimeoutError("no confirmation of SUBSCRIBE")
                pinged = heard = loop.time()

                async def next_id(timeout: float) -> str | None:
                    nonlocal heard, pinged
                    message = await pubsub.get_message(timeout=timeout)
                    now = loop.time()
                    if message is not None:
                        heard = now
                        if message.get("type") == "message":
                            return bytes(message["data"]).decode(errors="replace")
                    elif now - heard > 2 * silence:
                        raise RedisTimeoutError(f"no answer on the subscription for {now - heard:.1f} s")
                    elif now - heard > silence and now - pinged > silence:
                        await pubsub.ping()
                        pinged = now
                    return None

                yield next_id
            finally:
                await pubsub.aclose()
                if node is not None:
                    await node.aclose()

    async def _async_node_client(self) -> Any:
        """Return a plain client of one cluster node for SUBSCRIBE (a PUBLISH reaches every node)."""
        cluster = self._async_client()
        await cluster.initialize()
        node = cluster.get_random_node()
        kwargs = self._pool_kwargs(redis.asyncio.SSLConnection, AsyncRetry(NoBackoff(), 1))
        if self.options.url is not None:
            kwargs.update(redis.asyncio.connection.parse_url(self.options.url))  # credentials, TLS
        kwargs.update(host=node.host, port=node.port, db=0)
        return redis.asyncio.Redis(**kwargs)

    def ping(self) -> bool:
        """Round-trip to Redis; raise RedisUnavailable when that fails."""
        with self._boundary():
            return bool(self.client.ping())

    # -- worker side -------------------------------------------------------------

    def known_queues(self) -> set[str]:
        """Return every queue name that has ever received a task."""
        with self._boundary():
            return {q.decode() for q in self.client.smembers(self.keys.queues)}  # type: ignore[union-attr]

    def claim_calls(
        self, queues: Sequence[str], worker_id: str, lease_ms: int, count: int, claim_id: str
    ) -> list[ScriptCall]:
        """Return the script calls that claim up to count tasks (see claim()); one unless HASH_TAG_PER_QUEUE.

        claim_id names this call, unique per worker: the same call sent again (its reply
        was lost) returns what the first one claimed instead of claiming more. With
        queues in several slots, one slot's call claims: the slot that had the most ready
        tasks at its last count, in turns on a tie. The other slots are only counted, and
        only when that slot may run dry in this round trip or every COUNT_EVERY round
        trips; in between their last counts stand.
        """
        if not self.keys.per_queue:  # the hot path: one slot, one call
            return [self._claim_call(self.keys, queues, worker_id, lease_ms, count, claim_id)]
        groups = self.slots(queues)
        if len(groups) == 1:
            k, group = groups[0]
            return [self._claim_call(k, group, worker_id, lease_ms, count, claim_id)]
        turn = next(self._claim_turn)
        waiting = [self._slot_waiting.get(k.tag, 1) for k, _ in groups]  # never counted: maybe work
        most = max(waiting)
        tied = [i for i, w in enumerate(waiting) if w == most]
        chosen = tied[turn % len(tied)]
        recount = turn % COUNT_EVERY == 0 or waiting[chosen] <= count
        return [
            self._claim_call(k, group, worker_id, lease_ms, count if i == chosen else 0, claim_id)
            for i, (k, group) in enumerate(groups)
            if i == chosen or recount
        ]

    def _claim_call(
        self, k: Keys, queues: Sequence[str], worker_id: str, lease_ms: int, count: int, claim_id: str
    ) -> ScriptCall:
        keys = [k.task_prefix, k.claim_memo(claim_id), k.paused]
        for queue in queues:
            keys += (k.ready(queue), k.ready_since(queue), k.running(queue))
        return ScriptCall(name="claim", keys=keys, args=[worker_id, lease_ms, count, self._memo_ms, *queues])

    def parse_claimed(
        self, replies: Sequence[Any], calls: Sequence[ScriptCall], queues: Sequence[str]
    ) -> tuple[list[Claimed], int]:
        """Turn the replies to claim_calls(queues, ...) into Claimed records and the count still ready.

        A slot of queues the round trip did not count adds its last count.
        """
        if not self.keys.per_queue:
            return self._parse_claimed(replies[0], calls[0].args[4:])
        claimed: list[Claimed] = []
        waiting = 0
        heard: set[str] = set()
        for flat, call in zip(replies, calls, strict=True):
            found, left = self._parse_claimed(flat, call.args[4:])
            claimed += found
            waiting += left
            tag = call.keys[0][: call.keys[0].index("}") + 1]  # the task prefix starts with the slot's tag
            self._slot_waiting[tag] = left
            heard.add(tag)
        for k, _ in self.slots(queues):
            if k.tag not in heard:
                waiting += self._slot_waiting.get(k.tag, 0)
        return claimed, waiting

    @staticmethod
    def _parse_claimed(flat: Sequence[Any], queues: Sequence[str]) -> tuple[list[Claimed], int]:
        claimed = []
        for i in range(0, len(flat) - 1, 3):
            values = flat[i + 2]
            fields = dict(zip(values[::2], values[1::2], strict=True))
            claimed.append(Claimed(task_id=flat[i].decode(), queue=queues[int(flat[i + 1])], fields=fields))
        return claimed, int(flat[-1])

    def claim(
        self, queues: Sequence[str], worker_id: str, lease_ms: int, count: int, claim_id: str | None = None
    ) -> list[Claimed]:
        """Claim up to count ready tasks, best first across queues, under a lease."""
        if not queues or count < 1:
            return []
        claim_id = claim_id or os.urandom(8).hex()
        found: list[Claimed] = []
        for turn in range(len(self.slots(queues))):  # one turn unless HASH_TAG_PER_QUEUE
            name = f"{claim_id}:{turn}" if turn else claim_id  # a replay of the first turn finds its memo
            calls = self.claim_calls(queues, worker_id, lease_ms, count - len(found), name)
            claimed, waiting = self.parse_claimed(self.run(calls), calls, queues)
            found += claimed
            if len(found) >= count or not waiting:
                break
        return found

    def finish_call(
        self, task_id: str, queue: str, token: str, status: str, ttl: int, fields: dict[str, str]
    ) -> ScriptCall:
        """Return the script call that records a final state (see finish())."""
        args: list[Any] = [task_id, token, status, ttl, self._done_channel, DONE_TTL_MS]
        for name, value in fields.items():
            args += (name, value)
        k = self.keys.of(queue)
        index = k.succeeded(queue) if status == "SUCCESSFUL" else k.failed(queue)
        done = (k.done_prefix if k.per_queue else self._done_prefix) + task_id  # no call on the hot path
        return ScriptCall(name="finish", keys=[k.task(task_id), k.running(queue), index, done], args=args)

    def finish(
        self, task_id: str, queue: str, token: str, status: str, ttl: int, fields: dict[str, str]
    ) -> bool:
        """Record a final state if this delivery still holds the lease; False when it was lost."""
        (stored,) = self.run([self.finish_call(task_id, queue, token, status, ttl, fields)])
        return bool(stored)

    def retry_call(
        self, task_id: str, queue: str, token: str, backoff_ms: int, fields: dict[str, str]
    ) -> ScriptCall:
        """Return the script call that schedules another attempt (see retry())."""
        k = self.keys.of(queue)
        args: list[Any] = [task_id, token, backoff_ms, WAKE_CAP]
        for name, value in fields.items():
            args += (name, value)
        keys = [k.task(task_id), k.running(queue), k.scheduled(queue), k.wake(queue)]
        return ScriptCall(name="retry", keys=keys, args=args)

    def retry(
        self, task_id: str, queue: str, token: str, backoff_ms: int, fields: dict[str, str]
    ) -> int | None:
        """Schedule another attempt after a backoff; return its due time in ms, None if lost."""
        (due,) = self.run([self.retry_call(task_id, queue, token, backoff_ms, fields)])
        return int(due) or None

    def postpone_call(self, task_id: str, queue: str, token: str, delay_ms: int) -> ScriptCall:
        """Return the script call that undoes a claim and makes the task due again after a delay."""
        k = self.keys.of(queue)
        keys = [k.task(task_id), k.running(queue), k.scheduled(queue), k.wake(queue)]
        return ScriptCall(name="postpone", keys=keys, args=[task_id, token, delay_ms, WAKE_CAP])

    def run(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Send script calls in one round trip (see Transport.run) and return their replies."""
        return self.transport.run(calls)

    def renew(self, leases: Sequence[tuple[str, str, str]], lease_ms: int) -> list[int]:
        """Renew the leases of (task id, queue, token) triples in one round trip.

        Each answer is RENEWED, CANCEL_REQUESTED (renewed, and an operator asked to cancel
        the task) or 0 (the lease was lost).
        """
        k = self.keys
        calls = [
            ScriptCall(
                name="renew",
                keys=[k.task(task_id), k.of(queue).running(queue)],
                args=[task_id, token, lease_ms],
            )
            for task_id, queue, token in leases
        ]
        return [int(r) for r in self.run(calls)] if calls else []

    def release(self, task_id: str, queue: str, token: str, *, started: bool = True) -> bool:
        """Give an unfinished task back to its queue; False when the lease was already lost.

        started=False undoes the claim of a task that never ran (this worker leaves worker_ids).
        """
        k = self.keys.of(queue)
        keys = [k.task(task_id), k.running(queue), k.ready(queue), k.ready_since(queue), k.wake(queue)]
        args = [task_id, token, WAKE_CAP, "1" if started else "0"]
        (released,) = self.run([ScriptCall(name="release", keys=keys, args=args)])
        return bool(released)

    def reclaim(
        self,
        queues: Sequence[str],
        *,
        limit: int,
        max_deliveries: int,
        failed_ttl: int,
        lease_ms: int,
        outage_ms: int,
    ) -> Reclaimed:
        """Requeue (or fail, past max_deliveries) tasks whose lease expired.

        A gap of more than outage_ms since any worker last reclaimed is taken for an
        outage: then nothing is reclaimed for lease_ms, so live owners renew first.
        """
        args = [
            limit,
            max_deliveries,
            failed_ttl,
            WAKE_CAP,
            lease_ms,
            outage_ms,
            self._done_channel,
            DONE_TTL_MS,
        ]
        calls = []
        for k, group in self.slots(queues):  # reclaim state, and its outage hold, are per slot
            keys = [k.task_prefix, k.reclaim_state, k.done_prefix]
            for q in group:
                keys += (k.running(q), k.ready(q), k.ready_since(q), k.wake(q), k.failed(q))
            calls.append(ScriptCall(name="reclaim", keys=keys, args=args))
        replies = self.run(calls)
        return Reclaimed(
            requeued=sum(int(r[0]) for r in replies),
            failed=sum(int(r[1]) for r in replies),
            held_ms=max(int(r[2]) for r in replies),
        )

    def promote(self, queues: Sequence[str], *, limit: int) -> Promotion:
        """Make due scheduled tasks ready; report the next due time by the server clock."""
        calls = []
        for k, group in self.slots(queues):
            keys = [k.task_prefix, k.seq]
            for q in group:
                keys += (k.scheduled(q), k.ready(q), k.ready_since(q), k.wake(q))
            calls.append(ScriptCall(name="promote", keys=keys, args=[limit, WAKE_CAP]))
        replies = self.run(calls)
        due = [int(r[1]) for r in replies if int(r[1]) >= 0]
        return Promotion(
            promoted=sum(int(r[0]) for r in replies),
            next_due_ms=min(due) if due else None,
            server_now_ms=max(int(r[2]) for r in replies),
        )

    def wait_for_work(self, queues: Sequence[str], timeout: float) -> bool:
        """Block until some queue signals new work or the timeout passes; True if woken."""
        if not queues:  # nothing to listen on yet (no task ever enqueued): still wait, never spin
            time.sleep(timeout)
            return False
        groups = self.slots(queues)
        if len(groups) == 1:
            k, group = groups[0]
            with self._boundary():
                return self.client.blpop([k.wake(q) for q in group], timeout=max(timeout, 0.001)) is not None
        return self._wait_on_slots(groups, timeout)

    def _wait_on_slots(self, groups: list[tuple[Keys, list[str]]], timeout: float) -> bool:
        """Wait on each slot's wake lists at once (HASH_TAG_PER_QUEUE: one BLPOP cannot span slots).

        A slot's BLPOP runs on a thread of a small pool and is kept across calls until it
        returns, so a slot is never waited on twice and a wake-up is never dropped.
        """
        if self._wait_pool is None:
            self._wait_pool = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="conveyor-wait")
        deadline = time.monotonic() + max(timeout, 0.001)
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            for k, group in groups:
                if k.tag not in self._waits:
                    keys = [k.wake(q) for q in group]
                    self._waits[k.tag] = self._wait_pool.submit(self.client.blpop, keys, timeout=left)
            waits = [self._waits[k.tag] for k, _ in groups]
            concurrent.futures.wait(
                waits, timeout=left + 0.05, return_when=concurrent.futures.FIRST_COMPLETED
            )
            woken = False
            for (k, _), wait in zip(groups, waits, strict=True):
                if wait.done():
                    del self._waits[k.tag]
                    with self._boundary():
                        woken = wait.result() is not None or woken
            if woken or time.monotonic() >= deadline:
                return woken

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """Read per-queue counts by the server clock: TIME, then six commands per queue in one trip."""
        k = self.keys
        with self._boundary():
            seconds, micros = self.client.time()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            pipe = self.client.pipeline(transaction=False)
            for q in queues:
                v = k.of(q)
                pipe.zcard(v.ready(q))
                pipe.zcard(v.scheduled(q))
                pipe.zcount(v.scheduled(q), "-inf", now_ms)  # due as promote sees it: score <= now
                pipe.zcard(v.running(q))
                pipe.zrange(v.ready_since(q), 0, 0, withscores=True)
                pipe.sismember(v.paused, q)
            replies = pipe.execute() if queues else []
        stats = []
        for i, q in enumerate(queues):
            ready, scheduled, due, running, oldest, paused = replies[6 * i : 6 * i + 6]
            stats.append(
                QueueStats(
                    queue=q,
                    ready=int(ready),
                    scheduled=int(scheduled),
                    due=int(due),
                    running=int(running),
                    oldest_ready_ms=int(oldest[0][1]) if oldest else None,
                    read_at_ms=now_ms,
                    paused=bool(paused),
                )
            )
        return stats

    def cancel_signal(self, queues: Sequence[str] = ()) -> int:
        """Return the counter every cancel of a running task in these queues bumps (0 before the first).

        Without HASH_TAG_PER_QUEUE one counter serves every queue; with it, the sum of the
        counters of the queues' slots.
        """
        with self._boundary():
            if not self.keys.per_queue:
                return int(self.client.get(self.keys.cancels) or 0)  # type: ignore[arg-type]
            pipe = self.client.pipeline(transaction=False)
            for k, _ in self.slots(queues):
                pipe.get(k.cancels)
            return sum(int(v or 0) for v in pipe.execute()) if queues else 0

    def heartbeat(self, worker_id: str, description: str, ttl_ms: int) -> int:
        """Note this worker alive with its JSON description for ttl_ms (0: it leaves); return server ms."""
        k = self.keys
        call = ScriptCall(
            name="heartbeat", keys=[k.worker(worker_id), k.workers], args=[worker_id, description, ttl_ms]
        )
        (now_ms,) = self.run([call])
        return int(now_ms)

    def trim_indexes(self, queues: Sequence[str], *, result_ttl: int, failed_ttl: int, limit: int) -> int:
        """Drop index entries of results past their TTL, at most limit per index; return how many."""
        if not queues:
            return 0
        calls = []
        for k, group in self.slots(queues):
            keys: list[str] = []
            for q in group:
                keys += (k.succeeded(q), k.failed(q))
            calls.append(ScriptCall(name="trim", keys=keys, args=[result_ttl, failed_ttl, limit]))
        return sum(int(dropped) for dropped in self.run(calls))

    # -- operator side (conveyor.ops) -------------------------------------------------

    def index_counts(self, queues: Sequence[str]) -> list[tuple[int, int]]:
        """Return (failed, succeeded) results kept per queue, in one round trip."""
        k = self.keys
        with self._boundary():
            pipe = self.client.pipeline(transaction=False)
            for q in queues:
                pipe.zcard(k.of(q).failed(q))
                pipe.zcard(k.of(q).succeeded(q))
            replies = pipe.execute() if queues else []
        return [(int(replies[2 * i]), int(replies[2 * i + 1])) for i in range(len(queues))]

    def newest(self, sets: Sequence[str], below: int | None, count: int) -> list[list[tuple[bytes, int]]]:
        """Return, per sorted set, its entries scored at or below `below` (all when None), highest first.

        Each set gives count entries more than it holds at exactly `below`, so a caller that
        skips those it has seen (equal score, id not lower) still has count left.
        """
        top: Any = "+inf" if below is None else below
        with self._boundary():
            ties: list[Any] = [0] * len(sets)
            if below is not None:
                pipe = self.client.pipeline(transaction=False)
                for key in sets:
                    pipe.zcount(key, below, below)
                ties = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for key, tied in zip(sets, ties, strict=True):
                pipe.zrevrangebyscore(key, top, "-inf", start=0, num=count + int(tied), withscores=True)
            replies = pipe.execute() if sets else []
        return [[(member, int(score)) for member, score in reply] for reply in replies]

    def index_members(self, key: str, low: int | None, start: int, count: int) -> list[bytes]:
        """Return up to count ids of a sorted set scored at or above low (all when None), lowest first."""
        with self._boundary():
            return self.client.zrangebyscore(  # type: ignore[return-value]
                key, "-inf" if low is None else low, "+inf", start=start, num=count
            )

    def count_between(self, key: str, low: int | str, high: int | str) -> int:
        """Return how many members of a sorted set score between low and high (inclusive)."""
        with self._boundary():
            return int(self.client.zcount(key, low, high))  # type: ignore[arg-type]

    def fields_of(self, task_ids: Sequence[str], names: Sequence[str]) -> list[list[bytes | None]]:
        """Return the named fields of many task hashes, in one round trip."""
        with self._boundary():
            pipe = self.client.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hmget(self.keys.task(task_id), list(names))
            return pipe.execute() if task_ids else []  # type: ignore[no-any-return]

    def due_at(self, queue: str, task_id: str) -> int | None:
        """Return when a waiting task falls due (ms), None when it is not waiting."""
        with self._boundary():
            score = self.client.zscore(self.keys.of(queue).scheduled(queue), task_id)
        return None if score is None else int(score)  # type: ignore[arg-type]

    def stranded(self, queues: Sequence[str]) -> dict[str, int]:
        """Return, per queue, the unfinished tasks kept under the other layout (HASH_TAG_PER_QUEUE flipped).

        Workers look only at the layout the option names, so such tasks wait until a worker
        runs with the option as it was when they were enqueued (docs/cluster.md).
        """
        other = Keys(self.keys.prefix, per_queue=not self.keys.per_queue)
        with self._boundary():
            pipe = self.client.pipeline(transaction=False)
            for q in queues:
                k = other.of(q)
                pipe.zcard(k.ready(q))
                pipe.zcard(k.scheduled(q))
                pipe.zcard(k.running(q))
            replies = pipe.execute() if queues else []
        counts = {q: sum(int(r) for r in replies[3 * i : 3 * i + 3]) for i, q in enumerate(queues)}
        return {q: n for q, n in counts.items() if n}

    def knows_queue(self, queue: str) -> bool:
        """Tell whether a queue name has seen a task."""
        with self._boundary():
            return bool(self.client.sismember(self.keys.queues, queue))

    def set_paused(self, queue: str, paused: bool) -> None:
        """Add a queue to the paused set, or take it out and wake an idle worker for its tasks."""
        k = self.keys.of(queue)
        with self._boundary():
            if paused:
                self.client.sadd(k.paused, queue)
                return
            pipe = self.client.pipeline(transaction=True)
            pipe.srem(k.paused, queue)
            pipe.lpush(k.wake(queue), "1")
            pipe.ltrim(k.wake(queue), 0, WAKE_CAP - 1)
            pipe.execute()

    def live_workers(self, now_ms: int | None = None) -> tuple[int, list[bytes]]:
        """Return the server time (ms) and the heartbeat JSON of every worker whose beat has not run out.

        A caller that has just read the server clock passes it as now_ms, saving a TIME.
        """
        k = self.keys
        with self._boundary():
            if now_ms is None:
                seconds, micros = self.client.time()
                now_ms = int(seconds) * 1000 + int(micros) // 1000
            ids: list[bytes] = self.client.zrangebyscore(k.workers, now_ms, "+inf")  # type: ignore[assignment]
            beats: list[bytes | None] = self.client.mget([k.worker(i.decode()) for i in ids]) if ids else []  # type: ignore[assignment]
        return now_ms, [b for b in beats if b is not None]

    def operator_calls(self, calls: Sequence[ScriptCall], per_trip: int = 100) -> list[Any]:
        """Send many operator script calls, per_trip to a round trip; return their replies."""
        replies: list[Any] = []
        for start in range(0, len(calls), per_trip):
            replies += self.run(calls[start : start + per_trip])
        return replies

    def cancel_call(self, task_id: str, queue: str, failed_ttl: int, by: str) -> ScriptCall:
        """Return the script call that cancels one task (see cancel.lua)."""
        k = self.keys.of(queue)
        keys = [
            k.task(task_id),
            k.ready(queue),
            k.ready_since(queue),
            k.scheduled(queue),
            k.failed(queue),
            k.cancels,
            k.done(task_id),
        ]
        return ScriptCall(
            name="cancel", keys=keys, args=[task_id, failed_ttl, by, self._done_channel, DONE_TTL_MS]
        )

    def requeue_call(self, task_id: str, queue: str) -> ScriptCall:
        """Return the script call that puts a FAILED task back in its queue (see requeue.lua)."""
        k = self.keys.of(queue)
        keys = [
            k.task(task_id),
            k.ready(queue),
            k.ready_since(queue),
            k.failed(queue),
            k.seq,
            k.wake(queue),
            k.done(task_id),
        ]
        return ScriptCall(name="requeue", keys=keys, args=[task_id, WAKE_CAP])

    def delete_call(self, task_id: str, queue: str) -> ScriptCall:
        """Return the script call that deletes one task no worker holds (see delete.lua)."""
        k = self.keys.of(queue)
        keys = [
            k.task(task_id),
            k.ready(queue),
            k.ready_since(queue),
            k.scheduled(queue),
            k.failed(queue),
            k.succeeded(queue),
            k.done(task_id),
        ]
        return ScriptCall(name="delete", keys=keys, args=[task_id, self._done_channel, DONE_TTL_MS])

    def purge_index(self, queue: str, index: str, status: str, cutoff_ms: int, batch: int) -> int:
        """Delete up to batch tasks of a queue's index finished by cutoff_ms; return entries removed."""
        call = ScriptCall(
            name="purge", keys=[self.keys.of(queue).task_prefix, index], args=[cutoff_ms, batch, status]
        )
        (removed,) = self.run([call])
        return int(removed)

    def drop_ready(self, queue: str, batch: int) -> int:
        """Delete up to batch READY tasks of a queue (ready, then waiting); return entries removed."""
        k = self.keys.of(queue)
        keys = [k.task_prefix, k.ready(queue), k.ready_since(queue), k.scheduled(queue), k.done_prefix]
        args = [batch, self._done_channel, DONE_TTL_MS]
        (removed,) = self.run([ScriptCall(name="drop", keys=keys, args=args)])
        return int(removed)

    def claim_project(self, project: str) -> str:
        """Name project as the owner of this prefix unless one already is; return the owner."""
        with self._boundary():
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.keys.project, project, nx=True)
            pipe.get(self.keys.project)
            _, owner = pipe.execute()
        return bytes(owner).decode(errors="replace")

    def project_owner(self) -> str | None:
        """Return the project that owns this prefix, or None when none has claimed it yet."""
        with self._boundary():
            owner = self.client.get(self.keys.project)
        return None if owner is None else bytes(owner).decode(errors="replace")  # type: ignore[arg-type]

    def server_time_ms(self) -> int:
        """Return the Redis server's clock in ms."""
        with self._boundary():
            seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def durability(self) -> Durability | None:
        """Return the server's eviction and persistence settings; None when CONFIG GET is refused.

        Managed services and ACL users without +config refuse it (or rename the command).
        On a Redis Cluster every primary is asked and the first that risks tasks is returned.
        """
        with self._boundary():
            if not self.options.cluster:
                return self._durability_of(self.client)
            client: Any = self.client
            found = [self._durability_of(client.get_redis_connection(n)) for n in client.get_primaries()]
        if any(d is None for d in found):
            return None
        risky = [d for d in found if d is not None and (d.eviction_risk() or d.persistence_risk())]
        return (risky or found)[0]

    @staticmethod
    def _durability_of(client: redis.Redis) -> Durability | None:
        pipe = client.pipeline(transaction=False)
        for name in PARAMETERS:
            pipe.config_get(name)
        replies = pipe.execute(raise_on_error=False)
        if any(isinstance(reply, ResponseError) for reply in replies):
            return None
        config: dict[str, str] = {}
        for reply in replies:
            for name, value in dict(reply).items():
                config[_text(name)] = _text(value)
        return Durability.from_config(config)

    def call(self, fn: Callable[[redis.Redis], Any]) -> Any:
        """Run fn with the client inside the error boundary (for tools and tests)."""
        with self._boundary():
            return fn(self.client)

    # -- periodic tasks (conveyor_worker.scheduler) -------------------------------------

    def survey_schedule(
        self, entries: Sequence[tuple[str, str]], *, stale_ms: int, limit: int
    ) -> tuple[int, list[EntryState]]:
        """Read the (name, queue) entries and the server time (ms); drop entries undeclared for stale_ms.

        Entries live in their queue's slot, so with HASH_TAG_PER_QUEUE there is one call per slot.
        """
        by_slot: dict[str, tuple[Keys, list[str]]] = {}
        for name, queue in entries:
            k = self.keys.of(queue)
            by_slot.setdefault(k.tag, (k, []))[1].append(name)
        if not by_slot:
            by_slot[self.keys.tag] = (self.keys, [])
        calls = [
            ScriptCall(
                name="survey",
                keys=[k.periodics, k.periodic_prefix, *(k.periodic(n) for n in names)],
                args=[stale_ms, limit, *names],
            )
            for k, names in by_slot.values()
        ]
        found: dict[str, EntryState] = {}
        now_ms = 0
        for (_, names), (now, *flat) in zip(by_slot.values(), self.run(calls), strict=True):
            now_ms = max(now_ms, int(now))
            for i, name in enumerate(names):
                next_ms, fingerprint = flat[2 * i], flat[2 * i + 1]
                found[name] = EntryState(
                    next_ms=int(next_ms) if next_ms else None, fingerprint=bytes(fingerprint).decode()
                )
        return now_ms, [found[name] for name, _ in entries]

    def tick(
        self,
        name: str,
        *,
        seen_ms: int | None,
        next_ms: int,
        fingerprint: str,
        mode: str,
        skip_if_pending: bool,
        task_id: str,
        queue: str,
        priority: int,
        fields: dict[str, str],
    ) -> int:
        """Move one entry from the tick seen_ms to next_ms, enqueueing as mode says, once (see tick.lua)."""
        k = self.keys.of(queue)
        if k.per_queue:
            self.announce(queue)
        keys = [
            k.periodic(name),
            k.task_prefix,
            k.task(task_id),
            k.ready(queue),
            k.ready_since(queue),
            k.queues,
            k.seq,
            k.wake(queue),
        ]
        args: list[Any] = [
            "" if seen_ms is None else seen_ms,
            next_ms,
            fingerprint,
            mode,
            "1" if skip_if_pending else "0",
            task_id,
            queue,
            priority,
            WAKE_CAP,
        ]
        for field_name, value in fields.items():
            args += (field_name, value)
        (answer,) = self.run([ScriptCall(name="tick", keys=keys, args=args)])
        return int(answer)

    def schedule_entries(
        self, entries: Sequence[tuple[str, str]], queues: Sequence[str] = ()
    ) -> tuple[int, dict[str, dict[bytes, bytes]]]:
        """Return the server time (ms) and the hash of each (name, queue) entry and of any other stored one.

        Other entries are looked for in the slots of the entries' queues and of queues.
        """
        slots = {k.tag: k for k, _ in self.slots([*(q for _, q in entries), *queues])} or {
            self.keys.tag: self.keys
        }
        with self._boundary():
            seconds, micros = self.client.time()
            pipe = self.client.pipeline(transaction=False)
            for k in slots.values():
                pipe.zrange(k.periodics, 0, -1)
            where = {name: self.keys.of(queue) for name, queue in entries}
            for k, names in zip(slots.values(), pipe.execute(), strict=True):
                for raw in names:
                    where.setdefault(raw.decode(), k)
            pipe = self.client.pipeline(transaction=False)
            for name, k in where.items():
                pipe.hgetall(k.periodic(name))
            replies = pipe.execute() if where else []
        return int(seconds) * 1000 + int(micros) // 1000, dict(zip(where, replies, strict=True))
