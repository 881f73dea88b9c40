"""conveyor_worker: the process that claims, runs and records conveyor tasks."""
