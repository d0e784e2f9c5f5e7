"""Base settings: the embedded defaults ``make run`` uses. Everything comes from env."""

from __future__ import annotations

from typing import Any

from control_plane.settings.env import (
    BASE_DIR,
    artifact_storage,
    cache,
    channel_layers,
    data_dir,
    database,
    env,
    plotly_js_dir,
    price_per_hour,
    secret_key,
)
from inference_workers.broker import broker_config

BERTH_DATA_DIR = data_dir()

SECRET_KEY = secret_key(BERTH_DATA_DIR)
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "apps.tenants",
    "apps.registry",
    "apps.deployments",
    "apps.gateway",
    "apps.monitoring",
    "apps.console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "control_plane.urls"
ASGI_APPLICATION = "control_plane.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.console.context.console",
            ],
        },
    },
]

DATABASES = {"default": database(BERTH_DATA_DIR)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
CACHES = cache()
CHANNEL_LAYERS = channel_layers()

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "console:login"
LOGIN_REDIRECT_URL = "console:home"
LOGOUT_REDIRECT_URL = "console:login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "artifacts": artifact_storage(BERTH_DATA_DIR),
}
# Uploads stream to disk here (never into memory), on the same filesystem as the artifacts.
FILE_UPLOAD_TEMP_DIR = BERTH_DATA_DIR / "uploads"
FILE_UPLOAD_TEMP_DIR.mkdir(exist_ok=True)
# Also the size at which Django's ASGI handler spools a request body to disk (0 would mean never).
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

# The model registry.
BERTH_PUBLIC_URL = env.str("BERTH_PUBLIC_URL", default="").rstrip("/")
BERTH_ARTIFACT_URL_TTL_S = env.int("BERTH_ARTIFACT_URL_TTL_S", default=600)
BERTH_MAX_UPLOAD_MB = env.int("BERTH_MAX_UPLOAD_MB", default=4096)
BERTH_VALIDATION_TIMEOUT_S = env.float("BERTH_VALIDATION_TIMEOUT_S", default=120.0)
BERTH_VALIDATION_MEMORY_MB = env.int("BERTH_VALIDATION_MEMORY_MB", default=4096)
BERTH_VALIDATION_MAX_BATCH = env.int("BERTH_VALIDATION_MAX_BATCH", default=64)
# Where validation measures footprints: cpu, or cuda:N on a control worker with a GPU.
BERTH_VALIDATION_DEVICE = env.str("BERTH_VALIDATION_DEVICE", default="cpu")

STATIC_URL = "/static/"
STATIC_ROOT = BERTH_DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns about a missing STATIC_ROOT
STATICFILES_DIRS: list[Any] = [BASE_DIR / "frontend" / "static", ("vendor/plotly", plotly_js_dir())]
# Serve straight from the app and frontend folders, so `make run` needs no collectstatic.
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    # The first class's scheme goes in WWW-Authenticate, so anonymous calls get 401.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.tenants.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        "apps.tenants.authentication.StaffBasicAuthentication",
    ],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "control_plane.exception_handler.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Berth control API",
    "DESCRIPTION": "Tenants, models, versions, deployments and workers of a Berth platform.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

_BROKER = broker_config(
    url=env.str("CELERY_BROKER_URL", default=""),
    data_dir=BERTH_DATA_DIR,
    result_backend=env.str("CELERY_RESULT_BACKEND", default=""),
)
CELERY_BROKER_URL = _BROKER.url
CELERY_BROKER_TRANSPORT_OPTIONS = _BROKER.transport_options
CELERY_RESULT_BACKEND = _BROKER.result_backend
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A task under way when the broker goes away runs to its end (inference_workers/redis_broker.py).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = env.str("BERTH_CONTROL_QUEUE", default="control")
CELERY_BEAT_SCHEDULE = {
    "workers-mark-missing": {"task": "berth.workers_mark_missing", "schedule": 1.0},
    "reconcile": {"task": "berth.reconcile", "schedule": 2.0},
    "requeue-stuck-validations": {"task": "berth.registry.requeue_stuck_validations", "schedule": 60.0},
    "rollups-compact": {"task": "berth.monitoring.rollups_compact", "schedule": 30.0},
    "prediction-logs-prune": {"task": "berth.monitoring.prediction_logs_prune", "schedule": 600.0},
}

