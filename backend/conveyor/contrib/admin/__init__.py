"""conveyor's Django admin: add "conveyor.contrib.admin" to INSTALLED_APPS (after django.contrib.admin)."""
