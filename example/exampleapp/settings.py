"""Settings of the example project; everything that differs per deployment comes from the environment."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-insecure-key")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,web").split(",")
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "conveyor",  # `manage.py conveyor`
    "conveyor.contrib.admin",  # the task, queue and worker pages in /admin/
    "exampleapp",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "static/"  # served by the app itself only when DEBUG is on (the demo)
ROOT_URLCONF = "exampleapp.urls"
WSGI_APPLICATION = "exampleapp.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}

TASKS = {
    "default": {
        "BACKEND": "conveyor.RedisBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {
            "URL": os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
            "KEY_PREFIX": os.environ.get("CONVEYOR_KEY_PREFIX", "conveyor"),
            # TLS files for a rediss:// URL (the Helm chart's redis.tls mounts them and sets these)
            **{
                option: os.environ[f"REDIS_{option}"]
                for option in ("SSL_CA_CERTS", "SSL_CERTFILE", "SSL_KEYFILE")
                if os.environ.get(f"REDIS_{option}")
            },
            # Redis Cluster (docs/cluster.md; the Helm chart's redis.cluster and redis.hashTagPerQueue set
            # these): "1" turns the option on; web and workers must agree on HASH_TAG_PER_QUEUE
            **{
                option: os.environ[f"REDIS_{option}"] == "1"
                for option in ("CLUSTER", "HASH_TAG_PER_QUEUE")
                if os.environ.get(f"REDIS_{option}")
            },
        },
    }
}

if os.environ.get("CONVEYOR_DEMO_SCHEDULE"):  # set by example/demo.py only
    TASKS["default"]["OPTIONS"]["SCHEDULE"] = [
        {"name": "demo-every-2s", "task": "exampleapp.tasks.tick", "every": 2, "args": ["every 2 s"]},
    ]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("DJANGO_LOG_LEVEL", "WARNING")},
}
