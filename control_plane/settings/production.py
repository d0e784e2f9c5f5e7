"""Production settings: refuse to start on an insecure configuration.

Each check names the variable to set, so an operator can fix it from the message.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from control_plane.settings.env import env

if not env.str("SECRET_KEY", default=""):
    raise ImproperlyConfigured(
        "SECRET_KEY is not set: production needs a long random SECRET_KEY in the environment "
        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))')"
    )
if len(env.str("SECRET_KEY")) < 32:
    raise ImproperlyConfigured("SECRET_KEY is too short: use at least 32 random characters")
if not env.str("ALLOWED_HOSTS", default=""):
    raise ImproperlyConfigured("ALLOWED_HOSTS is not set: list the host names this server answers to, comma-separated")
if env.bool("DEBUG", default=False):
    raise ImproperlyConfigured("DEBUG is on: unset DEBUG (or set DEBUG=false) in production")
if "*" in env.list("ALLOWED_HOSTS"):
    raise ImproperlyConfigured("ALLOWED_HOSTS contains '*': name the real host names instead")

# Only now, with the environment known to be safe, do the base settings run (they create
# the data dir and would otherwise generate a secret key file).
from control_plane.settings.base import *  # noqa: F403

DEBUG = False
SESSION_COOKIE_SECURE = env.bool("BERTH_SECURE_COOKIES", default=True)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
