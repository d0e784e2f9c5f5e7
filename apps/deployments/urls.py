from django.urls import path

from apps.deployments.apis import DeploymentApi, WorkerDrainApi, WorkerListApi

urlpatterns = [
    path("workers/", WorkerListApi.as_view(), name="worker-list"),
    path("workers/<str:worker_id>/drain/", WorkerDrainApi.as_view(), name="worker-drain"),
    path("tenants/<slug:slug>/models/<str:name>/deployment/", DeploymentApi.as_view(), name="deployment"),
]
