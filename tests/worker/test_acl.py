"""An ACL user allowed exactly conveyor.acl's commands runs every path; one command less breaks it."""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import conveyor
import pytest
import redis
from conveyor import RedisBackend
from conveyor.acl import ACL_COMMANDS, OPTIONAL_COMMANDS, setuser_command
from conveyor.exceptions import ConveyorError
from conveyor.ops import Operator
from conveyor.store import Store
from conveyor_worker.loop import Worker
from conveyor_worker.metrics import Metrics
from conveyor_worker.probes import Probes
from conveyor_worker.settings import load_settings
from django.tasks import task_backends
from django.test import override_settings
from django.utils import timezone

from devtools.redis_server import RedisProcess
from tests import tasks
from tests.conftest import ROOT, tasks_setting
from tests.worker.conftest import wait_for_status, wait_until

SCRIPTS = ROOT / "backend" / "conveyor" / "scripts"
# What this test's admin connection sends after CONFIG RESETSTAT.
ADMIN_COMMANDS = {"config|resetstat", "acl|log", "info"}
# What redis-py sends on connecting: HELLO (with AUTH) before the user is known, so no ACL applies;
# CLIENT SETINFO (Redis 7.2+, Valkey), whose refusal it ignores.
HANDSHAKE = {"hello", "auth", "client|setinfo"}
ENTRY = {"name": "acl-tick", "task": "tests.tasks.calculate_meaning_of_life", "every": 1}


