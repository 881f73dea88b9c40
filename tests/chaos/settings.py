"""Django settings of the chaos workers: tests.settings plus backend OPTIONS from the environment."""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import TASKS

_options = TASKS["default"]["OPTIONS"]
for _name in ("RESULT_TTL", "FAILED_RESULT_TTL"):
    _value = os.environ.get(f"CONVEYOR_TEST_{_name}")
    if _value:
        _options[_name] = int(_value)
# The backend (which reads results) allows what the worker's allow-list allows.
_allowed = [m for m in os.environ.get("CONVEYOR_ALLOWED_TASK_MODULES", "").split(",") if m]
if _allowed:
    _options["ALLOWED_TASK_MODULES"] = _allowed
# Periodic tasks (scenario 8): the SCHEDULE as JSON.
_schedule = os.environ.get("CONVEYOR_TEST_SCHEDULE")
if _schedule:
    _options["SCHEDULE"] = json.loads(_schedule)
