"""The chaos tier: real workers killed, frozen, restarted and fed hostile records, checked by a ledger.

CONVEYOR_CHAOS_RELEASE_DIR, when set, adds a directory to this package's path: modules the
test writes there (a new release's task module) exist only for processes started with it.
"""

from __future__ import annotations

import os

_release_dir = os.environ.get("CONVEYOR_CHAOS_RELEASE_DIR")
if _release_dir:
    __path__.append(_release_dir)
