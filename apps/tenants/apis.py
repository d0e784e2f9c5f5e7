"""REST endpoints for tenants, members, API keys, quotas and the audit log.

Views only parse input, call ``access``/``services``/``selectors``, and serialize.
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.tenants.access import (
    Action,
    Actor,
    access_api_key_by_prefix,
    access_membership_by_username,
    access_tenant_by_slug,
)
from apps.tenants.authentication import actor_from_request
from apps.tenants.models import ApiKey, AuditEvent, Membership, Quota, Role, Scope, Tenant
from apps.tenants.selectors import (
    api_key_list,
    audit_event_list,
    membership_list,
    quota_get,
    tenant_list,
    tenant_usage,
)
from apps.tenants.services import (
    QUOTA_FIELDS,
    api_key_create,
    api_key_revoke,
    membership_add,
    membership_remove,
    membership_update,
    quota_update,
    tenant_create,
    tenant_update,
)


class TenantApiView(APIView):
    """Base for tenant endpoints: exposes the request's ``Actor``."""

    @property
    def actor(self) -> Actor:
        return actor_from_request(self.request)


def page_of(request: Request, *, default: int = 100, most: int = 500) -> tuple[int, int]:
    def number(name: str, fallback: int) -> int:
        raw = request.query_params.get(name, "")
        if raw == "":
            return fallback
        if not re.fullmatch(r"[0-9]{1,9}", raw):
            raise serializers.ValidationError({name: ["give a whole number from 0 to 999999999"]})
        return int(raw)

    return min(number("limit", default), most), number("offset", 0)


