from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("builds.api.urls")),
]

handler400 = "builds.api.errors.json_400"
handler404 = "builds.api.errors.json_404"
handler500 = "builds.api.errors.json_500"
