"""Writes on models and versions: create, upload, validation results, delete."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.registry.models import Model, ModelVersion
from apps.registry.storage import HashedUpload, artifact_storage
from apps.tenants.access import Actor
from apps.tenants.models import DNS_LABEL, Tenant
from apps.tenants.selectors import quota_get
from apps.tenants.services import audit_event_create
from control_plane.errors import ApplicationError, ConflictError

DATATYPES = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "BF16",
    "FP32",
    "FP64",
    "BYTES",
}


def _validate_name(name: str) -> None:
    try:
        DNS_LABEL(name)
    except ValidationError:
        raise ApplicationError(
            f"'{name}' is not a valid model name", field_errors={"name": [str(DNS_LABEL.message)]}
        ) from None


def _user(actor: Actor) -> Any:
    return actor.user if actor.key is None and actor.user is not None and actor.user.pk else None


def _create_model_locked(*, actor: Actor, tenant: Tenant, name: str, description: str, labels: dict[str, str]) -> Model:
    _validate_name(name)
    quota = quota_get(tenant=tenant)
    count = Model.objects.filter(tenant=tenant).count()
    if count >= quota.max_models:
        raise ConflictError(
            f"tenant '{tenant.slug}' has {count} models, its quota's max_models; delete one or ask staff to raise it"
        )
    try:
        with transaction.atomic():
            model = Model.objects.create(
                tenant=tenant, name=name, description=description, labels=labels, created_by=_user(actor)
            )
    except IntegrityError:
        raise ConflictError(f"tenant '{tenant.slug}' already has a model '{name}'") from None
    audit_event_create(actor=actor, tenant=tenant, action="model.create", target=name)
    return model


@transaction.atomic
def model_create(
    *, actor: Actor, tenant: Tenant, name: str, description: str = "", labels: dict[str, str] | None = None
) -> Model:
    """Creates a model (``max_models`` enforced)."""
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()  # serialises quota checks per tenant
    return _create_model_locked(actor=actor, tenant=tenant, name=name, description=description, labels=labels or {})


@transaction.atomic
def model_update(
    *, actor: Actor, model: Model, description: str | None = None, labels: dict[str, str] | None = None
) -> Model:
    """Changes a model's description or labels."""
    changes: dict[str, Any] = {}
    if description is not None:
        changes["description"] = description
    if labels is not None:
        changes["labels"] = labels
    for field, value in changes.items():
        setattr(model, field, value)
    if changes:
        model.save(update_fields=list(changes))
        audit_event_create(actor=actor, tenant=model.tenant, action="model.update", target=model.name, details=changes)
    return model


def _check_signature(specs: Any, what: str) -> list[dict[str, Any]]:
    if specs in (None, "", []):
        return []
    if isinstance(specs, str):
        try:
            specs = json.loads(specs)
        except (json.JSONDecodeError, RecursionError):
            raise ApplicationError(f"{what} is not valid JSON", field_errors={what: ["give a JSON list"]}) from None
    problem = f'a list of {{"name", "datatype", "shape"}} with datatypes from {sorted(DATATYPES)}'
    if not isinstance(specs, list) or not specs:
        raise ApplicationError(f"{what} must be {problem}", field_errors={what: [problem]})
    cleaned = []
    for spec in specs:
        ok = (
            isinstance(spec, dict)
            and isinstance(spec.get("name"), str)
            and spec.get("datatype") in DATATYPES
            and isinstance(spec.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in spec["shape"])
        )
        if not ok:
            raise ApplicationError(f"{what} must be {problem}", field_errors={what: [problem]})
        cleaned.append({"name": spec["name"], "datatype": spec["datatype"], "shape": spec["shape"]})
    return cleaned


