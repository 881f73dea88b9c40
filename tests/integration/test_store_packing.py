"""The transport's one-round-trip path works with and without hiredis's packer."""

from __future__ import annotations

import conveyor.transport as transport_mod
import pytest

from tests import tasks


@pytest.mark.parametrize("hiredis_packer", [True, False], ids=["hiredis", "redis-py"])
def test_claim_and_finish_through_either_packer(
    backend: object, monkeypatch: pytest.MonkeyPatch, hiredis_packer: bool
) -> None:
    """Packing the EVALSHAs with hiredis or with redis-py sends the same commands."""
    if not hiredis_packer:
        monkeypatch.setattr(transport_mod, "pack_command", None)
    elif transport_mod.pack_command is None:
        pytest.fail("hiredis is part of the test install; its packer should be in use")
    store = backend.store  # type: ignore[attr-defined]
    result = tasks.noop_task.enqueue()

    claimed = store.claim(["default"], "w1", 10_000, 5)
    assert [c.task_id for c in claimed] == [result.id]
    stored = store.finish(
        result.id, "default", claimed[0].token, "SUCCESSFUL", 60, {"finished_at": "1", "result": "7"}
    )

    assert stored is True
    assert backend.get_result(result.id).return_value == 7  # type: ignore[attr-defined]


def test_a_forked_child_does_not_reuse_the_parents_connections(backend: object) -> None:
    """After fork (gunicorn --preload), the child opens its own connection for enqueue."""
    import os

    # Given a parent that enqueued once, so it holds a spare connection
    tasks.noop_task.enqueue()
    parent_spares = list(backend.store.transport.spares)  # type: ignore[attr-defined]
    assert parent_spares

    # When a forked child enqueues
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        try:
            tasks.noop_task.enqueue()
            reused = any(c in parent_spares for c in backend.store.transport.spares)  # type: ignore[attr-defined]
            os._exit(1 if reused else 0)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)

    # Then it used a connection of its own, and the parent's still works
    assert os.waitstatus_to_exitcode(status) == 0
    tasks.noop_task.enqueue()


def test_replies_sent_ahead_are_read_later_from_another_thread(backend: object) -> None:
    """send_ahead() returns before the replies; receive() reads them, here from another thread."""
    import threading

    store = backend.store  # type: ignore[attr-defined]
    first, second = tasks.noop_task.enqueue(), tasks.noop_task.enqueue()
    got: list[object] = []
    with store.transport.hold():
        calls = store.claim_calls(["default"], "w1", 10_000, 2, "w1:1")
        sent = store.transport.send_ahead(calls)
        reader = threading.Thread(target=lambda: got.append(store.transport.receive(sent)))
        reader.start()
        reader.join()
        # the held connection is free again for the next round trip
        finished = store.finish(first.id, "default", "w1#1", "SUCCESSFUL", 60, {"result": "1"})

    claimed, waiting = store.parse_claimed(got[0], calls, ["default"])  # type: ignore[arg-type]
    assert [c.task_id for c in claimed] == [first.id, second.id]
    assert waiting == 0
    assert finished is True


def test_a_connection_given_back_with_replies_unread_is_not_reused_as_is(backend: object) -> None:
    """Replies nobody read never reach the next caller of that connection."""
    store = backend.store  # type: ignore[attr-defined]
    tasks.noop_task.enqueue()
    with store.transport.hold():
        store.transport.send_ahead(
            store.claim_calls(["default"], "w1", 10_000, 1, "w1:1")
        )  # claims it; never read

    # The next round trip takes the spare connection last given back: it must read its own
    # reply (nothing left to claim), not the unread one that holds the task.
    assert store.claim(["default"], "w2", 10_000, 1) == []


def test_every_script_is_loaded_again_after_redis_forgets_them(backend: object) -> None:
    """After SCRIPT FLUSH (or a restart), sync and async calls load their script and go through."""
    import asyncio

    store = backend.store  # type: ignore[attr-defined]
    tasks.noop_task.enqueue()
    store.call(lambda c: c.script_flush())
    first = tasks.noop_task.enqueue()  # enqueue.lua, through the transport
    assert store.promote(["default"], limit=10).promoted == 0  # promote.lua

    store.call(lambda c: c.script_flush())
    second = asyncio.run(tasks.noop_task.aenqueue())  # enqueue.lua, on the asyncio client

    ready = store.call(lambda c: c.zrange(store.keys.ready("default"), 0, -1))
    assert {first.id, second.id} <= {i.decode() for i in ready}
