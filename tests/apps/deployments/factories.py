from datetime import timedelta

import factory
from django.utils import timezone

from apps.deployments.models import Worker


class WorkerFactory(factory.django.DjangoModelFactory[Worker]):
    class Meta:
        model = Worker

    worker_id = factory.Sequence(lambda n: f"worker-{n}")
    host = "127.0.0.1"
    dataplane_url = factory.Sequence(lambda n: f"http://127.0.0.1:{9000 + n}")
    queue = factory.LazyAttribute(lambda w: f"worker.{w.worker_id}")
    device_kind = Worker.DeviceKind.CPU
    device_name = "x86_64"
    capacity_bytes = 4 * 1024**3
    used_bytes = 512 * 1024**2
    last_heartbeat_at = factory.LazyFunction(lambda: timezone.now() - timedelta(seconds=1))
