"""URLs of the example project: the admin (with conveyor's pages), health, and the demo-only API."""

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("healthz", views.healthz),
    path("admin/", admin.site.urls),
    # Demo only: unauthenticated, and answering 404 unless DEBUG is on (see views.demo_only).
    path("enqueue/<str:name>", views.enqueue),
    path("results/<str:result_id>", views.result),
    *staticfiles_urlpatterns(),  # the admin's CSS and JS, only when DEBUG is on
]
