"""URLs of the admin tier: the Django admin, where conveyor's pages live."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
