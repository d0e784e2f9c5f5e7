"""``manage.py seed_demo``: create the demo platform (idempotent) and print its logins."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.console.services import DEMO_MODEL, demo_seed
from control_plane.settings.env import env

UNKNOWN = "(unknown: set BERTH_ADMIN_PASSWORD to choose one)"


class Command(BaseCommand):
    help = (
        "Create the demo admin, the demo tenant with its owner and API key, and deploy the demo model; safe to repeat."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--device-kind", default="cpu", choices=["cpu", "cuda"], help="where the demo model runs")
        parser.add_argument("--base-url", default="", help="the platform's URL, for the printed examples")

    def handle(self, *args: Any, **options: Any) -> None:
        login = demo_seed(
            data_dir=settings.BERTH_DATA_DIR,
            admin_password=env.str("BERTH_ADMIN_PASSWORD", default=""),
            deploy=env.bool("BERTH_SEED_DEMO_DEPLOY", default=True),
            device_kind=options["device_kind"],
        )
        verb = "created" if login.created else "kept"
        self.stdout.write(f"demo seed: admin user {verb}; login {login.username} / {login.password or UNKNOWN}")
        self.stdout.write(
            f"demo seed: tenant '{login.tenant}' owner login {login.owner_username} / {login.owner_password or UNKNOWN}"
        )
        self.stdout.write(f"demo seed: tenant '{login.tenant}' API key {login.api_key}")
        base = options["base_url"] or "http://127.0.0.1:8000"
        if login.deployed and login.api_key:
            self.stdout.write(demo_examples(base_url=base, api_key=login.api_key))


def demo_examples(*, base_url: str, api_key: str) -> str:
    """A curl and a Python (stock v2 client) call of the demo model, ready to paste."""
    host = base_url.split("://", 1)[-1]
    return f"""demo seed: '{DEMO_MODEL}' is deployed; once its replica is ready, try:
  curl -s -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\
    -d '{{"inputs":[{{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}}]}}' \\
    {base_url}/v2/models/{DEMO_MODEL}/infer
  .venv/bin/python - <<'PY'
import numpy as np, tritonclient.http as v2
client = v2.InferenceServerClient("{host}")
headers = {{"Authorization": "Bearer {api_key}"}}
data = v2.InferInput("input", [2, 4], "FP32")
data.set_data_from_numpy(np.ones((2, 4), dtype=np.float32), binary_data=True)
print(client.infer("{DEMO_MODEL}", [data], headers=headers).as_numpy("output"))
PY"""
