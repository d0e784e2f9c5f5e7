"""REST endpoints of the model registry (under ``/api/v1/tenants/{slug}/models/``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest
from drf_spectacular.utils import OpenApiTypes, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from apps.registry.models import Model, ModelVersion
from apps.registry.selectors import model_list, model_version_list
from apps.registry.services import model_create, model_delete, model_update, model_version_create, model_version_delete
from apps.registry.storage import ArtifactTooLargeError, ArtifactUploadHandler, artifact_storage, artifact_token_check
from apps.tenants.access import Action, access_model_by_name, access_model_version_by_number, access_tenant_by_slug
from apps.tenants.apis import TenantApiView
from apps.tenants.selectors import quota_get
from control_plane.errors import ApplicationError, NotFoundError

MiB = 1024**2


class ModelOutput(serializers.ModelSerializer):
    version_count = serializers.IntegerField(read_only=True, default=0)

    class Meta:
        model = Model
        fields = ["name", "description", "labels", "created_at", "version_count"]


class VersionOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")

    class Meta:
        model = ModelVersion
        fields = [
            "model",
            "number",
            "format",
            "status",
            "failure_reason",
            "sha256",
            "size_bytes",
            "platform",
            "inputs",
            "outputs",
            "batched",
            "max_batch_size",
            "footprint_bytes",
            "footprint_device",
            "load_seconds",
            "created_at",
            "validated_at",
        ]


class ModelCollectionApi(TenantApiView):
    """``GET`` a tenant's models; ``POST`` a new one (``max_models`` enforced)."""

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=63)
        description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)
        labels = serializers.DictField(child=serializers.CharField(max_length=200), required=False, default=dict)

        class Meta:
            ref_name = "ModelCollectionInput"

    @extend_schema(responses=ModelOutput(many=True))
    def get(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.READ)
        return Response(ModelOutput(model_list(tenant=tenant), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: ModelOutput})
    def post(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.WRITE)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = model_create(actor=self.actor, tenant=tenant, **data.validated_data)
        return Response(ModelOutput(model).data, status=status.HTTP_201_CREATED)


