"""The chart's worker contract: run the container exactly as the rendered Deployment describes it.

Not a cluster: the rendered command, args, env and ports of the worker container run here as a local
process against a real redis-server, with the example project on PYTHONPATH as the image has it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from conveyor.keys import Keys
from redis.crc import key_slot

from devtools.redis_cluster import LocalCluster
from devtools.redis_server import RedisProcess, find_server_binary, free_port
from tests.deploy.helm_chart import ROOT, Manifest, Render, container, rendered

pytestmark = [pytest.mark.deploy, pytest.mark.subprocess]

VENV_BIN = ROOT / ".venv" / "bin"
TASK_WAIT_SECONDS = 30.0


def container_env(spec: Manifest, redis_url: str) -> dict[str, str]:
    """Resolve a container's env as the kubelet would, with secrets pointing at our Redis."""
    env: dict[str, str] = {}
    for entry in spec.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = redis_url
        else:
            pytest.fail(f"env {entry['name']} has a source this test cannot resolve: {entry}")
    return env


def process_env(rendered_env: dict[str, str], **overrides: str) -> dict[str, str]:
    """The image's PATH and PYTHONPATH, then the rendered env, then the test's overrides."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "DJANGO_", "REDIS_"))}
    base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT / "example"), str(ROOT)])
    return {**base, **rendered_env, **overrides}


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 20.0) -> tuple[int, str]:
    """GET url until it answers 200 (or the process dies, or time runs out)."""
    deadline = time.monotonic() + seconds
    last: tuple[int, str] = (0, "no answer")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the process exited with {proc.returncode}:\n{log.read_text()}")
        try:
            last = http_get(url)
        except OSError as exc:
            last = (0, str(exc))
        if last[0] == 200:
            return last
        time.sleep(0.1)
    return last


def probe_port(spec: Manifest, probe: str) -> int:
    """Resolve a probe's named port to the container port it points at."""
    port = spec[probe]["httpGet"]["port"]
    if isinstance(port, int):
        return port
    [found] = [p["containerPort"] for p in spec["ports"] if p["name"] == port]
    return int(found)


