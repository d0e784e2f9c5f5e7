"""``python -m inference_workers``: start one inference worker on one device."""

from __future__ import annotations

import argparse
import os
import sys

from inference_workers.control import make_celery_app
from inference_workers.errors import SettingsError
from inference_workers.settings import WorkerSettings


def main(argv: list[str] | None = None) -> int:
    """Parses flags over the ``BERTH_WORKER_*`` environment and runs the worker."""
    parser = argparse.ArgumentParser(prog="python -m inference_workers", description=__doc__)
    parser.add_argument("--device", help="cpu or cuda:N (BERTH_WORKER_DEVICE)")
    parser.add_argument("--memory-budget", help="CPU memory budget such as 4GiB (BERTH_WORKER_MEMORY_BUDGET)")
    parser.add_argument("--port", help="data-plane port, 0 for any free one (BERTH_WORKER_PORT)")
    parser.add_argument("--worker-id", help="unique worker id (BERTH_WORKER_ID)")
    parser.add_argument("--concurrency", type=int, default=4, help="control commands run at once")
    args = parser.parse_args(argv)

    environ = dict(os.environ)
    for flag, variable in (
        ("device", "BERTH_WORKER_DEVICE"),
        ("memory_budget", "BERTH_WORKER_MEMORY_BUDGET"),
        ("port", "BERTH_WORKER_PORT"),
        ("worker_id", "BERTH_WORKER_ID"),
    ):
        value = getattr(args, flag)
        if value is not None:
            environ[variable] = value
    try:
        settings = WorkerSettings.from_env(environ)
    except SettingsError as exc:
        print(f"berth worker: {exc}", file=sys.stderr)
        return 2

    # The settings have read these; Celery would otherwise let them override its explicit
    # configuration (BERTH_WORKER_BROKER_URL would lose to CELERY_BROKER_URL).
    for variable in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        os.environ.pop(variable, None)
    app = make_celery_app(settings)
    app.worker_main(
        [
            "worker",
            "--queues",
            settings.queue,
            "--hostname",
            f"{settings.worker_id}@%h",
            "--pool",
            "threads",
            "--concurrency",
            str(args.concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            settings.log_level,
        ]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
