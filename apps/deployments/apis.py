"""REST endpoints of the deployments app."""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.deployments.models import Worker
from apps.deployments.selectors import worker_list


class WorkerListApi(APIView):
    """Staff only: every registered inference worker with its device and heartbeat age."""

    permission_classes = [IsAdminUser]

    class OutputSerializer(serializers.ModelSerializer):
        last_heartbeat_age_s = serializers.SerializerMethodField()

        class Meta:
            model = Worker
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
                "used_bytes",
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
