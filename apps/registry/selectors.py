"""Reads on models and versions. Functions take a tenant obtained through ``access``."""

from __future__ import annotations

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.db.models import Count, QuerySet

from apps.registry.models import Model, ModelVersion
from apps.registry.storage import artifact_storage, artifact_token
from apps.tenants.models import Tenant


def model_list(*, tenant: Tenant) -> QuerySet[Model]:
    """A tenant's models with their version counts, by name."""
    return Model.objects.filter(tenant=tenant).annotate(version_count=Count("versions")).order_by("name")


def model_version_list(*, model: Model) -> QuerySet[ModelVersion]:
    """A model's versions, newest first."""
    return ModelVersion.objects.filter(model=model).select_related("model").order_by("-number")


def model_version_deployed_in(*, version: ModelVersion) -> str:
    """Which deployment routes traffic to this version (or keeps replicas of it), or ""."""
    from apps.deployments.models import Deployment, Replica

    deployment = Deployment.objects.filter(model_id=version.model_id).first()
    if deployment is not None and str(version.number) in deployment.traffic:
        weight = deployment.traffic[str(version.number)]
        return f"the deployment of '{version.model.name}' sends it {weight}% of traffic"
    if Replica.objects.filter(version=version).exists():
        return f"the deployment of '{version.model.name}' still has replicas of it loaded"
    return ""


def artifact_uri(*, version: ModelVersion) -> str:
    """Where a worker fetches this version's artifact: a short-lived URL it needs no login for.

    With S3 storage, a presigned URL; otherwise a signed URL on this control plane
    (``BERTH_PUBLIC_URL``), valid for ``BERTH_ARTIFACT_URL_TTL_S``.
    """
    storage = artifact_storage()
    if not isinstance(storage, FileSystemStorage):
        return storage.url(version.artifact)  # S3: a presigned URL
    token = artifact_token(version_id=version.pk, sha256=version.sha256)
    base = settings.BERTH_PUBLIC_URL or "http://127.0.0.1:8000"
    return f"{base}/api/v1/artifacts/{version.pk}/{token}/"
