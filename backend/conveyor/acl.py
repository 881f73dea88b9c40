"""The Redis commands conveyor sends, and the ACL SETUSER line that allows exactly those."""

from __future__ import annotations

from .keys import Keys

# Every command the web side, the worker, the queue-metrics exporter and the operator API
# (conveyor.ops, so `manage.py conveyor` and the admin) send, including those the Lua scripts
# call: Redis checks a script's commands, keys and channels against the caller's ACL too.
# tests/worker/test_acl.py runs every path as a user allowed only these and proves each is used.
ACL_COMMANDS: tuple[str, ...] = (
    # connections: redis-py names worker connections; a pipeline with transaction=True
    "client|setname",
    "ping",
    "multi",
    "exec",
    # scripts: every state change is an EVALSHA, loaded again after a restart or SCRIPT FLUSH
    "evalsha",
    "script|load",
    # server clock
    "time",
    # strings and counters
    "get",
    "mget",
    "set",
    "incr",
    "incrby",
    "del",
    "exists",
    "type",
    "expire",
    "pexpire",
    "persist",
    # task records, schedule entries, reclaim state
    "hget",
    "hmget",
    "hgetall",
    "hset",
    "hsetnx",
    "hdel",
    "hexists",
    "hincrby",
    # queue, worker and paused sets
    "sadd",
    "srem",
    "smembers",
    "sismember",
    "scard",
    "zadd",
    "zrem",
    "zcard",
    "zcount",
    "zscore",
    "zrange",
    "zrangebyscore",
    "zrevrangebyscore",
    "zremrangebyscore",
    "zpopmin",
    # wake lists (idle workers block on them) and done lists (waiters block on them)
    "lpush",
    "rpush",
    "ltrim",
    "blpop",
    "blmove",
    # await_result hears finished tasks on one channel
    "subscribe",
    "publish",
)

# Not needed: check() and the worker read these settings to warn about eviction and missing
# persistence (W001, W002, redis_durability_risk), and skip that check when refused. Granting it
# also lets the user read every other server setting, masterauth and requirepass included.
OPTIONAL_COMMANDS: tuple[str, ...] = ("config|get",)

# With CLUSTER: redis-py's cluster client reads the slot map and the command table (to find the
# keys of each command) when it connects, and again when a slot moves. Proven on a 3-primary
# cluster by tests/integration/test_cluster_primaries.py.
CLUSTER_COMMANDS: tuple[str, ...] = ("cluster|slots", "command")


def setuser_command(
    prefix: str = "conveyor",
    *,
    user: str = "conveyor",
    password: str = "CHANGE-ME",  # noqa: S107 - a placeholder the docs show, never a real password
    db: int = 0,
    commands: tuple[str, ...] = ACL_COMMANDS,
    cluster: bool = False,
) -> str:
    """Return the ACL SETUSER line for a user that may run conveyor on one KEY_PREFIX and nothing else."""
    keys = Keys(prefix)
    granted = [*commands, "select"] if db else list(commands)  # redis-py sends SELECT for a DB above 0
    if cluster:
        granted += CLUSTER_COMMANDS
    parts = [
        "ACL SETUSER",
        user,
        "on",
        f">{password}",
        "resetkeys",
        "resetchannels",
        "-@all",
        *(f"+{name}" for name in granted),
        *(f"~{pattern}" for pattern in keys.globs),
        f"&{keys.done_channel}",
    ]
    return " ".join(parts)