class ModelDetailApi(TenantApiView):
    """``GET`` a model; ``PATCH`` its description or labels; ``DELETE`` it with its versions."""

    class InputSerializer(serializers.Serializer):
        description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
        labels = serializers.DictField(child=serializers.CharField(max_length=200), required=False)

        class Meta:
            ref_name = "ModelDetailInput"

    @extend_schema(responses=ModelOutput)
    def get(self, request: Request, slug: str, name: str) -> Response:
        return Response(ModelOutput(access_model_by_name(self.actor, slug, name, action=Action.READ)).data)

    @extend_schema(request=InputSerializer, responses=ModelOutput)
    def patch(self, request: Request, slug: str, name: str) -> Response:
        model = access_model_by_name(self.actor, slug, name, action=Action.WRITE)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(ModelOutput(model_update(actor=self.actor, model=model, **data.validated_data)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, name: str) -> Response:
        model = access_model_by_name(self.actor, slug, name, action=Action.WRITE)
        model_delete(actor=self.actor, model=model)
        return Response(status=status.HTTP_204_NO_CONTENT)


class VersionCollectionApi(TenantApiView):
    """``GET`` a model's versions; ``POST`` a new one (multipart upload, 202 while validating).

    Multipart fields: ``file`` (the artifact), optional ``format`` (``onnx``,
    ``torchscript``, ``torch_export``; detected from the content otherwise), and for
    TorchScript ``inputs`` and ``outputs`` as JSON lists of ``{"name","datatype","shape"}``.
    """

    parser_classes = [MultiPartParser, FormParser, JSONParser]

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        # Before authentication: the session CSRF check may read the form, which parses the
        # body, so our streaming, hashing handler must already be the one that does it. Its
        # limit starts at the platform's and is lowered to the tenant's once the tenant is known.
        request.upload_handlers = [ArtifactUploadHandler(request, limit_bytes=settings.BERTH_MAX_UPLOAD_MB * MiB)]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(responses=VersionOutput(many=True))
    def get(self, request: Request, slug: str, name: str) -> Response:
        model = access_model_by_name(self.actor, slug, name, action=Action.READ)
        return Response(VersionOutput(model_version_list(model=model), many=True).data)

    @extend_schema(
        request={
            "multipart/form-data": inline_serializer(
                "VersionUpload",
                {
                    "file": serializers.FileField(),
                    "format": serializers.ChoiceField(choices=ModelVersion.Format.choices, required=False),
                    "inputs": serializers.CharField(required=False, help_text="JSON list, TorchScript only"),
                    "outputs": serializers.CharField(required=False, help_text="JSON list, TorchScript only"),
                },
            )
        },
        responses={202: VersionOutput},
    )
    def post(self, request: Request, slug: str, name: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.WRITE)
        limit = quota_get(tenant=tenant).max_artifact_mb * MiB
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > limit + MiB:  # a multipart envelope is far under 1 MiB
            raise ArtifactTooLargeError(
                f"the upload is {int(length)} bytes, over this tenant's limit of {limit // MiB} MiB (max_artifact_mb)"
            )
        handler = request._request.upload_handlers[0]
        assert isinstance(handler, ArtifactUploadHandler)  # installed in initialize_request
        handler.limit_bytes = limit
        try:
            upload = request.FILES.get("file")
            fields: dict[str, Any] = dict(request.data.items()) if hasattr(request.data, "items") else {}
        except ArtifactTooLargeError:
            handler.discard()
            raise
        if upload is not None and (upload.size or 0) > limit:  # parsed before the tenant was known
            handler.discard()
            raise ArtifactTooLargeError(
                f"the artifact is over this tenant's limit of {limit // MiB} MiB (max_artifact_mb)"
            )
        if upload is None:
            raise ApplicationError(
                "send the model file as the multipart field 'file'", field_errors={"file": ["this field is required"]}
            )
        try:
            version = model_version_create(
                actor=self.actor,
                tenant=tenant,
                model_name=name,
                upload=upload,
                declared_format=str(fields.get("format") or ""),
                inputs=fields.get("inputs"),
                outputs=fields.get("outputs"),
            )
        finally:
            handler.discard()
        return Response(VersionOutput(version).data, status=status.HTTP_202_ACCEPTED)


class VersionDetailApi(TenantApiView):
    """``GET`` a version (status, reason, signature, footprint); ``DELETE`` it."""

    @extend_schema(responses=VersionOutput)
    def get(self, request: Request, slug: str, name: str, number: int) -> Response:
        version = access_model_version_by_number(self.actor, slug, name, number, action=Action.READ)
        return Response(VersionOutput(version).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, name: str, number: int) -> Response:
        version = access_model_version_by_number(self.actor, slug, name, number, action=Action.WRITE)
        model_version_delete(actor=self.actor, version=version)
        return Response(status=status.HTTP_204_NO_CONTENT)


class VersionArtifactApi(TenantApiView):
    """``GET`` the version's artifact file (members and read keys of the tenant)."""

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, slug: str, name: str, number: int) -> FileResponse:
        version = access_model_version_by_number(self.actor, slug, name, number, action=Action.READ)
        try:
            handle = artifact_storage().open(version.artifact, "rb")
        except FileNotFoundError:
            raise NotFoundError(f"the artifact of version {number} of '{name}' is missing from storage") from None
        return FileResponse(handle, as_attachment=True, filename=f"{name}-{number}.bin")


def worker_artifact(request: HttpRequest, version_id: int, token: str) -> FileResponse:
    """A worker fetches an artifact with the signed, short-lived token from its load command."""
    from django.conf import settings

    granted = artifact_token_check(token, max_age_s=settings.BERTH_ARTIFACT_URL_TTL_S)
    if granted is None or granted[0] != version_id:
        raise Http404("no such artifact, or the link expired")
    version = ModelVersion.objects.filter(pk=version_id, sha256=granted[1]).first()
    if version is None:
        raise Http404("no such artifact, or the link expired")
    try:
        handle = artifact_storage().open(version.artifact, "rb")
    except FileNotFoundError:
        raise Http404("the artifact is missing from storage") from None
    return FileResponse(handle, content_type="application/octet-stream")
