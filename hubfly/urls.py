from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

admin.autodiscover()  # settings use SimpleAdminConfig, so only the web process loads admin modules

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include("builds.api.urls")),
]

handler400 = "builds.api.errors.json_400"
handler404 = "builds.api.errors.json_404"
handler500 = "builds.api.errors.json_500"
