"""Production settings refuse an insecure configuration, naming the variable to set."""

import subprocess

import pytest

from tests.conftest import PYTHON, REPO_ROOT, subprocess_env

GOOD = {
    "SECRET_KEY": "k" * 50,
    "ALLOWED_HOSTS": "berth.example.com",
    "DEBUG": "false",
}


def _load_production(**env: str) -> subprocess.CompletedProcess[str]:
    base = subprocess_env(DJANGO_SETTINGS_MODULE="control_plane.settings.production")
    for name in ("SECRET_KEY", "ALLOWED_HOSTS", "DEBUG"):
        base.pop(name, None)
    base.update(env)
    return subprocess.run(
        [PYTHON, "-c", "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"],
        cwd=REPO_ROOT,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_complete_configuration_starts():
    result = _load_production(**GOOD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("missing_or_bad", "env", "named"),
    [
        ("no SECRET_KEY", {k: v for k, v in GOOD.items() if k != "SECRET_KEY"}, "SECRET_KEY is not set"),
        ("short SECRET_KEY", {**GOOD, "SECRET_KEY": "short"}, "SECRET_KEY is too short"),
        ("no ALLOWED_HOSTS", {k: v for k, v in GOOD.items() if k != "ALLOWED_HOSTS"}, "ALLOWED_HOSTS is not set"),
        ("wildcard host", {**GOOD, "ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS contains '*'"),
        ("DEBUG on", {**GOOD, "DEBUG": "true"}, "DEBUG is on"),
    ],
)
def test_insecure_configurations_fail_naming_the_variable(missing_or_bad, env, named):
    result = _load_production(**env)
    assert result.returncode != 0, f"{missing_or_bad} was accepted"
    assert "ImproperlyConfigured" in result.stderr
    assert named in result.stderr


def test_secret_key_is_generated_once_into_the_data_dir(tmp_path):
    code = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"
    env = subprocess_env(DJANGO_SETTINGS_MODULE="control_plane.settings.base", BERTH_DATA_DIR=str(tmp_path))
    env.pop("SECRET_KEY", None)
    first = subprocess.run([PYTHON, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    second = subprocess.run([PYTHON, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    key = first.stdout.strip()
    assert len(key) >= 50
    assert second.stdout.strip() == key
    key_file = tmp_path / "secret_key"
    assert key_file.read_text() == key
    assert key_file.stat().st_mode & 0o777 == 0o600
