"""The conveyor demo: Redis, the example web app and a worker, with real tasks end to end."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.redis_server import RedisProcess, find_server_binary, free_port  # noqa: E402

DEMO_TASKS = [
    # (label, task name, body)
    ("add two numbers", "add", {"args": [2, 3]}),
    ("high priority, own queue", "send_welcome_email", {"args": ["ada@example.com"]}),
    ("async task", "fetch_title", {"args": ["https://example.com"]}),
    ("fails: division by zero", "divide", {"args": [1, 0]}),
    ("retries twice, then succeeds", "flaky_report", {"kwargs": {"fail_until": 3}}),
    ("delayed by 2 seconds", "add", {"args": [40, 2], "delay": 2}),
]


def http(method: str, url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    """Send a JSON request and return the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_http(url: str, seconds: float = 30.0) -> None:
    """Wait until a URL answers 200."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: {url} did not come up")


def relay(proc: subprocess.Popen[str], prefix: str) -> None:
    """Copy a child's output to ours with a prefix."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"GET /' in line or '"POST /' in line:
            continue  # the web app's access log: one line per poll, noise here
        print(f"{prefix} {line.rstrip()}", flush=True)


def start(args: list[str], env: dict[str, str], prefix: str) -> subprocess.Popen[str]:
    """Start a child process whose output is relayed with a prefix."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    threading.Thread(target=relay, args=(proc, prefix), daemon=True).start()
    return proc


def show_features(env: dict[str, str]) -> bool:
    """Use the Python API in this process, against the same Redis and worker; True when all held."""
    os.environ.update(env)
    sys.path.insert(0, str(ROOT / "example"))
    import django

    django.setup()
    from datetime import timedelta

    import conveyor
    from conveyor.ops import Operator
    from django.tasks import default_task_backend
    from django.utils import timezone
    from exampleapp import tasks

    print("\ndemo: the Python API, in this process")
    began = time.monotonic()
    answer = conveyor.wait_result(tasks.add.enqueue(20, 22), timeout=10)
    waited = (time.monotonic() - began) * 1000
    print(f"  wait_result(add.enqueue(20, 22))  -> {answer.return_value}, {waited:.0f} ms after enqueue")

    began = time.monotonic()
    many = conveyor.enqueue_many(tasks.add, [((i, i), {}) for i in range(1000)])
    stored = (time.monotonic() - began) * 1000
    total = sum(conveyor.wait_result(r, timeout=30).return_value for r in many)
    print(f"  enqueue_many(add, 1,000 pairs)    -> stored in {stored:.0f} ms; all ran, sum {total:,}")

    later = tasks.rebuild_search_index.using(run_after=timezone.now() + timedelta(seconds=1))
    first, again = later.enqueue("docs"), later.enqueue("docs")
    conveyor.wait_result(first, timeout=15)
    after = tasks.rebuild_search_index.enqueue("docs")
    print(
        f"  unique rebuild_search_index('docs') enqueued twice while waiting -> "
        f"{'one task' if again.id == first.id else 'TWO TASKS'}; again once it ran -> "
        f"{'a new task' if after.id != first.id else 'the old one'}"
    )
    conveyor.wait_result(after, timeout=15)

    (schedule,) = Operator(default_task_backend).schedules()
    tick = conveyor.wait_result(default_task_backend.get_result(schedule.last_task_id), timeout=10)
    print(
        f"  periodic {schedule.name!r} ({schedule.timing})  -> last tick {tick.return_value!r}, "
        f"next run in {(schedule.next_run - timezone.now()).total_seconds():.1f} s"
    )
    return (
        answer.return_value == 42
        and total == sum(2 * i for i in range(1000))
        and again.id == first.id
        and after.id != first.id
        and tick.status == "SUCCESSFUL"
    )


def main() -> int:
    """Run the demo; return 0 when every task reached the expected state."""
    server = None
    if os.environ.get("REDIS_URL"):
        url, key_prefix = os.environ["REDIS_URL"], f"demo-{secrets.token_hex(3)}"
        print(f"demo: using REDIS_URL={url} under key prefix {key_prefix}")
    else:
        binary = find_server_binary()
        if binary is None:
            raise SystemExit("demo: no redis-server or valkey-server found; install one or set REDIS_URL")
        server = RedisProcess(binary)
        server.start()
        url, key_prefix = server.url, "conveyor"
        print(f"demo: started {' '.join(server.version().split()[0:3])} on {url}")
    web_port, health_port = free_port(), free_port()
    env = dict(
        os.environ,
        REDIS_URL=url,
        CONVEYOR_KEY_PREFIX=key_prefix,
        DJANGO_SETTINGS_MODULE="exampleapp.settings",
        PYTHONPATH=str(ROOT / "example"),
        DJANGO_DB_PATH=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"conveyor-demo-{os.getpid()}.sqlite3"),
        PYTHONUNBUFFERED="1",
        CONVEYOR_DEMO_SCHEDULE="1",  # example settings then declare one periodic task, every 2 s
    )
    web = start(
        [
            sys.executable,
            str(ROOT / "example" / "manage.py"),
            "runserver",
            f"127.0.0.1:{web_port}",
            "--noreload",
            "--skip-checks",
        ],
        {**env, "DJANGO_DEBUG": "1"},  # the enqueue and result endpoints are demo-only: DEBUG turns them on
        "[web]   ",
    )
    worker = start(
        [
            sys.executable,
            "-m",
            "conveyor_worker",
            "--concurrency",
            "4",
            "--log-format",
            "text",
            "--health-port",
            str(health_port),
            "--health-host",
            "127.0.0.1",
        ],
        env,
        "[worker]",
    )
    children = [worker, web]
    ok = False
    try:
        wait_http(f"http://127.0.0.1:{web_port}/healthz")
        wait_http(f"http://127.0.0.1:{health_port}/readyz")
        base = f"http://127.0.0.1:{web_port}"
        print("demo: enqueueing through the web app")
        ids = []
        for label, name, body in DEMO_TASKS:
            answer = http("POST", f"{base}/enqueue/{name}", body)
            ids.append((label, str(answer["id"])))
        results: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(results) < len(ids):
            for label, task_id in ids:
                answer = http("GET", f"{base}/results/{task_id}")
                if answer["status"] in ("SUCCESSFUL", "FAILED"):
                    results[label] = answer
            time.sleep(0.2)
        print(f"\n{'task':<30} {'status':<11} {'attempts':<8} result")
        for label, _ in ids:
            r = results.get(label, {"status": "UNFINISHED", "attempts": "-"})
            outcome = r.get("return_value", r.get("error", ""))
            print(f"{label:<30} {r['status']!s:<11} {r['attempts']!s:<8} {outcome}")
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/metrics", timeout=5) as response:
            lines = [ln for ln in response.read().decode().splitlines() if ln.startswith("conveyor_tasks_")]
        print("\nworker /metrics:\n  " + "\n  ".join(lines) + "\n")
        features = show_features(env)
        manage = [sys.executable, str(ROOT / "example" / "manage.py"), "conveyor"]
        shown = True
        for command in ("schedules", "status"):
            print(f"\n$ manage.py conveyor {command}", flush=True)
            shown = subprocess.run([*manage, command], env=env, check=False).returncode == 0 and shown
        expected_failures = {"fails: division by zero"}
        ok = (
            shown
            and features
            and len(results) == len(ids)
            and all((r["status"] == "FAILED") == (label in expected_failures) for label, r in results.items())
        )
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=40) for proc in children]
        print(f"demo: worker exited with {codes[0]} after SIGTERM; web stopped")
        if server is not None:
            server.stop()
    print("demo: all tasks reached the expected state" if ok else "demo: FAILED")
    return 0 if ok and codes[0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
