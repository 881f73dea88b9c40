"""Every period and pacing constant of the worker, named once; the lease-derived ones in Timings."""

from __future__ import annotations

import random
from dataclasses import dataclass

# -- maintenance (main thread) ------------------------------------------------------
PROMOTE_EVERY = 1.0  # seconds between promotions of due scheduled tasks (sooner when one falls due)
QUEUE_REFRESH_EVERY = 1.0  # seconds between re-reading the queue list for '*'
BATCH_LIMIT = 1000  # ids one promote or reclaim call moves at most (each script stays bounded)
BACKOFF_MAX = 5.0  # seconds, cap of the reconnect backoff
BACKOFF_FIRST = 0.05  # seconds, the reconnect backoff after the first failure (doubles, jittered)
SCHEDULE_EVERY = 1.0  # seconds, at most, between looks at the schedule (sooner when a tick falls due)
SCHEDULE_IDLE_EVERY = 60.0  # seconds between looks with no schedule declared (drops stale ones)
RECLAIM_EVERY_MAX = 5.0  # seconds, at most, between reclaims (a quarter lease when shorter)

# -- pacing: how many processors cycle at once ----------------------------------------
# Threads that all want the GIL hand it over at every socket call, which costs more than a
# short task; so the main thread adds a processor only while work waits and the ones running
# leave the core idle, or run outside the GIL on more than one core, or are all inside long
# tasks; and it parks one of several that saturate a single core.
STEER_EVERY = 0.005  # seconds between looks at the processors while any works; also how long
#                      a task claimed ahead, a deferred success or a reply sent ahead may wait
SPILL_BELOW = 0.5  # cores used by the process under which waiting work gets another processor
PARK_ABOVE = 0.9  # cores used over which one of several cycling processors parks...
PARALLEL_ABOVE = 1.25  # ...unless tasks run outside the GIL on more than one core
LONG_TASK = 0.02  # seconds after which a running task stops counting its processor as cycling

# -- leases and timeouts -----------------------------------------------------------
RENEW_RETRY_MAX = 1.0  # seconds, at most, before a failed lease renewal is tried again
WATCH_SLEEP_MIN = 0.005  # seconds, the shortest and...
WATCH_SLEEP_MAX = 1.0  # ...the longest sleep of the watchdog between looks at deadlines
CLAIM_RETRY_MIN = 0.5  # seconds a processor waits after a claim Redis did not answer, at least...
CLAIM_RETRY_MAX = 1.5  # ...and at most (the main loop reports the outage and backs off)
RECORD_RETRY_FIRST = 0.05  # seconds before an outcome Redis did not take is sent again...
RECORD_RETRY_MAX = 2.0  # ...doubling up to this, for as long as the worker runs
CANCEL_POLL = 1.0  # seconds between looks at the cancel counter while leases are held (then renew at once)

# -- slots, drain and health --------------------------------------------------------
SLOT_POLL = 0.05  # seconds between looks while waiting for slots to empty (drain, run alone)
STALE_AFTER = 30.0  # seconds without a beat of the main loop or a keeper after which /livez fails

# -- the worker registry (what `conveyor status` lists) ----------------------------------
HEARTBEAT_EVERY = 5.0  # seconds between heartbeats in Redis (WorkerSettings.heartbeat_every)
HEARTBEAT_TTL_BEATS = 3  # a heartbeat lasts this many periods: a worker missing two is still listed
STATE_LOOK = 1.0  # seconds between looks at the worker's state: a change is told at once
LEAVE_WAIT = 5.0  # seconds a clean stop waits for the registry to take the worker out


def reconnect_pause(failures: int) -> float:
    """Return the jittered pause before trying Redis again after failures in a row."""
    return float(min(BACKOFF_MAX, BACKOFF_FIRST * 2**failures) * random.uniform(0.5, 1.5))


def blocking_wait(block: float, lease: float) -> float:
    """Return how long an idle worker blocks on Redis: block, at most a quarter lease."""
    return min(block, lease / 4)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timings:
    """The periods derived from the lease, computed in this one place (see Timings.from_lease)."""

    lease: float  # seconds a claim holds a task
    lease_ms: int  # the same in ms, as the scripts take it
    renew_every: float  # a third of a lease: two renewals may fail before a lease runs out
    renew_retry: float  # after a failed renewal: a tenth of a lease, at most RENEW_RETRY_MAX
    reclaim_every: float  # a quarter lease, at most RECLAIM_EVERY_MAX
    outage_ms: int  # half a lease without any reclaim means nobody reached Redis: hold reclaim
    block: float  # longest blocking wait on Redis: at most a quarter lease, so renewals never starve

    @classmethod
    def from_lease(cls, lease: float, block: float) -> Timings:
        """Derive every lease-bound period from --lease (seconds) and the longest blocking wait."""
        return cls(
            lease=lease,
            block=blocking_wait(block, lease),
            lease_ms=int(lease * 1000),
            renew_every=lease / 3,
            renew_retry=min(RENEW_RETRY_MAX, lease / 10),
            reclaim_every=min(RECLAIM_EVERY_MAX, lease / 4),
            outage_ms=int(lease * 500),
        )