class TenantOutput(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["slug", "name", "active", "created_at"]


class TenantCollectionApi(TenantApiView):
    """``GET`` the tenants you can see; ``POST`` a new one (staff)."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "TenantCollectionInput"

        slug = serializers.CharField(max_length=63)
        name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        owner = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")

    @extend_schema(responses=TenantOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response(TenantOutput(tenant_list(actor=self.actor), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: TenantOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = tenant_create(
            actor=self.actor,
            slug=data.validated_data["slug"],
            name=data.validated_data["name"],
            owner_username=data.validated_data["owner"],
        )
        return Response(TenantOutput(tenant).data, status=status.HTTP_201_CREATED)


class TenantDetailApi(TenantApiView):
    """``GET`` one tenant; ``PATCH`` its name or ``active`` flag (staff)."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "TenantDetailInput"

        name = serializers.CharField(max_length=200, required=False)
        active = serializers.BooleanField(required=False)

    @extend_schema(responses=TenantOutput)
    def get(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.READ)
        return Response(TenantOutput(tenant).data)

    @extend_schema(request=InputSerializer, responses=TenantOutput)
    def patch(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.READ)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        tenant = tenant_update(actor=self.actor, tenant=tenant, **data.validated_data)
        return Response(TenantOutput(tenant).data)


class MembershipOutput(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")

    class Meta:
        model = Membership
        fields = ["username", "role", "created_at"]


class MemberCollectionApi(TenantApiView):
    """``GET`` a tenant's members; ``POST`` one (owners)."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MemberCollectionInput"

        username = serializers.CharField(max_length=150)
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(responses=MembershipOutput(many=True))
    def get(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.READ)
        return Response(MembershipOutput(membership_list(tenant=tenant), many=True).data)

    @extend_schema(request=InputSerializer, responses={201: MembershipOutput})
    def post(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.MANAGE_ACCESS)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = membership_add(actor=self.actor, tenant=tenant, **data.validated_data)
        return Response(MembershipOutput(membership).data, status=status.HTTP_201_CREATED)


class MemberDetailApi(TenantApiView):
    """``GET`` a member; ``PATCH`` their role or ``DELETE`` them (owners)."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "MemberDetailInput"

        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(responses=MembershipOutput)
    def get(self, request: Request, slug: str, username: str) -> Response:
        membership = access_membership_by_username(self.actor, slug, username, action=Action.READ)
        return Response(MembershipOutput(membership).data)

    @extend_schema(request=InputSerializer, responses=MembershipOutput)
    def patch(self, request: Request, slug: str, username: str) -> Response:
        membership = access_membership_by_username(self.actor, slug, username, action=Action.MANAGE_ACCESS)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = membership_update(actor=self.actor, membership=membership, role=data.validated_data["role"])
        return Response(MembershipOutput(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, username: str) -> Response:
        membership = access_membership_by_username(self.actor, slug, username, action=Action.MANAGE_ACCESS)
        membership_remove(actor=self.actor, membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyOutput(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", default=None)
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "prefix",
            "name",
            "scopes",
            "created_by",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "revoked",
        ]

    @extend_schema_field(bool)
    def get_revoked(self, api_key: ApiKey) -> bool:
        return api_key.revoked_at is not None


class ApiKeyCollectionApi(TenantApiView):
    """``GET`` a tenant's API keys; ``POST`` a new one, whose full key is shown only here."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ApiKeyCollectionInput"

        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices), min_length=1)
        expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)

    @extend_schema(responses=ApiKeyOutput(many=True))
    def get(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.MANAGE_ACCESS)
        return Response(ApiKeyOutput(api_key_list(tenant=tenant), many=True).data)

    @extend_schema(
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "ApiKeyCreated",
                {
                    "key": serializers.CharField(help_text="the full key; it is never shown again"),
                    "api_key": ApiKeyOutput(),
                },
            )
        },
    )
    def post(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.MANAGE_ACCESS)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, raw = api_key_create(actor=self.actor, tenant=tenant, **data.validated_data)
        return Response({"key": raw, "api_key": ApiKeyOutput(api_key).data}, status=status.HTTP_201_CREATED)


class ApiKeyDetailApi(TenantApiView):
    """``GET`` one key by prefix; ``DELETE`` revokes it (it stops working within 2 s)."""

    @extend_schema(responses=ApiKeyOutput)
    def get(self, request: Request, slug: str, prefix: str) -> Response:
        api_key = access_api_key_by_prefix(self.actor, slug, prefix, action=Action.MANAGE_ACCESS)
        return Response(ApiKeyOutput(api_key).data)

    @extend_schema(responses=ApiKeyOutput)
    def delete(self, request: Request, slug: str, prefix: str) -> Response:
        api_key = access_api_key_by_prefix(self.actor, slug, prefix, action=Action.MANAGE_ACCESS)
        api_key = api_key_revoke(actor=self.actor, api_key=api_key)
        return Response(ApiKeyOutput(api_key).data)


class QuotaOutput(serializers.ModelSerializer):
    class Meta:
        model = Quota
        fields = list(QUOTA_FIELDS)


class QuotaApi(TenantApiView):
    """``GET`` the quota with current usage (members); ``PATCH`` limits (staff)."""

    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "QuotaInput"

        gpu_memory_mb = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False)
        cpu_memory_mb = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False)
        max_replicas = serializers.IntegerField(min_value=0, max_value=100_000, required=False)
        max_models = serializers.IntegerField(min_value=0, max_value=100_000, required=False)
        max_artifact_mb = serializers.IntegerField(min_value=0, max_value=2**31 - 1, required=False)
        requests_per_second = serializers.IntegerField(min_value=0, max_value=10_000_000, required=False)
        max_concurrent_requests = serializers.IntegerField(min_value=0, max_value=1_000_000, required=False)

    response_schema = inline_serializer(
        "QuotaWithUsage",
        {
            "quota": QuotaOutput(),
            "usage": inline_serializer(
                "TenantUsage",
                {
                    "models": serializers.IntegerField(),
                    "replicas": serializers.IntegerField(),
                    "gpu_memory_mb": serializers.IntegerField(),
                    "cpu_memory_mb": serializers.IntegerField(),
                    "active_api_keys": serializers.IntegerField(),
                },
            ),
        },
    )

    def _body(self, tenant: Tenant, quota: Quota) -> dict[str, Any]:
        return {"quota": QuotaOutput(quota).data, "usage": vars(tenant_usage(tenant=tenant))}

    @extend_schema(responses=response_schema)
    def get(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.READ)
        return Response(self._body(tenant, quota_get(tenant=tenant)))

    @extend_schema(request=InputSerializer, responses=response_schema)
    def patch(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.READ)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        quota = quota_update(actor=self.actor, tenant=tenant, changes=dict(data.validated_data))
        return Response(self._body(tenant, quota))


class AuditEventOutput(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor", "action", "target", "details"]


class AuditEventListApi(TenantApiView):
    """``GET`` the tenant's audit trail, newest first (``?limit=&offset=``; owners, admins)."""

    @extend_schema(
        parameters=[OpenApiParameter("limit", int, required=False), OpenApiParameter("offset", int, required=False)],
        responses=AuditEventOutput(many=True),
    )
    def get(self, request: Request, slug: str) -> Response:
        tenant = access_tenant_by_slug(self.actor, slug, action=Action.AUDIT)
        limit, offset = page_of(request)
        events = audit_event_list(tenant=tenant)[offset : offset + limit]
        return Response(AuditEventOutput(events, many=True).data)