def lua_commands() -> set[str]:
    """Return every command the Lua scripts call, lowercased."""
    found: set[str] = set()
    for script in SCRIPTS.glob("*.lua"):
        found |= {name.lower() for name in re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", script.read_text())}
    return found


def command_stats(admin: redis.Redis) -> set[str]:
    """Return the commands run (not refused) since CONFIG RESETSTAT, subcommands as "name|sub"."""
    info = admin.info("commandstats")
    return {name.removeprefix("cmdstat_") for name, stats in info.items() if stats["calls"]}


def denied(admin: redis.Redis) -> set[str]:
    """Return the commands, keys and channels ACL LOG recorded as refused (reason:object)."""
    return {f"{entry['reason']}:{entry['object']}" for entry in admin.acl_log()}


@pytest.fixture
def server() -> Iterator[tuple[RedisProcess, redis.Redis]]:
    """Start a private server (its command stats and ACL LOG are this test's alone) and an admin client."""
    process = RedisProcess(_binary(), lifetime=300)
    process.start()
    # As in production, the default user is off: a connection is nobody until it authenticates.
    password = secrets.token_hex(16)
    with redis.Redis.from_url(process.url) as default:
        default.execute_command("ACL", "SETUSER", "admin", "on", f">{password}", "+@all", "~*", "&*")
    admin = redis.Redis.from_url(f"redis://admin:{password}@127.0.0.1:{process.port}/0")
    admin.execute_command("ACL", "SETUSER", "default", "off")
    yield process, admin
    admin.close()
    process.stop()


def _binary() -> str:
    from devtools.redis_server import find_server_binary

    binary = find_server_binary()
    assert binary, "a redis-server or valkey-server binary is needed"
    return binary


def acl_user(admin: redis.Redis, process: RedisProcess, prefix: str, commands: tuple[str, ...]) -> str:
    """Create a user allowed exactly commands on the prefix's keys and channel; return its URL."""
    user, password = "u" + secrets.token_hex(4), secrets.token_hex(16)
    line = setuser_command(prefix, user=user, password=password, commands=commands)
    admin.execute_command(*line.split())
    return f"redis://{user}:{password}@127.0.0.1:{process.port}/0"


class RunningWorker:
    """A Worker on its own named Store, running in a thread, with its probes."""

    def __init__(self, backend: RedisBackend, *flags: str) -> None:
        settings = load_settings(["--health-port", "0", *flags], {})
        name = f"conveyor-worker:{settings.worker_id}"
        self.store = Store(backend.settings, backend.keys, client_name=name)
        self.worker = Worker(settings, backend, self.store, ("tests",), Metrics(settings.concurrency))
        self.probes = Probes(
            store=self.store,
            metrics=Metrics(settings.concurrency),
            queues=lambda: settings.queues.resolve(self.store.known_queues()),
            alive=lambda: True,
            ready=lambda: True,
        )
        self.thread = threading.Thread(target=self.worker.run, name="acl-worker")

    def __enter__(self) -> RunningWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.request_stop()
        self.thread.join(60)
        self.store.close()
        assert not self.thread.is_alive()


def run_everything(backend: RedisBackend, scratch: Path) -> None:
    """Drive every path: web, waiting, worker (retry, renew, cancel, periodic), probes, operator."""
    # Given: the web side's checks and writes.
    assert not [m for m in backend.check() if m.is_serious()]
    plain = tasks.echo.enqueue(1)
    many = conveyor.enqueue_many(tasks.echo, [((i,), {}) for i in range(5)])
    first = tasks.unique_task.enqueue("same")
    second = tasks.unique_task.enqueue("same")
    assert first.id == second.id
    failing = tasks.always_fails.enqueue()
    flaky = tasks.flaky.enqueue(str(scratch), 1)
    later = tasks.echo.using(run_after=timezone.now() + timedelta(hours=1)).enqueue("later")
    long = tasks.slow_append_line.enqueue(str(scratch), "long", 60)
    renewed = tasks.sleep_for.enqueue(2.5)
    # And: a task claimed by a worker that died at once (its lease has run out: reclaim requeues it).
    ghost = tasks.echo.using(priority=100).enqueue("ghost")
    (claimed,) = backend.store.claim(["default"], "ghost-worker", 1, 1)
    assert claimed.task_id == ghost.id

    async def web_async() -> tuple[Any, ...]:
        result = await tasks.async_echo.aenqueue("async")
        many = await conveyor.aenqueue_many(tasks.echo, [((i,), {}) for i in range(3)])
        done = await conveyor.await_result(result, timeout=30)
        return done, many, await backend.aget_result(many[0].id)

    with RunningWorker(backend, "--concurrency", "4", "--lease", "3") as running:
        # When: a worker (renewing three-second leases) runs them and the periodic entry ticks.
        assert conveyor.wait_result(plain, timeout=30).return_value == {"args": [1], "kwargs": {}}
        done, more, got = asyncio.run(web_async())
        assert done.return_value == "async" and got.id == more[0].id
        for result in [*many, flaky, renewed]:
            assert conveyor.wait_result(result, timeout=30).status == "SUCCESSFUL", result.id
        assert conveyor.wait_result(failing, timeout=30).status == "FAILED"
        assert backend.get_result(failing.id).attempts == 2
        wait_for_status(backend, long.id, "RUNNING")
        ops = Operator(backend)
        wait_until(lambda: any(r.last_task_id for r in ops.schedules()), 30, "a periodic tick")
        assert "conveyor_worker_up 1.0" in running.probes.metrics_text()
        assert running.probes.work_json()[0] == 200 and running.probes.readiness()

        # And: the operator's calls, as `manage.py conveyor` and the admin make them.
        status = ops.status()
        assert status.workers and {q.queue for q in status.queues} >= {"default"}
        assert ops.list(status="FAILED").items[0].id == failing.id
        assert ops.show(failing.id, with_args=True).summary.status == "FAILED"
        assert ops.retry([failing.id])[failing.id] == "retried"
        assert conveyor.wait_result(failing, timeout=30).status == "FAILED"
        assert ops.retry_matching(queue="default", task="tests.tasks.always_fails")
        assert ops.show(later.id).scheduled_for is not None
        outcomes = ops.cancel([later.id, long.id])
        assert outcomes == {later.id: "cancelled", long.id: "requested"}
        assert conveyor.wait_result(long, timeout=30).status == "FAILED"
        # (A task whose worker was lost runs alone on its next worker: after the long one ends.)
        ghosted = conveyor.wait_result(ghost, timeout=30)
        assert ghosted.status == "SUCCESSFUL"
        assert ghosted.errors[0].exception_class_path == "conveyor.exceptions.WorkerLost"
        ops.pause("default")
        ops.resume("default")
        assert ops.delete([plain.id]) == {plain.id: True}
        tasks.echo.using(run_after=timezone.now() + timedelta(hours=1)).enqueue("to purge")
        assert ops.purge_ready("default", dry_run=True) >= 1
        assert ops.purge_ready("default") >= 1
        assert ops.purge_results(older_than=0, dry_run=True) >= 1
        assert ops.purge_results(older_than=0) >= 1
        assert ops.workers()
        time.sleep(1.5)  # let the maintenance thread promote, reclaim and trim once more


def test_exactly_the_acl_commands_run_conveyor(
    server: tuple[RedisProcess, redis.Redis], tmp_path: Path
) -> None:
    process, admin = server
    prefix = "acl" + secrets.token_hex(4)
    url = acl_user(admin, process, prefix, ACL_COMMANDS)
    admin.config_resetstat()
    admin.acl_log_reset()
    with override_settings(TASKS=tasks_setting(url, prefix, SCHEDULE=[ENTRY])):
        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        try:
            run_everything(backend, tmp_path / "ran.txt")
        finally:
            backend.store.close()
    # Then: nothing was refused but the optional CONFIG GET (and CLIENT SETINFO, which redis-py
    # sends on Redis 7.2+ and Valkey and lets fail), and every allowed command was needed.
    refused = denied(admin) - {"command:client|setinfo"}
    assert refused <= {f"command:{name}" for name in OPTIONAL_COMMANDS}, refused
    used = command_stats(admin) - ADMIN_COMMANDS - HANDSHAKE
    assert used <= set(ACL_COMMANDS), used - set(ACL_COMMANDS)
    assert set(ACL_COMMANDS) <= used | lua_commands(), set(ACL_COMMANDS) - used - lua_commands()


def test_one_command_less_and_the_claim_fails(server: tuple[RedisProcess, redis.Redis]) -> None:
    process, admin = server
    prefix = "acl" + secrets.token_hex(4)
    # Given: the same user without ZPOPMIN, which only claim.lua calls.
    url = acl_user(admin, process, prefix, tuple(c for c in ACL_COMMANDS if c != "zpopmin"))
    with override_settings(TASKS=tasks_setting(url, prefix)):
        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        try:
            result = tasks.noop_task.enqueue()
            # When: a worker claims.
            # (Redis 7 and Valkey 8 word the refusal differently.)
            refusal = r"(?i)can.t run this command|no permissions to run the .zpopmin"
            with pytest.raises(ConveyorError, match=refusal):
                backend.store.claim(["default"], "w-acl", 10_000, 1)
        finally:
            backend.store.close()
    # Then: Redis refused it inside the script, and the task still waits.
    assert "command:zpopmin" in denied(admin)
    assert backend.get_result(result.id).status == "READY"


def test_the_user_cannot_touch_another_prefix(server: tuple[RedisProcess, redis.Redis]) -> None:
    process, admin = server
    url = acl_user(admin, process, "acl-mine", ACL_COMMANDS)
    with override_settings(TASKS=tasks_setting(url, "acl-other")):
        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        try:
            with pytest.raises(ConveyorError, match=r"(?i)no permissions.*key"):
                tasks.noop_task.enqueue()
        finally:
            backend.store.close()
    assert any(d.startswith("key:{acl-other}:") for d in denied(admin))


def test_a_database_other_than_0_needs_select(server: tuple[RedisProcess, redis.Redis]) -> None:
    process, admin = server
    user, password = "u" + secrets.token_hex(4), secrets.token_hex(16)
    admin.execute_command(*setuser_command("acl-db", user=user, password=password, db=3).split())
    url = f"redis://{user}:{password}@127.0.0.1:{process.port}/3"
    with override_settings(TASKS=tasks_setting(url, "acl-db")):
        backend = task_backends["default"]
        assert isinstance(backend, RedisBackend)
        try:
            assert backend.get_result(tasks.noop_task.enqueue().id).status == "READY"
        finally:
            backend.store.close()
    assert "+select" in setuser_command(db=3) and "+select" not in setuser_command()


def test_the_optional_config_get_lets_check_see_missing_persistence(
    server: tuple[RedisProcess, redis.Redis],
) -> None:
    process, admin = server  # started without persistence (no AOF, no save points)
    for granted, expected in ((ACL_COMMANDS, set()), (ACL_COMMANDS + OPTIONAL_COMMANDS, {"conveyor.W002"})):
        prefix = "acl" + secrets.token_hex(4)
        with override_settings(TASKS=tasks_setting(acl_user(admin, process, prefix, granted), prefix)):
            backend = task_backends["default"]
            assert isinstance(backend, RedisBackend)
            try:
                assert {m.id for m in backend.check()} == expected
            finally:
                backend.store.close()


@pytest.mark.parametrize("doc", ["README.md", "docs/production.md"])
def test_the_docs_show_the_acl_line_of_the_default_prefix(doc: str) -> None:
    assert setuser_command() in (ROOT / doc).read_text()


def test_every_command_of_the_lua_scripts_is_allowed() -> None:
    assert lua_commands() <= set(ACL_COMMANDS), lua_commands() - set(ACL_COMMANDS)