def model_version_create(
    *,
    actor: Actor,
    tenant: Tenant,
    model_name: str,
    upload: HashedUpload,
    declared_format: str = "",
    inputs: Any = None,
    outputs: Any = None,
) -> ModelVersion:
    """Stores an uploaded artifact as the model's next version and queues its validation.

    The model is created on its first upload (``max_models`` enforced). Two uploads racing
    get consecutive numbers. On any failure the stored file is removed: nothing is left
    half-made.
    """
    if declared_format and declared_format not in ModelVersion.Format.values:
        raise ApplicationError(
            f"unknown format '{declared_format}'", field_errors={"format": [f"one of {ModelVersion.Format.values}"]}
        )
    declared_inputs = _check_signature(inputs, "inputs")
    declared_outputs = _check_signature(outputs, "outputs")
    if bool(declared_inputs) != bool(declared_outputs):
        raise ApplicationError("give both inputs and outputs, or neither", field_errors={"outputs": ["required"]})
    if upload.size == 0:
        raise ApplicationError(
            "the file is empty; upload an ONNX, TorchScript or torch.export file", field_errors={"file": ["empty file"]}
        )
    storage = artifact_storage()
    stored = ""
    try:
        with transaction.atomic():
            Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
            model = Model.objects.select_for_update().filter(tenant=tenant, name=model_name).first()
            if model is None:
                model = _create_model_locked(actor=actor, tenant=tenant, name=model_name, description="", labels={})
            number = (ModelVersion.objects.filter(model=model).aggregate(top=Max("number"))["top"] or 0) + 1
            stored = storage.save(f"{tenant.slug}/{model.name}/{number}-{upload.sha256[:16]}", upload)
            version = ModelVersion.objects.create(
                model=model,
                number=number,
                format=declared_format,
                artifact=stored,
                sha256=upload.sha256,
                size_bytes=upload.size or 0,
                status=ModelVersion.Status.VALIDATING,
                declared_inputs=declared_inputs,
                declared_outputs=declared_outputs,
                created_by=_user(actor),
            )
            audit_event_create(
                actor=actor,
                tenant=tenant,
                action="model_version.upload",
                target=f"{model.name}/{number}",
                details={"sha256": upload.sha256, "size_bytes": upload.size},
            )
            from apps.registry.tasks import validate_model_version

            version_id = version.pk
            # robust: a broker outage must not turn a committed upload into an error (the row
            # and file stay; validation is queued again by the beat task for stuck versions).
            transaction.on_commit(lambda: validate_model_version.delay(version_id), robust=True)
    except BaseException:
        if stored:
            with contextlib.suppress(OSError):
                storage.delete(stored)
        raise
    return version


@transaction.atomic
def model_version_record_validation(*, version_id: int, ok: bool, reason: str, details: dict[str, Any]) -> None:
    """Stores a validation outcome (called by the validation task)."""
    version = ModelVersion.objects.select_for_update().select_related("model__tenant").filter(pk=version_id).first()
    if version is None or version.status != ModelVersion.Status.VALIDATING:
        return
    version.validated_at = timezone.now()
    if ok:
        version.status = ModelVersion.Status.READY
        version.format = details["format"]
        version.platform = details.get("platform", "")
        version.inputs = details["inputs"]
        version.outputs = details["outputs"]
        version.batched = bool(details["batched"])
        version.max_batch_size = int(details["max_batch_size"])
        version.footprint_bytes = int(details["footprint_bytes"])
        version.footprint_device = details["device_kind"]
        version.load_seconds = float(details["load_seconds"])
        version.failure_reason = ""
    else:
        version.status = ModelVersion.Status.FAILED
        version.failure_reason = reason
    version.save()
    audit_event_create(
        actor=Actor(),
        tenant=version.model.tenant,
        action="model_version.validated" if ok else "model_version.failed",
        target=f"{version.model.name}/{version.number}",
        details={"reason": reason} if not ok else {"footprint_bytes": version.footprint_bytes},
    )


def model_version_delete(*, actor: Actor, version: ModelVersion) -> None:
    """Deletes a version and its artifact (refused while a deployment uses it)."""
    from apps.registry.selectors import model_version_deployed_in

    deployment = model_version_deployed_in(version=version)
    if deployment:
        raise ConflictError(
            f"version {version.number} of '{version.model.name}' is deployed ({deployment}); "
            "shift its traffic away and undeploy it first"
        )
    name = version.artifact
    with transaction.atomic():
        audit_event_create(
            actor=actor,
            tenant=version.model.tenant,
            action="model_version.delete",
            target=f"{version.model.name}/{version.number}",
        )
        version.delete()
        transaction.on_commit(lambda: artifact_storage().delete(name))


def model_delete(*, actor: Actor, model: Model) -> None:
    """Deletes a model with all its versions and artifacts (refused while deployed)."""
    for version in list(model.versions.all()):
        model_version_delete(actor=actor, version=version)
    with transaction.atomic():
        audit_event_create(actor=actor, tenant=model.tenant, action="model.delete", target=model.name)
        model.delete()
