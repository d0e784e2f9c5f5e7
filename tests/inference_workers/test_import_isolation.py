"""The data plane never imports Django: prove it in fresh interpreters.

kombu (Celery's messaging library) opportunistically imports ``django.utils.functional``
when Django happens to be installed, to encode lazy strings. That is kombu's, not ours,
so the proof is twofold: the data plane works in an interpreter where Django cannot be
imported at all (a worker image without Django), and where Django is installed and
``DJANGO_SETTINGS_MODULE`` is set, no part of Django's settings, apps or ORM is loaded.
"""

import subprocess

from tests.conftest import PYTHON, REPO_ROOT, subprocess_env

MODULES = [
    *sorted(
        "inference_workers."
        + path.relative_to(REPO_ROOT / "inference_workers").with_suffix("").as_posix().replace("/", ".")
        for path in (REPO_ROOT / "inference_workers").rglob("*.py")
        if path.name != "__init__.py"
    ),
    "inference_workers",
    "inference_workers.runtimes",
]

BLOCK_DJANGO = """
import importlib.abc, sys
class NoDjango(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "django" or name.startswith("django.") or name == "apps" or name.startswith("apps."):
            raise ModuleNotFoundError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, NoDjango())
"""

USE_WORKER = f"""
import importlib, os, sys, tempfile
for name in {MODULES!r}:
    importlib.import_module(name)
from inference_workers.control import make_celery_app
from inference_workers.settings import WorkerSettings
app = make_celery_app(WorkerSettings.from_env({{"BERTH_DATA_DIR": tempfile.mkdtemp()}}))
app.loader.import_default_modules()
forbidden = ("django.conf", "django.apps", "django.db", "apps.", "control_plane")
loaded = sorted(m for m in sys.modules if m.startswith(forbidden))
print("LOADED=" + ",".join(loaded))
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", code],
        cwd=REPO_ROOT,
        env=subprocess_env(DJANGO_SETTINGS_MODULE="control_plane.settings.base"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_data_plane_runs_where_django_cannot_be_imported():
    result = _run(BLOCK_DJANGO + USE_WORKER)
    assert result.returncode == 0, result.stderr
    assert "LOADED=" in result.stdout


def test_with_django_installed_and_configured_no_settings_apps_or_orm_load():
    result = _run(USE_WORKER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "LOADED=", result.stdout


def test_the_check_itself_detects_a_django_import():
    # Guards the tests above against passing vacuously.
    result = _run(BLOCK_DJANGO + "import inference_workers\nimport django.conf\n")
    assert result.returncode != 0 and "blocked: django" in result.stderr
    result = _run(USE_WORKER.replace("app.loader", "import django.db; app.loader"))
    assert "django.db" in result.stdout
