"""The control plane's Celery app: control tasks (heartbeats, reconcile) on ``control``."""

from __future__ import annotations

import os

from celery import Celery

# Control tasks other apps ask for by name (beat's schedule in settings names them too).
RECONCILE_TASK = "berth.reconcile"
WORKERS_MARK_MISSING_TASK = "berth.workers_mark_missing"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "control_plane.settings.base")

app = Celery("berth")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
