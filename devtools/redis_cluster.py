"""Start and stop a local Redis Cluster of several primaries (real server processes, loopback only)."""

from __future__ import annotations

import time
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
    lifetime: float | None = None
    nodes: list[RedisProcess] = field(default_factory=list)
    bus_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Return the URL of the first node (a cluster client finds the others from it)."""
        return self.nodes[0].url

    def start(self, timeout: float = 20.0) -> None:
        """Start the nodes, give each its share of the slots, introduce them, wait until the cluster is ok."""
        for _ in range(self.primaries):
            bus = free_port()
            args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            args += ("--cluster-port", str(bus), "--cluster-node-timeout", "2000")
            node = RedisProcess(self.binary, extra_args=args, lifetime=self.lifetime)
            node.start()
            self.nodes.append(node)
            self.bus_ports.append(bus)
        clients = [redis.Redis(host="127.0.0.1", port=n.port, socket_timeout=5) for n in self.nodes]
        try:
            for i, client in enumerate(clients):
                low, high = self.slot_range(i)
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
            deadline = time.monotonic() + timeout
            while not all(self._ready(c) for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError("the local cluster never became ok on every node")
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    def slot_range(self, index: int) -> tuple[int, int]:
        """Return the first and last slot node `index` owns."""
        per = SLOTS // self.primaries
        low = index * per
        return low, SLOTS - 1 if index == self.primaries - 1 else low + per - 1

    def node_of_slot(self, slot: int) -> int:
        """Return the index of the node that owned a slot when started (owner_of() asks, after a move)."""
        return min(slot // (SLOTS // self.primaries), self.primaries - 1)

    def owner_of(self, slot: int) -> int:
        """Return the index of the node that owns a slot now (asked of the first node)."""
        client = redis.Redis(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)
        try:
            for low, high, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if low <= slot <= high:
                    port = int(primary[1])
                    return next(i for i, n in enumerate(self.nodes) if n.port == port)
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

    def _ready(self, client: redis.Redis) -> bool:
        info = client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and f"cluster_known_nodes:{self.primaries}" in text

    def stop(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            node.stop()
