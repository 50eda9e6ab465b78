from django.urls import path

from builds.api import views

urlpatterns = [
    path("api/v1/jobs", views.JobListCreate.as_view()),
    path("api/v1/jobs/<str:job_id>", views.JobDetail.as_view()),
    path("api/v1/jobs/<str:job_id>/logs", views.JobLogs.as_view()),
    path("api/v1/jobs/<str:job_id>/cancel", views.JobCancel.as_view()),
    path("dev/running-builds", views.RunningBuilds.as_view()),
    path("healthz", views.healthz),
    path("readyz", views.readyz),
]
