"""Settings of a project that is not the example: its own names, Redis from the environment."""

import os

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]  # a secret: no default, it comes from the deployment
DEBUG = False
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
INSTALLED_APPS = ["conveyor", "invoices"]
DATABASES: dict[str, dict[str, str]] = {}

TASKS = {
    "default": {
        "BACKEND": "conveyor.RedisBackend",
        "QUEUES": ["default", "billing"],
        "OPTIONS": {
            # REDIS_URL carries the password; it comes from a Secret, never from the image.
            "URL": os.environ["REDIS_URL"],
            "KEY_PREFIX": "byosite",
        },
    }
}
