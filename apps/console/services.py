"""Writes of the console app: the demo seed ``make run`` applies on every start."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

ADMIN_USERNAME = "admin"


@dataclass(frozen=True)
class DemoLogin:
    """The console login the seed made or kept; ``password`` is empty when unknown."""

    username: str
    password: str
    created: bool


@transaction.atomic
def demo_seed(*, data_dir: Path, admin_password: str = "") -> DemoLogin:
    """Creates the demo platform's admin user; a second call changes nothing.

    Args:
        data_dir: Where a generated password is kept (0600) so later starts can print it.
        admin_password: ``BERTH_ADMIN_PASSWORD``; when given it is (re)applied.

    Returns:
        The login to print.
    """
    user_model = get_user_model()
    password_file = data_dir / "admin-password"
    user = user_model.objects.filter(username=ADMIN_USERNAME).first()
    created = user is None
    if user is None:
        user = user_model(username=ADMIN_USERNAME, email="admin@berth.local", is_staff=True, is_superuser=True)
    if admin_password:
        password = admin_password
    elif created:
        password = secrets.token_urlsafe(12)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password)
    else:
        password = password_file.read_text().strip() if password_file.exists() else ""
        return DemoLogin(username=ADMIN_USERNAME, password=password, created=False)
    user.set_password(password)
    user.save()
    return DemoLogin(username=ADMIN_USERNAME, password=password, created=created)
