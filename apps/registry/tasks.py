"""The validation task: runs the sandbox on a version's artifact and records the outcome."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from apps.registry.models import ModelVersion
from apps.registry.sandbox import SandboxResult, run_validation
from apps.registry.services import model_version_record_validation
from apps.registry.storage import artifact_storage

log = logging.getLogger(__name__)


@shared_task(name="berth.registry.validate_model_version", ignore_result=True, acks_late=True)
def validate_model_version(version_id: int) -> None:
    """Validates one version in the sandbox; idempotent (only a ``validating`` version runs)."""
    version = ModelVersion.objects.select_related("model__tenant").filter(pk=version_id).first()
    if version is None or version.status != ModelVersion.Status.VALIDATING:
        return
    try:
        result = _validate(version)
    except Exception as exc:
        log.exception("validation of %s could not run", version)
        model_version_record_validation(
            version_id=version_id, ok=False, reason=f"validation could not run: {exc}", details={}
        )
        return
    log.info("validated %s: %s", version, "ok" if result.ok else result.reason)
    model_version_record_validation(
        version_id=version_id, ok=result.ok, reason=result.reason, details=result.details or {}
    )


@shared_task(name="berth.registry.requeue_stuck_validations", ignore_result=True)
def requeue_stuck_validations() -> None:
    """Queues validation again for versions left ``validating`` (a lost task or broker outage)."""
    stale = timezone.now() - timedelta(seconds=settings.BERTH_VALIDATION_TIMEOUT_S * 2 + 60)
    for version_id in ModelVersion.objects.filter(
        status=ModelVersion.Status.VALIDATING, created_at__lt=stale
    ).values_list("pk", flat=True)[:100]:
        validate_model_version.delay(version_id)


def _validate(version: ModelVersion) -> SandboxResult:
    storage = artifact_storage()
    scratch = Path(tempfile.mkdtemp(prefix="berth-artifact-"))
    try:
        # Validate a private copy in its own folder: external-data checks look at that
        # folder, and nothing the model does can touch the stored artifact.
        local = scratch / "model"
        with storage.open(version.artifact, "rb") as source, local.open("wb") as target:
            shutil.copyfileobj(source, target, 1024 * 1024)
        quota = version.model.tenant.quota
        result = run_validation(
            local,
            declared_format=version.format,
            inputs=version.declared_inputs,
            outputs=version.declared_outputs,
            max_batch=settings.BERTH_VALIDATION_MAX_BATCH,
            timeout_s=settings.BERTH_VALIDATION_TIMEOUT_S,
            memory_bytes=settings.BERTH_VALIDATION_MEMORY_MB * 1024**2,
            max_uncompressed_bytes=max(quota.max_artifact_mb, 1) * 1024**2 * 4,
            device=settings.BERTH_VALIDATION_DEVICE,
        )
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    return result