def start(spec: Manifest, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start the container's command and args as a local process."""
    argv = [*spec["command"], *spec.get("args", [])]
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM, then wait up to the pod's grace period, as the kubelet does."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"the process outlived the grace period of {grace}s")


ENQUEUE_AND_WAIT = """
import json, sys, time
import django
django.setup()
from django.tasks import default_task_backend
from exampleapp.tasks import add
result = add.enqueue(2, 3)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    found = default_task_backend.get_result(result.id)
    if found.status in ("SUCCESSFUL", "FAILED"):
        break
    time.sleep(0.1)
print(json.dumps({"id": result.id, "status": found.status,
                  "value": found.return_value if found.status == "SUCCESSFUL" else None}))
"""


def enqueue_add_and_wait(env: dict[str, str], seconds: float) -> dict[str, object]:
    """Enqueue exampleapp.tasks.add(2, 3) through the example project's backend; poll its result."""
    proc = subprocess.run(
        [sys.executable, "-c", ENQUEUE_AND_WAIT, str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 30,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def worker_spec(result: Render) -> tuple[Manifest, Manifest]:
    deployment = result.one("Deployment", "worker")
    pod = deployment["spec"]["template"]["spec"]
    return pod, container(pod, "worker")


def test_rendered_worker_runs_probes_and_does_a_task(
    helm: str, own_redis: RedisProcess, tmp_path: Path
) -> None:
    # Given the worker container of the chart in mode none, as rendered
    pod, spec = worker_spec(rendered(helm, autoscaling__mode="none"))
    env = container_env(spec, own_redis.url)
    assert spec["command"] == ["conveyor-worker"]
    # And its probes point at the health port the worker is told to serve
    declared = int(env["CONVEYOR_HEALTH_PORT"])
    assert probe_port(spec, "livenessProbe") == probe_port(spec, "readinessProbe") == declared
    assert spec["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert env["DJANGO_SETTINGS_MODULE"] == "exampleapp.settings"
    # When that command runs here (on a free port instead of the declared one, which may be taken)
    port = free_port()
    worker_env = process_env(env, CONVEYOR_HEALTH_PORT=str(port))
    log = tmp_path / "worker.log"
    proc = start(spec, worker_env, log)
    try:
        # Then both probes answer 200 on the declared paths
        for probe in ("livenessProbe", "readinessProbe"):
            path = spec[probe]["httpGet"]["path"]
            status, body = wait_for(f"http://127.0.0.1:{port}{path}", proc, log)
            assert status == 200, f"{path}: {status} {body}\n{log.read_text()}"
        # And a task enqueued through the example project's backend is done
        outcome = enqueue_add_and_wait(process_env(env), TASK_WAIT_SECONDS)
        assert outcome["status"] == "SUCCESSFUL", f"{outcome}\n{log.read_text()}"
        assert outcome["value"] == 5
        status, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'conveyor_queue_ready{queue="default"}' in metrics
    finally:
        # And SIGTERM stops it cleanly within the pod's grace period
        started = time.monotonic()
        code = stop(proc, float(pod["terminationGracePeriodSeconds"]))
    assert code == 0, log.read_text()
    assert time.monotonic() - started < float(env["CONVEYOR_SHUTDOWN_TIMEOUT"])


def test_rendered_queue_metrics_exporter_publishes_the_hpa_metric(
    helm: str, own_redis: RedisProcess, tmp_path: Path
) -> None:
    # Given the queue-metrics container of mode hpa and the metric its HPA reads
    result = rendered(helm, autoscaling__mode="hpa")
    exporter = result.one("Deployment", "queue-metrics")
    spec = container(exporter["spec"]["template"]["spec"], "queue-metrics")
    external = result.one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]["metric"]
    queues = next(e["values"] for e in external["selector"]["matchExpressions"] if e["key"] == "queue")
    env = container_env(spec, own_redis.url)
    port = free_port()
    log = tmp_path / "queue-metrics.log"
    # When it runs with no worker anywhere and one task waits
    proc = start(spec, process_env(env, CONVEYOR_HEALTH_PORT=str(port)), log)
    try:
        status, body = wait_for(f"http://127.0.0.1:{port}/readyz", proc, log)
        assert status == 200, f"{body}\n{log.read_text()}"
        outcome = enqueue_add_and_wait(process_env(env), 1.0)
        assert outcome["status"] == "READY", "a metrics-only process must not run tasks"
        status, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
    finally:
        stop(proc, float(exporter["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]))
    # Then every queue the HPA selects has a series, the idle one included (it exists at minimum)
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics.splitlines()
        if line.startswith(external["name"] + "{")
    }
    for queue in queues:
        assert f'{external["name"]}{{queue="{queue}"}}' in samples, metrics
    assert samples[f'{external["name"]}{{queue="default"}}'] == 1
    assert samples[f'{external["name"]}{{queue="emails"}}'] == 0


def plant_work(url: str, prefix: str) -> dict[str, dict[str, int]]:
    """Put task ids straight into the queue sets by the server clock; return the counts to expect."""
    keys = Keys(prefix)
    client = redis.Redis.from_url(url)
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    pipe = client.pipeline()
    pipe.zadd(keys.ready("default"), {"ready-1": 1, "ready-2": 2, "ready-3": 3})
    pipe.zadd(
        keys.scheduled("default"),
        {"due-1": now_ms - 60_000, "due-2": now_ms - 1, "later-1": now_ms + 3_600_000},
    )
    pipe.zadd(keys.running("default"), {"running-1": now_ms + 30_000})
    # A lease that has run out is still work: a worker must come and reclaim it
    pipe.zadd(keys.running("emails"), {"running-2": now_ms - 5_000})
    pipe.zadd(keys.scheduled("emails"), {"later-2": now_ms + 60_000})
    pipe.sadd(keys.queues, "default", "emails")
    pipe.execute()
    client.close()
    return {
        "default": {"ready": 3, "due": 2, "running": 1, "work": 6},
        "emails": {"ready": 0, "due": 0, "running": 1, "work": 1},
    }


def exporter_spec(result: Render) -> tuple[Manifest, Manifest]:
    exporter = result.one("Deployment", "queue-metrics")
    pod = exporter["spec"]["template"]["spec"]
    return pod, container(pod, "queue-metrics")


@pytest.mark.parametrize("mode", ["hpa", "keda"])
def test_the_autoscaler_reads_ready_due_and_running_tasks_from_the_rendered_exporter(
    helm: str, own_redis: RedisProcess, tmp_path: Path, mode: str
) -> None:
    # Given the queue-metrics container of this mode, as rendered, and what its autoscaler reads
    result = rendered(helm, autoscaling__mode=mode)
    pod, spec = exporter_spec(result)
    env = container_env(spec, own_redis.url)
    # And, with no worker anywhere, ready, due, future and running tasks in Redis under its prefix
    expected = plant_work(own_redis.url, env["CONVEYOR_KEY_PREFIX"])
    queues = env["CONVEYOR_QUEUES"].split(",")
    assert sorted(queues) == sorted(expected)
    port = free_port()
    log = tmp_path / "queue-metrics.log"
    proc = start(spec, process_env(env, CONVEYOR_HEALTH_PORT=str(port)), log)
    try:
        status, body = wait_for(f"http://127.0.0.1:{port}/readyz", proc, log)
        assert status == 200, f"{body}\n{log.read_text()}"
        if mode == "hpa":
            # When the HPA's metric is scraped
            external = result.one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]
            status, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            samples = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in metrics.splitlines()
                if line.startswith(external["metric"]["name"] + "{")
            }
            # Then each queue's series is its ready + due + running tasks (not the future ones)
            for queue in queues:
                name = f'{external["metric"]["name"]}{{queue="{queue}"}}'
                assert samples[name] == expected[queue]["work"], metrics
            # And the HPA, adding the series and dividing by the worker's slots, asks for enough workers
            total = sum(samples.values())
            assert total == 7
            assert math.ceil(total / float(external["target"]["averageValue"])) == 1
        else:
            # When KEDA calls each trigger's URL (on our port) and reads its valueLocation
            for trigger in result.one("ScaledObject")["spec"]["triggers"]:
                meta = trigger["metadata"]
                status, body = http_get(f"http://127.0.0.1:{port}{urlsplit(meta['url']).path}")
                assert status == 200, body
                document = json.loads(body)
                # Then work is ready + due + running summed over the queues, and running is in flight
                value = document[meta["valueLocation"]]
                assert value == {"work": 7, "running": 2}[trigger["name"]]
            assert document["queues"] == expected
            assert (document["ready"], document["due"]) == (3, 2)
    finally:
        stop(proc, float(pod["terminationGracePeriodSeconds"]))


# -- Redis Cluster: the helm test pod and the worker, as rendered, on a local three-primary cluster -----


def run_helm_test_pod(result: Render, redis_url: str) -> subprocess.CompletedProcess[str]:
    """Run the `helm test` pod's command as rendered (python: this interpreter, which has redis-py)."""
    [spec] = result.one("Pod")["spec"]["containers"]
    assert spec["command"][0] == "python"
    return subprocess.run(
        [sys.executable, *spec["command"][1:]],
        env=process_env(container_env(spec, redis_url)),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )


def test_rendered_helm_test_pod_checks_the_cluster_state_only_with_cluster(
    helm: str, local_cluster: LocalCluster, own_redis: RedisProcess
) -> None:
    plain = rendered(helm)
    cluster = rendered(helm, redis__cluster=True, redis__hashTagPerQueue=True)
    # Without redis.cluster the pod PINGs, whatever the server
    for url in (own_redis.url, local_cluster.url):
        proc = run_helm_test_pod(plain, url)
        assert proc.returncode == 0, proc.stderr
        assert "redis answered PING" in proc.stdout and "cluster_state" not in proc.stdout
    # With it, a node of a healthy cluster passes and says so
    proc = run_helm_test_pod(cluster, local_cluster.url)
    assert proc.returncode == 0, proc.stderr
    assert "redis answered PING" in proc.stdout and "cluster_state:ok" in proc.stdout
    # A plain Redis fails the test (cluster support is disabled there)
    proc = run_helm_test_pod(cluster, own_redis.url)
    assert proc.returncode != 0, proc.stdout
    # And so does a cluster node that answers PING but serves no slots (cluster_state:fail)
    binary = find_server_binary()
    assert binary
    # (its own bus port, as LocalCluster gives each node: the default, port + 10000, can pass 65535)
    cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    lone = RedisProcess(binary, extra_args=(*cluster_args, "--cluster-port", str(free_port())), lifetime=120)
    lone.start()
    try:
        proc = run_helm_test_pod(cluster, lone.url)
    finally:
        lone.stop()
    assert proc.returncode != 0, proc.stdout
    assert "redis answered PING" in proc.stdout and "cluster_state:fail" in proc.stderr


def prefix_off_the_first_node(cluster: LocalCluster, base: str, queue: str) -> str:
    """Return a key prefix whose per-queue slot for queue is NOT on the node the URL names."""
    for n in range(1000):
        prefix = f"{base}{n}"
        if cluster.node_of_slot(key_slot(Keys(prefix, per_queue=True).of(queue).tag.encode())) != 0:
            return prefix
    raise AssertionError("no prefix found off the first node")


def test_rendered_worker_does_a_task_on_a_redis_cluster(
    helm: str, local_cluster: LocalCluster, prefix: str, tmp_path: Path
) -> None:
    # Given the worker of a chart with both cluster values, and a key prefix that puts the queue
    # "default" on another primary than the node the URL names (a plain client would get MOVED)
    key_prefix = prefix_off_the_first_node(local_cluster, prefix, "default")
    pod, spec = worker_spec(
        rendered(helm, redis__cluster=True, redis__hashTagPerQueue=True, app__keyPrefix=key_prefix)
    )
    env = container_env(spec, local_cluster.url)
    assert (env["REDIS_CLUSTER"], env["REDIS_HASH_TAG_PER_QUEUE"]) == ("1", "1")
    port = free_port()
    log = tmp_path / "worker.log"
    proc = start(spec, process_env(env, CONVEYOR_HEALTH_PORT=str(port)), log)
    try:
        status, body = wait_for(f"http://127.0.0.1:{port}/readyz", proc, log)
        assert status == 200, f"{body}\n{log.read_text()}"
        # When a task is enqueued through the example project's settings with the same env
        outcome = enqueue_add_and_wait(process_env(env), TASK_WAIT_SECONDS)
        # Then the worker runs it, and its id carries the queue's token (HASH_TAG_PER_QUEUE reached
        # the backend; CLUSTER did too, or the other primary's slot would have answered MOVED)
        assert outcome["status"] == "SUCCESSFUL", f"{outcome}\n{log.read_text()}"
        assert outcome["value"] == 5
        token = Keys(key_prefix, per_queue=True).of("default").token
        assert str(outcome["id"]).startswith(f"{token}."), outcome
    finally:
        code = stop(proc, float(pod["terminationGracePeriodSeconds"]))
    assert code == 0, log.read_text()
