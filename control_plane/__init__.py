"""Berth's control plane: the Django project (the design card calls it ``platform/``)."""

from control_plane.celery import app as celery_app

__all__ = ("celery_app",)
