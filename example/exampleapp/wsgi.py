"""WSGI entry point of the example project (gunicorn exampleapp.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleapp.settings")
application = get_wsgi_application()
