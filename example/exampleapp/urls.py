"""URLs of the example project."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index),
    path("healthz", views.healthz),
    path("enqueue/<str:name>", views.enqueue),
    path("results/<str:result_id>", views.result),
]
