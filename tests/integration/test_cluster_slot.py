"""Every key of a backend hashes to one Redis Cluster slot, so no script raises CROSSSLOT."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conveyor import RedisBackend
from django.tasks import TaskResultStatus

from devtools.redis_server import find_server_binary, free_port
from tests import tasks

from .conftest import BackendFactory


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """Start a one-node Redis Cluster that owns all 16384 slots and enforces same-slot scripts."""
    import redis

    binary = find_server_binary()
    assert binary, "a redis-server or valkey-server binary is needed"
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="conveyor-cluster-"))
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(workdir), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    # The bus port defaults to port + 10000, which is past 65535 for high ports: pick one.
    args += ["--cluster-port", str(free_port())]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, f"{binary} exited with {proc.returncode}"
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the one-node cluster never became ok"
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def cluster_backend(make_backend: BackendFactory, cluster_url: str) -> RedisBackend:
    """Return a backend on the one-node cluster."""
    return make_backend(URL=cluster_url)


def test_every_written_key_is_in_one_slot(cluster_backend: RedisBackend) -> None:
    """Hash every key a backend writes, and every key name keys.py can build, to the same slot."""
    backend = cluster_backend
    backend.enqueue(tasks.noop_task.using(queue_name="emails"), (), {})
    backend.enqueue(tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)), (), {})
    k = backend.keys
    names = [k.task("some-id"), k.queues, k.seq, k.reclaim_state, k.project, k.claim_memo("w:1")]
    for queue in ("default", "emails", "{odd}"):
        names += [k.ready(queue), k.ready_since(queue), k.scheduled(queue), k.running(queue), k.wake(queue)]
    written = [key.decode() for key in backend.store.call(lambda c: list(c.scan_iter(match=k.tag + "*")))]

    slots = {backend.store.call(lambda c, n=n: c.execute_command("CLUSTER", "KEYSLOT", n)) for n in names}
    slots |= {backend.store.call(lambda c, n=n: c.execute_command("CLUSTER", "KEYSLOT", n)) for n in written}

    assert len(written) >= 8
    assert len(slots) == 1


def test_the_whole_lifecycle_runs_on_a_cluster_node(cluster_backend: RedisBackend) -> None:
    """Run every script on a cluster node, which refuses declared keys of different slots (CROSSSLOT)."""
    backend = cluster_backend
    store = backend.store
    done = backend.enqueue(tasks.calculate_meaning_of_life, (), {})
    lost = backend.enqueue(tasks.noop_task.using(queue_name="other"), (), {})
    later = backend.enqueue(tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)), (), {})

    [first] = store.claim(["default", "other"], "worker-a", 60_000, 1)
    assert first.task_id == done.id
    assert store.renew([(done.id, "default", first.token)], 60_000) == [True]
    assert store.finish(done.id, "default", first.token, "SUCCESSFUL", 60, {"result": "42"})
    [second] = store.claim(["default", "other"], "worker-a", 0, 1)
    assert second.task_id == lost.id
    # (a lease of 0: the hold after a first reclaim, or an outage, ends at once)
    reclaim = dict(limit=10, max_deliveries=5, failed_ttl=60, lease_ms=0, outage_ms=60_000)
    assert store.reclaim(["default", "other"], **reclaim).requeued == 1
    [again] = store.claim(["other"], "worker-b", 60_000, 1)
    assert store.release(again.task_id, "other", again.token)
    [third] = store.claim(["other"], "worker-b", 60_000, 1)
    assert store.retry(third.task_id, "other", third.token, 0, {}) is not None
    # The scheduled task falls due (its score moved to the past); the retried one is due at once.
    scheduled = backend.keys.scheduled("default")
    store.call(lambda c: c.zadd(scheduled, {later.id: store.server_time_ms() - 1_000}, xx=True))
    assert store.promote(["default", "other"], limit=10).promoted == 2
    assert len(store.queue_stats(["default", "other"])) == 2

    assert backend.get_result(done.id).status == TaskResultStatus.SUCCESSFUL
    assert backend.get_result(done.id).return_value == 42