# How long a checked API key (or a refusal) is cached: bounds how long a revoked key works.
# 1.5 s leaves room for a check that read the row just before a revoke committed.
BERTH_API_KEY_CACHE_S = min(env.float("BERTH_API_KEY_CACHE_S", default=1.5), 2.0)

# The gateway (/v2). The worker token is the secret every worker checks (inference_workers.tokens).
BERTH_WORKER_TOKEN = env.str("BERTH_WORKER_TOKEN", default="")
BERTH_GATEWAY_MAX_BODY_MB = env.int("BERTH_GATEWAY_MAX_BODY_MB", default=64)
BERTH_GATEWAY_TIMEOUT_S = env.float("BERTH_GATEWAY_TIMEOUT_S", default=30.0)
BERTH_GATEWAY_COLD_START_S = env.float("BERTH_GATEWAY_COLD_START_S", default=30.0)
# Connections one gateway process keeps open to one worker at most; requests past it wait
# for one to free (within BERTH_GATEWAY_TIMEOUT_S), so a burst cannot exhaust descriptors.
BERTH_GATEWAY_MAX_CONNECTIONS_PER_WORKER = env.int("BERTH_GATEWAY_MAX_CONNECTIONS_PER_WORKER", default=256)
# How often the routing table is re-read (a new replica, a traffic change or a revoked key
# reaches the gateway within this, at most 2 s for keys).
BERTH_GATEWAY_REFRESH_S = env.float("BERTH_GATEWAY_REFRESH_S", default=0.5)
# Prometheus scrapes /metrics with this bearer token (or as a signed-in staff user); unset, staff only.
BERTH_METRICS_TOKEN = env.str("BERTH_METRICS_TOKEN", default="")
REDIS_URL = env.str("REDIS_URL", default="")

# Autoscaling: a lower replica count applies only after the higher one went unneeded this long.
BERTH_SCALE_DOWN_STABILISATION_S = env.float("BERTH_SCALE_DOWN_STABILISATION_S", default=60.0)

# A replica no longer wanted leaves routing at once and is unloaded this much later (longer
# than the gateways' refresh, so none of them still sends it requests).
BERTH_UNLOAD_GRACE_S = env.float("BERTH_UNLOAD_GRACE_S", default=3.0)

# A load no heartbeat has reported on after this long counts as failed (and is retried).
BERTH_LOAD_TIMEOUT_S = env.float("BERTH_LOAD_TIMEOUT_S", default=120.0)

# A failed load is tried again after this, doubling each time (3 tries in all).
BERTH_LOAD_RETRY_S = env.float("BERTH_LOAD_RETRY_S", default=2.0)

# Placement keeps this much of each device's memory free (MiB, per device kind): the data
# plane's per-thread cuBLAS workspaces and the allocator's slack live outside the models'
# measured footprints (a GPU worker's CUDA context and its loading threads' handles are
# already off the capacity it reports).
BERTH_DEVICE_HEADROOM_MB = {
    "cpu": env.int("BERTH_DEVICE_HEADROOM_MB_CPU", default=0),
    "cuda": env.int("BERTH_DEVICE_HEADROOM_MB_CUDA", default=512),
}

# A replica of a deployment that may scale to zero, idle this long, may be evicted (least
# recently used first) when a replica that must load finds no room; never one used sooner.
BERTH_EVICT_CHURN_GUARD_S = env.float("BERTH_EVICT_CHURN_GUARD_S", default=300.0)

# A worker that has missed this many heartbeats is taken for dead.
BERTH_HEARTBEAT_INTERVAL_S = env.float("BERTH_HEARTBEAT_INTERVAL_S", default=2.0)
BERTH_HEARTBEATS_MISSED_FOR_DEAD = 3

# Cost per prediction: the default price of one device-hour per device kind (staff may set
# others in the console or with PUT /api/v1/prices/{kind}/), in BERTH_CURRENCY.
BERTH_CURRENCY = env.str("BERTH_CURRENCY", default="USD")
BERTH_PRICE_PER_HOUR = {
    "cpu": price_per_hour("BERTH_PRICE_PER_HOUR_CPU", default="0.10"),
    "cuda": price_per_hour("BERTH_PRICE_PER_HOUR_CUDA", default="3.50"),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("BERTH_LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # Heartbeats arrive every 2 s per worker: log task failures, not every success.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
    },
}
