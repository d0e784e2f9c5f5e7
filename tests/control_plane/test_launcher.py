from control_plane.launcher import process_table


def test_cpu_machine_runs_one_cpu_inference_worker():
    table = dict(process_table(python="/venv/bin/python", host="127.0.0.1", port=8000, gpus=0))
    assert set(table) == {"web", "control", "beat", "inference"}
    assert "--device cpu" in table["inference"]
    assert "--port 8000" in table["web"]


def test_one_inference_worker_per_gpu_with_distinct_ids():
    table = dict(process_table(python="python", host="127.0.0.1", port=8000, gpus=2, worker_id="box"))
    assert "--device cuda:0" in table["inference-cuda0"] and "--worker-id box-cuda0" in table["inference-cuda0"]
    assert "--device cuda:1" in table["inference-cuda1"] and "--worker-id box-cuda1" in table["inference-cuda1"]
    assert "inference" not in table


def test_the_control_worker_consumes_the_configured_queue_at_the_configured_level():
    table = dict(
        process_table(python="python", host="::1", port=9, gpus=0, control_queue="ctl-blue", log_level="debug")
    )
    assert "--queues ctl-blue" in table["control"]
    assert "--loglevel DEBUG" in table["control"] and "--loglevel DEBUG" in table["beat"]
    assert "--log-level debug" in table["web"]
    # uvicorn must finish before honcho's 5 s SIGKILL.
    assert "--timeout-graceful-shutdown 4" in table["web"]


def test_the_control_worker_and_beat_run_below_the_serving_processes_cpu_priority():
    table = dict(process_table(python="python", host="127.0.0.1", port=8000, gpus=0))
    assert table["control"].startswith("nice -n 10 ") and table["beat"].startswith("nice -n 10 ")
    assert "nice" not in table["web"] and "nice" not in table["inference"]
    equal = dict(process_table(python="python", host="127.0.0.1", port=8000, gpus=0, control_nice=0))
    assert "nice" not in equal["control"] and "nice" not in equal["beat"]
