from django.urls import path

from apps.registry import apis

base = "tenants/<slug:slug>/models/"

urlpatterns = [
    path(base, apis.ModelCollectionApi.as_view(), name="model-list"),
    path(f"{base}<str:name>/", apis.ModelDetailApi.as_view(), name="model-detail"),
    path(f"{base}<str:name>/versions/", apis.VersionCollectionApi.as_view(), name="version-list"),
    path(f"{base}<str:name>/versions/<int:number>/", apis.VersionDetailApi.as_view(), name="version-detail"),
    path(
        f"{base}<str:name>/versions/<int:number>/artifact/", apis.VersionArtifactApi.as_view(), name="version-artifact"
    ),
    path("artifacts/<int:version_id>/<str:token>/", apis.worker_artifact, name="worker-artifact"),
]
