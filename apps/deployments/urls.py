from django.urls import path

from apps.deployments.apis import WorkerListApi

urlpatterns = [
    path("workers/", WorkerListApi.as_view(), name="worker-list"),
]
