"""Start and stop a local Redis Cluster of several primaries (real server processes, loopback only)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from .redis_server import RedisProcess, free_port

SLOTS = 16384


@dataclass
class LocalCluster:
    """A Redis Cluster of `primaries` nodes on 127.0.0.1, the slots split evenly between them.

    Each node is a RedisProcess with cluster mode on and its own bus port (the default,
    port + 10000, can pass 65535). lifetime bounds how long each may run (see RedisProcess).
    """

    binary: str
    primaries: int = 3
    replicas: int = 0  # replicas per primary (nodes[primaries:], in primary order)
    lifetime: float | None = None
    nodes: list[RedisProcess] = field(default_factory=list)
    bus_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Return the URL of the first node (a cluster client finds the others from it)."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        """Start the nodes, give each primary its share of the slots, introduce them, wait until ok."""
        for _ in range(self.primaries * (1 + self.replicas)):
            bus = free_port()
            args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            args += ("--cluster-port", str(bus), "--cluster-node-timeout", "2000")
            node = RedisProcess(self.binary, extra_args=args, lifetime=self.lifetime)
            node.start()
            self.nodes.append(node)
            self.bus_ports.append(bus)
        clients = [redis.Redis(host="127.0.0.1", port=n.port, socket_timeout=5) for n in self.nodes]
        try:
            for i, client in enumerate(clients[: self.primaries]):
                low, high = self.slot_range(i)
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
            deadline = time.monotonic() + timeout
            self._wait(
                lambda: all(self._known(c) for c in clients), deadline, "every node to know the others"
            )
            for j, client in enumerate(clients[self.primaries :]):
                primary = self._id(clients[j // self.replicas])
                client.execute_command("CLUSTER", "REPLICATE", primary)
            self._wait(lambda: all(self._ready(c) for c in clients), deadline, "the cluster to be ok")
            synced = clients[self.primaries :]  # a replica that never synced cannot fail over
            self._wait(
                lambda: all(c.info("replication").get("master_link_status") == "up" for c in synced),
                deadline,
                "every replica to sync",
            )
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def _wait(done: Callable[[], bool], deadline: float, what: str) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local cluster timed out waiting for {what}")
            time.sleep(0.05)

    @staticmethod
    def _id(client: redis.Redis) -> str:
        raw = client.execute_command("CLUSTER", "MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def _info(self, client: redis.Redis) -> str:
        info = client.execute_command("CLUSTER", "INFO")
        return info.decode() if isinstance(info, bytes) else str(info)

    def _known(self, client: redis.Redis) -> bool:
        return f"cluster_known_nodes:{len(self.nodes)}" in self._info(client)

    def _ready(self, client: redis.Redis) -> bool:
        text = self._info(client)
        if "cluster_state:ok" not in text or f"cluster_known_nodes:{len(self.nodes)}" not in text:
            return False
        if not self.replicas:
            return True
        rows = [line.split() for line in client.execute_command("CLUSTER", "NODES").decode().splitlines()]
        replicas = [row for row in rows if "slave" in row[2].split(",")]
        return len(replicas) == self.primaries * self.replicas and all(
            row[7] == "connected" for row in replicas
        )

    def slot_range(self, index: int) -> tuple[int, int]:
        """Return the first and last slot node `index` owns."""
        per = SLOTS // self.primaries
        low = index * per
        return low, SLOTS - 1 if index == self.primaries - 1 else low + per - 1

    def node_of_slot(self, slot: int) -> int:
        """Return the index of the node that owned a slot when started (owner_of() asks, after a move)."""
        return min(slot // (SLOTS // self.primaries), self.primaries - 1)

    def owner_of(self, slot: int) -> int:
        """Return the index of the node that owns a slot now, as the first node that answers sees it."""
        for node in self.nodes:
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)
            try:
                for low, high, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if low <= slot <= high:
                        port = int(primary[1])
                        return next(i for i, n in enumerate(self.nodes) if n.port == port)
            except redis.ConnectionError:
                continue  # a node that was stopped
            finally:
                client.close()
        raise LookupError(f"no node owns slot {slot}")

    def move_slot(self, slot: int, to: int, batch: int = 10, pause: float = 0.0) -> int:
        """Move a slot and its keys to node `to` the way redis-cli --cluster reshard does; return keys moved.

        The slot is MIGRATING on its owner and IMPORTING on the target while its keys go over
        in batches (pause seconds apart), so clients meet ASK and TRYAGAIN meanwhile.
        """
        source = self.owner_of(slot)
        if source == to:
            return 0
        clients = [redis.Redis(host="127.0.0.1", port=n.port, socket_timeout=10) for n in self.nodes]
        try:
            ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
            ids = [i.decode() if isinstance(i, bytes) else i for i in ids]
            clients[to].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
            clients[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to])
            moved = 0
            while keys := clients[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                port = self.nodes[to].port
                clients[source].execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                time.sleep(pause)
            for client in (clients[to], clients[source], *clients):
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to])
            return moved
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            node.stop()
