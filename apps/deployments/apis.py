"""REST endpoints of the deployments app."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.deployments.models import Deployment, Replica, Worker
from apps.deployments.selectors import deployment_replicas, deployment_wanted, worker_list
from apps.deployments.services import (
    DeploymentSpec,
    deployment_canary,
    deployment_delete,
    deployment_promote,
    deployment_put,
    deployment_rollback,
    deployment_spec_of,
    deployment_stable_version,
    worker_drain,
)
from apps.tenants.access import Action, access_deployment_by_model_name, access_model_by_name
from apps.tenants.apis import TenantApiView
from apps.tenants.authentication import actor_from_request
from control_plane.errors import ApplicationError, NotFoundError


class WorkerListApi(APIView):
    """Staff only: every registered inference worker with its device and heartbeat age."""

    permission_classes = [IsAdminUser]

    class OutputSerializer(serializers.ModelSerializer):
        last_heartbeat_age_s = serializers.SerializerMethodField()
        allocatable_bytes = serializers.IntegerField(read_only=True)

        class Meta:
            model = Worker
            ref_name = "WorkerOutput"
            fields = [
                "worker_id",
                "host",
                "dataplane_url",
                "state",
                "device_kind",
                "device_index",
                "device_name",
                "device_uuid",
                "capacity_bytes",
                "allocatable_bytes",
                "reserved_bytes",
                "used_bytes",
                "hosted",
                "drain_requested_at",
                "utilisation_pct",
                "first_seen_at",
                "last_heartbeat_at",
                "last_heartbeat_age_s",
            ]

        @extend_schema_field(float)
        def get_last_heartbeat_age_s(self, worker: Worker) -> float:
            return round((timezone.now() - worker.last_heartbeat_at).total_seconds(), 3)

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        serializer = self.OutputSerializer(worker_list(), many=True)
        return Response(serializer.data)


class WorkerDrainApi(APIView):
    """Staff only: ``POST`` drains a worker (its replicas move to others, each serving until
    its replacement is ready; nothing new is placed there); ``DELETE`` takes it back."""

    permission_classes = [IsAdminUser]

    def _worker(self, worker_id: str) -> Worker:
        worker = worker_list().filter(worker_id=worker_id).first()
        if worker is None:
            raise NotFoundError(f"no worker '{worker_id}'; GET /api/v1/workers/ lists them")
        return worker

    @extend_schema(request=None, responses=WorkerListApi.OutputSerializer)
    def post(self, request: Request, worker_id: str) -> Response:
        worker = worker_drain(actor=actor_from_request(request), worker=self._worker(worker_id), drain=True)
        return Response(WorkerListApi.OutputSerializer(worker).data)

    @extend_schema(request=None, responses=WorkerListApi.OutputSerializer)
    def delete(self, request: Request, worker_id: str) -> Response:
        worker = worker_drain(actor=actor_from_request(request), worker=self._worker(worker_id), drain=False)
        return Response(WorkerListApi.OutputSerializer(worker).data)


class DeploymentApi(TenantApiView):
    """A model's deployment: ``GET`` desired and actual, ``PUT`` creates or replaces,
    ``PATCH`` changes traffic or scaling (the canary), ``DELETE`` undeploys."""

    class InputSerializer(serializers.Serializer):
        traffic = serializers.DictField(child=serializers.IntegerField(min_value=0, max_value=100))
        batching = serializers.DictField(required=False, default=dict)
        min_replicas = serializers.IntegerField(min_value=0, max_value=1000, default=1)
        max_replicas = serializers.IntegerField(min_value=0, max_value=1000, default=1)
        target_inflight_per_replica = serializers.IntegerField(min_value=1, max_value=100_000, default=8)
        scale_to_zero_after_s = serializers.IntegerField(min_value=0, max_value=10**7, default=0)
        device_kind = serializers.ChoiceField(choices=Deployment.DeviceKind.choices, default="cpu")
        prediction_log = serializers.DictField(
            required=False,
            default=dict,
            help_text="opt-in: sample_rate (0-1), retention_days (1-90), task (classification|regression), output",
        )

        class Meta:
            ref_name = "DeploymentInput"

    class PatchSerializer(InputSerializer):
        class Meta:
            ref_name = "DeploymentPatch"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, partial=True, **kwargs)

    class ReplicaOutput(serializers.ModelSerializer):
        version = serializers.IntegerField(source="version.number")
        worker = serializers.CharField(source="worker.worker_id", default=None)

        class Meta:
            model = Replica
            ref_name = "ReplicaOutput"
            fields = ["version", "index", "worker", "state", "reason", "reserved_bytes", "last_used_at"]

    class OutputSerializer(serializers.ModelSerializer):
        model = serializers.CharField(source="model.name")
        replicas = serializers.SerializerMethodField()

        stable_version = serializers.SerializerMethodField()
        versions = serializers.SerializerMethodField()

        class Meta:
            model = Deployment
            fields = [
                "model",
                "traffic",
                "batching",
                "min_replicas",
                "max_replicas",
                "target_inflight_per_replica",
                "scale_to_zero_after_s",
                "device_kind",
                "prediction_log",
                "stable_version",
                "created_at",
                "updated_at",
                "versions",
                "replicas",
            ]

        def get_stable_version(self, deployment: Deployment) -> int:
            return deployment_stable_version(deployment)

        @extend_schema_field(serializers.ListField(child=serializers.DictField()))
        def get_replicas(self, deployment: Deployment) -> list[dict[str, Any]]:
            return list(DeploymentApi.ReplicaOutput(self._replicas(deployment), many=True).data)

        @extend_schema_field(serializers.ListField(child=serializers.DictField()))
        def get_versions(self, deployment: Deployment) -> list[dict[str, Any]]:
            """Desired against actual per serving version: weight, replicas wanted (the
            autoscaler's last decision, else the minimum) and ready."""
            return deployment_wanted(deployment=deployment, replicas=self._replicas(deployment))

        def _replicas(self, deployment: Deployment) -> list[Replica]:
            cache = self.context.setdefault("replicas", {})
            if deployment.pk not in cache:
                cache[deployment.pk] = list(deployment_replicas(deployment=deployment))
            return cache[deployment.pk]

    def _spec(self, data: dict[str, Any], base: DeploymentSpec | None = None) -> DeploymentSpec:
        values = {**(base.__dict__ if base else {}), **data}
        values["traffic"] = {str(key): weight for key, weight in values["traffic"].items()}
        return DeploymentSpec(**values)

    @extend_schema(responses=OutputSerializer)
    def get(self, request: Request, slug: str, name: str) -> Response:
        deployment = access_deployment_by_model_name(self.actor, slug, name, action=Action.READ)
        return Response(self.OutputSerializer(deployment).data)

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def put(self, request: Request, slug: str, name: str) -> Response:
        model = access_model_by_name(self.actor, slug, name, action=Action.WRITE)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = deployment_put(actor=self.actor, model=model, spec=self._spec(dict(data.validated_data)))
        return Response(self.OutputSerializer(deployment).data)

    @extend_schema(request=PatchSerializer, responses=OutputSerializer)
    def patch(self, request: Request, slug: str, name: str) -> Response:
        deployment = access_deployment_by_model_name(self.actor, slug, name, action=Action.WRITE)
        data = self.PatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        spec = self._spec(dict(data.validated_data), base=deployment_spec_of(deployment))
        deployment = deployment_put(actor=self.actor, model=deployment.model, spec=spec)
        return Response(self.OutputSerializer(deployment).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, slug: str, name: str) -> Response:
        deployment = access_deployment_by_model_name(self.actor, slug, name, action=Action.WRITE)
        deployment_delete(actor=self.actor, deployment=deployment)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeploymentCanaryApi(TenantApiView):
    """``POST`` the canary steps: ``canary/`` with ``{"version": 2, "percent": 10}`` sends that
    share to the version and the rest to the stable one; ``promote/`` (optionally naming the
    version) sends it all traffic and makes it stable; ``rollback/`` sends all traffic back to
    the stable version."""

    class InputSerializer(serializers.Serializer):
        version = serializers.IntegerField(min_value=1, required=False)
        percent = serializers.IntegerField(min_value=0, max_value=100, required=False)

        class Meta:
            ref_name = "CanaryInput"

    @extend_schema(request=InputSerializer, responses=DeploymentApi.OutputSerializer)
    def post(self, request: Request, slug: str, name: str, step: str) -> Response:
        deployment = access_deployment_by_model_name(self.actor, slug, name, action=Action.WRITE)
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if step == "canary":
            missing = [field for field in ("version", "percent") if field not in data]
            if missing:
                raise ApplicationError(
                    f"a canary needs {' and '.join(missing)}", field_errors={f: ["required"] for f in missing}
                )
            deployment = deployment_canary(
                actor=self.actor, deployment=deployment, version=data["version"], percent=data["percent"]
            )
        elif step == "promote":
            deployment = deployment_promote(actor=self.actor, deployment=deployment, version=data.get("version"))
        else:
            deployment = deployment_rollback(actor=self.actor, deployment=deployment)
        return Response(DeploymentApi.OutputSerializer(deployment).data)
