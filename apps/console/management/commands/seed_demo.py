"""``manage.py seed_demo``: create the demo platform (idempotent) and print its logins."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.console.services import demo_seed
from control_plane.settings.env import env

UNKNOWN = "(unknown: set BERTH_ADMIN_PASSWORD to choose one)"


class Command(BaseCommand):
    help = "Create the demo admin, the demo tenant with its owner and API key; safe to repeat."

    def handle(self, *args: Any, **options: Any) -> None:
        login = demo_seed(
            data_dir=settings.BERTH_DATA_DIR,
            admin_password=env.str("BERTH_ADMIN_PASSWORD", default=""),
        )
        verb = "created" if login.created else "kept"
        self.stdout.write(f"demo seed: admin user {verb}; login {login.username} / {login.password or UNKNOWN}")
        self.stdout.write(
            f"demo seed: tenant '{login.tenant}' owner login {login.owner_username} / {login.owner_password or UNKNOWN}"
        )
        self.stdout.write(f"demo seed: tenant '{login.tenant}' API key {login.api_key}")
