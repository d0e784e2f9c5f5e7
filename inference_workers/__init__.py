"""Berth's data plane: inference workers that host models on one device each.

This package never imports Django and never touches the control plane's database.
It learns what to host from Celery commands and reports back with heartbeats.
"""
