"""Route EVALSHA in redis-py's cluster pipelines by its keys, without a COMMAND GETKEYS round trip each.

redis-py 8.1's ClusterPipeline asks the default node `COMMAND GETKEYS` for every command its policy
resolver does not know, EVALSHA included, one synchronous round trip per call before the pipeline is
sent (RedisCluster.execute_command routes EVALSHA by its keys without asking), and
RedisCluster.pipeline() does not pass a client's policy_resolver on. keyed_evalsha() gives each new
pipeline a resolver that names EVAL and EVALSHA keyed, for bench_cluster.py --evalsha-routing keyed.
Run as a script it does so for the whole process and then runs conveyor-worker with the arguments given.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def keyed_resolver() -> Any:
    """Return a policy resolver naming EVAL and EVALSHA keyed, redis-py's static policies for the rest."""
    from redis.commands.policies import (  # type: ignore[attr-defined]
        BasePolicyResolver,
        CommandPolicies,
        RequestPolicy,
        ResponsePolicy,
        StaticPolicyResolver,
    )

    keyed = CommandPolicies(
        request_policy=RequestPolicy.DEFAULT_KEYED, response_policy=ResponsePolicy.DEFAULT_KEYED
    )

    class Keyed(BasePolicyResolver):
        """EVAL and EVALSHA go where their keys are (RedisCluster.determine_slot reads numkeys)."""

        def __init__(self, fallback: Any = None) -> None:
            super().__init__({"core": {"eval": keyed, "evalsha": keyed}}, fallback)

        def with_fallback(self, fallback: Any) -> Any:
            return Keyed(fallback)

    return Keyed(StaticPolicyResolver())


@contextmanager
def keyed_evalsha() -> Iterator[None]:
    """Give every cluster pipeline made inside the block the keyed resolver; restore redis-py after."""
    import redis.cluster

    original = redis.cluster.RedisCluster.pipeline
    resolver = keyed_resolver()

    def pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        pipe = original(self, *args, **kwargs)
        pipe._policy_resolver = resolver
        return pipe

    redis.cluster.RedisCluster.pipeline = pipeline  # type: ignore[method-assign]
    try:
        yield
    finally:
        redis.cluster.RedisCluster.pipeline = original  # type: ignore[method-assign]


if __name__ == "__main__":
    from conveyor_worker.__main__ import main

    with keyed_evalsha():
        sys.exit(main(sys.argv[1:]))
