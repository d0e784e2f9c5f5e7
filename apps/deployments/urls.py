from django.urls import path

from apps.deployments.apis import DeploymentApi, DeploymentCanaryApi, WorkerDrainApi, WorkerListApi

urlpatterns = [
    path("workers/", WorkerListApi.as_view(), name="worker-list"),
    path("workers/<str:worker_id>/drain/", WorkerDrainApi.as_view(), name="worker-drain"),
    path("tenants/<slug:slug>/models/<str:name>/deployment/", DeploymentApi.as_view(), name="deployment"),
    *(
        path(
            f"tenants/<slug:slug>/models/<str:name>/deployment/{step}/",
            DeploymentCanaryApi.as_view(),
            {"step": step},
            name=f"deployment-{step}",
        )
        for step in ("canary", "promote", "rollback")
    ),
]
