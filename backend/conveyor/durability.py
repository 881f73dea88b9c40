"""Whether a Redis server keeps conveyor's tasks: no eviction, and some persistence."""

from __future__ import annotations

from dataclasses import dataclass

# The CONFIG GET parameters read (one call each: Redis before 7 takes one pattern per call).
PARAMETERS = ("maxmemory-policy", "appendonly", "save")


@dataclass(frozen=True, slots=True, kw_only=True)
class Durability:
    """The server settings that decide whether tasks can vanish without an error."""

    maxmemory_policy: str
    appendonly: bool
    save: str  # RDB save points, "" when none

    @classmethod
    def from_config(cls, config: dict[str, str]) -> Durability:
        """Build from CONFIG GET replies (parameter -> value)."""
        return cls(
            maxmemory_policy=config.get("maxmemory-policy", "noeviction"),
            appendonly=config.get("appendonly", "no") == "yes",
            save=config.get("save", "").strip(),
        )

    def eviction_risk(self) -> str | None:
        """Return why the eviction policy loses tasks, or None under noeviction."""
        if self.maxmemory_policy == "noeviction":
            return None
        return (
            f"maxmemory-policy is {self.maxmemory_policy}: when Redis is full it deletes keys, "
            "queued tasks and results among them, instead of refusing new writes; set noeviction"
        )

    def persistence_risk(self) -> str | None:
        """Return why a restart loses every task, or None when AOF or RDB save points are on."""
        if self.appendonly or self.save:
            return None
        return (
            "persistence is off (appendonly no and no save points): a restart empties Redis and "
            "every queued task with it; set appendonly yes with appendfsync everysec"
        )

    def risks(self) -> list[str]:
        """Return one sentence per setting that loses tasks silently; [] when there is none."""
        return [risk for risk in (self.eviction_risk(), self.persistence_risk()) if risk]
