from django.urls import path

from apps.deployments.apis import DeploymentApi, WorkerListApi

urlpatterns = [
    path("workers/", WorkerListApi.as_view(), name="worker-list"),
    path("tenants/<slug:slug>/models/<str:name>/deployment/", DeploymentApi.as_view(), name="deployment"),
]
