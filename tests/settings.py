"""Django settings for the test suite; the Redis URL comes from the session fixture."""

import os

SECRET_KEY = "tests-only-not-secret"
USE_TZ = True
INSTALLED_APPS: list[str] = ["conveyor"]  # gives `manage.py conveyor`
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
TASKS = {
    "default": {
        "BACKEND": "conveyor.RedisBackend",
        "QUEUES": [],
        "OPTIONS": {
            "URL": os.environ.get("CONVEYOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "KEY_PREFIX": os.environ.get("CONVEYOR_TEST_PREFIX", "conveyor-test"),
        },
    }
}
# The test project's only app is conveyor (for its command); tasks come from the tests package.
if os.environ.get("CONVEYOR_TEST_ALLOW_LIST") != "none":
    TASKS["default"]["OPTIONS"]["ALLOWED_TASK_MODULES"] = ["tests"]
# A Redis Cluster of several primaries, each queue in its own slot (tests/worker/test_cluster_worker.py).
if os.environ.get("CONVEYOR_TEST_CLUSTER") == "per-queue":
    TASKS["default"]["OPTIONS"].update(CLUSTER=True, HASH_TAG_PER_QUEUE=True)
# A raw (string) MAX_ATTEMPTS, for the worker's start-up check of Django's proposed retry settings.
if os.environ.get("CONVEYOR_TEST_MAX_ATTEMPTS"):
    TASKS["default"]["MAX_ATTEMPTS"] = os.environ["CONVEYOR_TEST_MAX_ATTEMPTS"]
LOGGING_CONFIG = None
