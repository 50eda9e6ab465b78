from django.urls import path

from builds.api import logstream, views

urlpatterns = [
    path("api/v1/jobs", views.JobListCreate.as_view()),
    path("api/v1/jobs/<str:job_id>", views.JobDetail.as_view()),
    path("api/v1/jobs/<str:job_id>/logs", logstream.job_logs),
    path("api/v1/jobs/<str:job_id>/cancel", views.JobCancel.as_view()),
    path("api/v1/jobs/<str:job_id>/deliveries", views.JobDeliveries.as_view()),
    path("api/v1/jobs/<str:job_id>/deliveries/redeliver", views.JobRedeliver.as_view()),
    path("dev/running-builds", views.RunningBuilds.as_view()),
    path("healthz", views.healthz),
    path("readyz", views.readyz),
    path("metrics", views.metrics_view),
]
