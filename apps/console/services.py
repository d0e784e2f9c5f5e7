"""Writes of the console app: the demo seed ``make run`` applies on every start."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

from apps.registry.demo import demo_model_bytes, upload_from_bytes
from apps.registry.models import ModelVersion
from apps.registry.services import model_version_create
from apps.tenants.access import Actor
from apps.tenants.models import ApiKey, Membership, Role, Scope, Tenant
from apps.tenants.services import api_key_create, membership_add, tenant_create

ADMIN_USERNAME = "admin"
DEMO_TENANT = "demo"
DEMO_OWNER = "demo-owner"
DEMO_MODEL = "demo-mlp"


@dataclass(frozen=True)
class DemoLogin:
    """What the seed made or kept, to print. Empty secrets mean "unknown"."""

    username: str
    password: str
    created: bool
    owner_username: str = DEMO_OWNER
    owner_password: str = ""
    tenant: str = DEMO_TENANT
    api_key: str = ""
    deployed: bool = False


def _remember(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)


def _recall(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def _user_with_password(*, username: str, password_file: Path, password: str, staff: bool) -> tuple[str, bool]:
    """Creates the user with a generated (remembered) or given password; returns (password, created)."""
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    created = user is None
    if user is None:
        user = user_model(username=username, email=f"{username}@berth.local", is_staff=staff, is_superuser=staff)
    if not password and not created:
        return _recall(password_file), False
    if not password:
        password = secrets.token_urlsafe(12)
        _remember(password_file, password)
    user.set_password(password)
    user.save()
    return password, created


def _demo_deploy(*, actor: Actor, tenant: Tenant, device_kind: str) -> bool:
    """Validates the demo version here (a sandboxed child, a few seconds) and deploys it once."""
    from apps.deployments.models import Deployment
    from apps.deployments.services import DeploymentSpec, deployment_put
    from apps.registry.tasks import validate_model_version

    version = ModelVersion.objects.select_related("model").filter(model__tenant=tenant, model__name=DEMO_MODEL).first()
    if version is None:
        return False
    if Deployment.objects.filter(model=version.model).exists():
        return True
    if version.status == ModelVersion.Status.VALIDATING:
        validate_model_version(version.pk)  # idempotent: the control worker's copy of the task then does nothing
        version.refresh_from_db()
    if version.status != ModelVersion.Status.READY:
        return False
    spec = DeploymentSpec(
        traffic={str(version.number): 100},
        batching={"max_batch_size": 8, "max_queue_delay_us": 500},
        min_replicas=1,
        max_replicas=1,
        target_inflight_per_replica=8,
        scale_to_zero_after_s=0,
        device_kind=device_kind,
    )
    deployment_put(actor=actor, model=version.model, spec=spec)
    return True


@transaction.atomic
def demo_seed(*, data_dir: Path, admin_password: str = "", deploy: bool = False, device_kind: str = "cpu") -> DemoLogin:
    """Creates the demo platform; a second call changes nothing.

    The admin (staff) user, a tenant ``demo`` owned by ``demo-owner``, an API key for it
    with every scope, and a small ONNX model ``demo-mlp`` uploaded through the registry;
    with ``deploy``, the model validated and deployed (one replica on ``device_kind``).
    Generated secrets are kept in the data dir (0600) so each start
    can print them again; ``admin_password`` (``BERTH_ADMIN_PASSWORD``) is re-applied to
    both users when given.
    """
    password, created = _user_with_password(
        username=ADMIN_USERNAME, password_file=data_dir / "admin-password", password=admin_password, staff=True
    )
    owner_password, _ = _user_with_password(
        username=DEMO_OWNER, password_file=data_dir / "demo-owner-password", password=admin_password, staff=False
    )
    admin = Actor(user=get_user_model().objects.get(username=ADMIN_USERNAME))
    tenant = Tenant.objects.filter(slug=DEMO_TENANT).first()
    if tenant is None:
        tenant = tenant_create(actor=admin, slug=DEMO_TENANT, name="Demo tenant", owner_username=DEMO_OWNER)
    elif not Membership.objects.filter(tenant=tenant, user__username=DEMO_OWNER).exists():
        membership_add(actor=admin, tenant=tenant, username=DEMO_OWNER, role=Role.OWNER)
    if not ModelVersion.objects.filter(model__tenant=tenant, model__name=DEMO_MODEL).exists():
        # Through the same service as the REST upload: stored, then validated by the control worker.
        with upload_from_bytes("demo.onnx", demo_model_bytes()) as upload:  # closed: its temp file is gone
            model_version_create(actor=admin, tenant=tenant, model_name=DEMO_MODEL, upload=upload)
    key_file = data_dir / "demo-api-key"
    api_key = _recall(key_file)
    if not api_key or not ApiKey.objects.filter(tenant=tenant, prefix=api_key.split("_")[1], revoked_at=None).exists():
        _, api_key = api_key_create(actor=admin, tenant=tenant, name="demo", scopes=list(Scope.values))
        _remember(key_file, api_key)
    deployed = _demo_deploy(actor=admin, tenant=tenant, device_kind=device_kind) if deploy else False
    return DemoLogin(
        username=ADMIN_USERNAME,
        password=password,
        created=created,
        owner_password=owner_password,
        api_key=api_key,
        deployed=deployed,
    )
