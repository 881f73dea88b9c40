"""Script calls on the wire: EVALSHA batches in one round trip, held connections, calls sent ahead."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.exceptions import (
    ClusterError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .exceptions import ConveyorError, RedisUnavailable

pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command
except ImportError:  # hiredis is an optional extra
    pack_command = None


# How long a script call is sent again while its slot moves between primaries, or while a replica
# takes over from a primary that stopped answering (CLUSTER; Redis's cluster-node-timeout is 15 s
# by default, and a failover takes about that long).
CLUSTER_WAIT = 30.0


@cache
def script_library() -> str:
    """Return _lib.lua: the encodings every script shares (the ready score, JSON lists)."""
    return (resources.files("conveyor") / "scripts" / "_lib.lua").read_text()


@cache
def script_source(name: str) -> str:
    """Return the text of one bundled Lua script, after the shared library."""
    return script_library() + (resources.files("conveyor") / "scripts" / f"{name}.lua").read_text()


@cache
def script_sha(name: str) -> str:
    """Return the SHA1 Redis knows a bundled script by."""
    return hashlib.sha1(script_source(name).encode(), usedforsecurity=False).hexdigest()


@cache
def keyed_scripts() -> Any:
    """Return a redis-py policy resolver routing EVAL and EVALSHA by their keys; None before redis-py 8."""
    try:
        from redis.commands.policies import (  # type: ignore[attr-defined,unused-ignore]
            BasePolicyResolver,
            CommandPolicies,
            RequestPolicy,
            ResponsePolicy,
            StaticPolicyResolver,
        )
    except ImportError:
        return None
    keyed = CommandPolicies(
        request_policy=RequestPolicy.DEFAULT_KEYED, response_policy=ResponsePolicy.DEFAULT_KEYED
    )

    class KeyedScripts(BasePolicyResolver):  # type: ignore[misc,unused-ignore]
        """EVAL and EVALSHA go to the slot of their keys; every other command as redis-py decides."""

        def __init__(self, fallback: Any = None) -> None:
            super().__init__({"core": {"eval": keyed, "evalsha": keyed}}, fallback)

        def with_fallback(self, fallback: Any) -> Any:
            return KeyedScripts(fallback)

    return KeyedScripts(StaticPolicyResolver())


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptCall:
    """One EVALSHA of a bundled script, ready to be sent alone or with others."""

    name: str
    keys: list[str]
    args: list[Any]


class _Held:
    """A connection one thread keeps between calls, and whether replies sent ahead on it are unread."""

    __slots__ = ("conn", "unread")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.unread = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Sent:
    """Calls send_ahead() wrote whose replies receive() has yet to read (an opaque handle)."""

    calls: Sequence[ScriptCall]
    held: _Held


class Transport:
    """Send script calls and read their replies on redis-py connections no caller ever sees.

    Owner of the spare connections (a list taken from and given back to by any thread:
    pop and append are atomic) and of each thread's held connection (thread-local).
    Errors leave as ConveyorError through translate.
    """

    def __init__(
        self, connect: Callable[[], Any], translate: Callable[[RedisError | OSError], ConveyorError]
    ) -> None:
        self._connect = connect
        self._translate = translate
        self._spare: list[Any] = []  # connections run() reuses, last in first out
        self._pid = os.getpid()
        self._local = threading.local()  # .held: the thread's _Held while it holds one

    @property
    def spares(self) -> tuple[Any, ...]:
        """Return the spare connections (for tests of reuse after fork)."""
        return tuple(self._spare)

    def close(self) -> None:
        """Close every spare connection."""
        while self._spare:
            self._spare.pop().disconnect()

    def _take(self) -> Any:
        """Return a spare connection (skipping the pool's per-checkout checks) or a new one."""
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._spare, self._pid = [], os.getpid()
        try:
            return self._spare.pop()
        except IndexError:
            return self._connect()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Let the calling thread keep the connection run() first takes, until the block ends."""
        self._local.held, self._local.holding = None, True
        try:
            yield
        finally:
            held, self._local.held, self._local.holding = self._local.held, None, False
            if held is not None:
                if held.unread:  # replies nobody will read: drop them with the connection
                    held.conn.disconnect()
                    held.unread = False
                self._spare.append(held.conn)

    def run(self, calls: Sequence[ScriptCall], *, check: bool = True) -> list[Any]:
        """Send script calls in one round trip and return their replies.

        Scripts Redis lost (a restart, SCRIPT FLUSH) are loaded again and only the calls
        that failed with NOSCRIPT are sent again; a broken connection is retried once.
        An error reply raises, or with check=False takes its call's place as a ConveyorError.
        """
        holding = getattr(self._local, "holding", False)
        for attempt in (1, 2):
            held = self._local.held if holding else None
            conn = held.conn if held is not None else None
            try:
                if conn is None:
                    conn = self._take()
                    if holding:
                        self._local.held = _Held(conn)
                replies = self._complete(conn, calls, self._send(conn, calls))
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if conn is not None:
                    conn.disconnect()
                if attempt == 2:
                    raise self._translate(exc) from exc
                continue
            except RedisError as exc:
                raise self._translate(exc) from exc
            finally:
                if conn is not None and not holding:
                    self._spare.append(conn)
            if not check:
                return [self._translate(r) if isinstance(r, RedisError) else r for r in replies]
            return self._checked(replies)
        raise AssertionError("unreachable")

    def send_ahead(self, calls: Sequence[ScriptCall]) -> Sent:
        """Write calls on the calling thread's held connection without waiting for their replies.

        The connection carries nothing else until receive() has read them, from this
        thread or another; a connection given back with replies unread is closed.
        """
        assert getattr(self._local, "holding", False), "send_ahead needs hold()"
        held = self._local.held
        try:
            if held is None:
                held = self._local.held = _Held(self._take())
            self._write(held.conn, calls)
        except (RedisError, OSError) as exc:
            if held is not None:
                held.conn.disconnect()
            raise self._translate(exc) from exc
        held.unread = True
        return Sent(calls=calls, held=held)

    def receive(self, sent: Sent, *, check: bool = True) -> list[Any]:
        """Read the replies to a send_ahead() (NOSCRIPT calls are sent again, as run() does).

        An error reply raises, or with check=False takes its call's place as a ConveyorError.
        """
        held = sent.held
        if not held.unread:  # dropped when its thread gave the connection back
            raise RedisUnavailable("the replies sent ahead were dropped with their connection")
        try:
            replies = self._complete(held.conn, sent.calls, self._read(held.conn, len(sent.calls)))
        except (RedisError, OSError) as exc:
            held.conn.disconnect()
            raise self._translate(exc) from exc
        finally:
            held.unread = False
        if not check:
            return [self._translate(r) if isinstance(r, RedisError) else r for r in replies]
        return self._checked(replies)

    def _checked(self, replies: list[Any]) -> list[Any]:
        for reply in replies:
            if isinstance(reply, RedisError):
                raise self._translate(reply) from reply
        return replies

    def _complete(self, conn: Any, calls: Sequence[ScriptCall], replies: list[Any]) -> list[Any]:
        """Load scripts Redis lost and send again only the calls that failed with NOSCRIPT."""
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            for name in {calls[i].name for i in missing}:
                conn.send_command("SCRIPT", "LOAD", script_source(name))
                conn.read_response()
            for i, reply in zip(missing, self._send(conn, [calls[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    def _send(self, conn: Any, calls: Sequence[ScriptCall]) -> list[Any]:
        self._write(conn, calls)
        return self._read(conn, len(calls))

    @staticmethod
    def _write(conn: Any, calls: Sequence[ScriptCall]) -> None:
        commands = [("EVALSHA", script_sha(c.name), len(c.keys), *c.keys, *c.args) for c in calls]
        if pack_command is not None:  # hiredis packs str/int arguments directly, without redis-py's pass
            packed: Any = [b"".join(pack_command(cmd) for cmd in commands)]
        else:
            packed = conn.pack_commands(commands)
        conn.send_packed_command(packed)

    @staticmethod
    def _read(conn: Any, count: int) -> list[Any]:
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies


class ClusterTransport:
    """Send script calls to the primaries of a Redis Cluster that own their keys (CLUSTER option).

    redis-py's cluster pipeline routes each call by the slot of its keys, writes to every
    primary before it reads, and follows MOVED and ASK as slots move. send_ahead() sends
    at once and keeps the replies for receive(), so callers work unchanged.
    """

    def __init__(
        self, client: Callable[[], Any], translate: Callable[[RedisError | OSError], ConveyorError]
    ) -> None:
        self._client = client
        self._translate = translate

    @property
    def spares(self) -> tuple[Any, ...]:
        """Return no connections: the cluster client owns one pool per node."""
        return ()

    def close(self) -> None:
        """Nothing to close here: the store closes the cluster client."""

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Accept the single-node transport's hold(); every call here is already done when it returns."""
        yield

    def run(self, calls: Sequence[ScriptCall], *, check: bool = True) -> list[Any]:
        """Send script calls in one pipeline over the primaries; return their replies (see Transport.run).

        While a slot moves between primaries, a script whose keys are split between the two
        is refused (TRYAGAIN, or redirections until the client gives up); while a primary that
        died is replaced by its replica, its slots do not answer. Such calls are sent again,
        with a growing pause and the slot map read afresh, for up to CLUSTER_WAIT seconds.
        Every script is safe to repeat (enqueue by task id, the rest fenced by owner).
        """
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        deadline = time.monotonic() + CLUSTER_WAIT
        pause = 0.02
        while True:
            try:
                for i, reply in zip(todo, self._complete([calls[i] for i in todo]), strict=True):
                    replies[i] = reply
                todo = [i for i in todo if isinstance(replies[i], (TryAgainError, ClusterError))]
            except (ClusterError, TryAgainError) as exc:  # the pipeline gave up: send it all again
                if time.monotonic() > deadline:
                    raise self._translate(exc) from exc
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # a primary gone: a failover?
                if time.monotonic() > deadline:
                    raise self._translate(exc) from exc
                self._refresh()
            except RedisError as exc:
                raise self._translate(exc) from exc
            except RedisClusterException as exc:  # no node reachable, no slot map
                raise RedisUnavailable(f"Redis Cluster: {exc}") from exc
            else:
                if not todo or time.monotonic() > deadline:
                    break
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        if not check:
            return [self._translate(r) if isinstance(r, RedisError) else r for r in replies]
        for reply in replies:
            if isinstance(reply, RedisError):
                raise self._translate(reply) from reply
        return replies

    def _refresh(self) -> None:
        """Read the slot map again from any node that answers (after a failover it names the new primary)."""
        with suppress(RedisError, RedisClusterException, OSError):
            self._client().nodes_manager.initialize()

    def _complete(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Send calls in one pipeline; load scripts a primary lacks and send those calls again."""
        replies = self._pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:  # a primary lost them, or is new: load on every primary, send those again
            client = self._client()
            for name in {calls[i].name for i in missing}:
                client.script_load(script_source(name))
            for i, reply in zip(missing, self._pipeline([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    def send_ahead(self, calls: Sequence[ScriptCall]) -> Sent:
        """Send calls now and keep their replies for receive()."""
        held = _Held(None)
        held.conn = self.run(calls, check=False)
        held.unread = True
        return Sent(calls=calls, held=held)

    def receive(self, sent: Sent, *, check: bool = True) -> list[Any]:
        """Return the replies send_ahead() kept."""
        replies: list[Any] = sent.held.conn
        sent.held.unread = False
        if check:
            for reply in replies:
                if isinstance(reply, ConveyorError):
                    raise reply
        return replies

    def _pipeline(self, calls: Sequence[ScriptCall]) -> list[Any]:
        pipe = self._client().pipeline()
        resolver = keyed_scripts()
        if resolver is not None and hasattr(pipe, "_policy_resolver"):
            # redis-py 8's cluster pipeline knows no policy for EVALSHA and asks a node for its
            # keys (COMMAND GETKEYS), one round trip per call; RedisCluster.pipeline() passes no
            # resolver of ours on, so it is set here (tests/integration/test_cluster_primaries.py).
            pipe._policy_resolver = resolver
        for c in calls:
            pipe.execute_command("EVALSHA", script_sha(c.name), len(c.keys), *c.keys, *c.args)
        return list(pipe.execute(raise_on_error=False))
