"""The model host: accounting by measured memory, LRU eviction, unload frees, isolation."""

from __future__ import annotations

import threading

import numpy as np
import psutil
import pytest

from inference_workers.artifacts import ArtifactError
from inference_workers.errors import ExecutionFailedError, InsufficientMemoryError, LoadError, ModelNotFoundError
from inference_workers.types import BatchingConfig, ModelKey
from tests.inference_workers.conftest import load_command
from tests.inference_workers.models import doubler_specs

MiB = 1024**2


def infer(host, loop_thread, name: str, array: np.ndarray, version: int | None = None):
    entry = host.resolve(name, version)
    return loop_thread.run(entry.batcher.submit({entry.runner.signature.inputs[0].name: array}))


def test_load_serves_and_reports_a_measured_reservation(make_host, loop_thread, model_files):
    host = make_host()
    report = host.load(load_command(model_files["mlp"], model="mlp", reservation=1 * MiB))
    assert report.state == "ready"
    assert report.measured_bytes > 4 * MiB  # the MLP's weights alone are ~5 MiB
    assert report.reserved_bytes == max(report.measured_bytes, 1 * MiB)
    assert host.reserved_bytes == report.reserved_bytes
    out = infer(host, loop_thread, "acme.mlp", np.ones((2, 256), dtype=np.float32))
    assert out["output"].shape == (2, 10)


def test_each_format_loads_with_its_signature(make_host, loop_thread, model_files):
    host = make_host()
    inputs, outputs = doubler_specs()
    host.load(
        load_command(model_files["doubler_ts"], model="ts", model_format="torchscript", inputs=inputs, outputs=outputs)
    )
    host.load(load_command(model_files["mlp_export"], model="ex", model_format="torch_export"))
    assert infer(host, loop_thread, "acme.ts", np.ones((3, 4), np.float32))["output"][0, 0] == 2.0
    exported = host.resolve("acme.ex", None).runner.signature
    assert exported.batched and exported.inputs[0].shape == (-1, 256)
    assert infer(host, loop_thread, "acme.ex", np.ones((3, 256), np.float32))["output_0"].shape == (3, 10)


def test_a_load_that_does_not_fit_is_refused_naming_needed_and_free(make_host, model_files):
    host = make_host(budget=100 * MiB)
    host.load(load_command(model_files["doubler"], model="a", reservation=60 * MiB))
    with pytest.raises(InsufficientMemoryError) as refused:
        host.load(load_command(model_files["doubler"], model="b", reservation=50 * MiB))
    message = str(refused.value)
    assert str(50 * MiB) in message and str(40 * MiB) in message
    # The refusal is reported like a failed load (heartbeats carry it), holding no memory.
    states = {s.key.model: s for s in host.states()}
    assert states["a"].state == "ready"
    assert states["b"].state == "failed" and states["b"].reserved_bytes == 0 and str(50 * MiB) in states["b"].reason


def test_headroom_is_never_reserved(make_host, model_files):
    host = make_host(budget=100 * MiB, headroom=50 * MiB)
    with pytest.raises(InsufficientMemoryError):
        host.load(load_command(model_files["doubler"], reservation=60 * MiB))


def test_eviction_when_allowed_takes_the_least_recently_used_idle_model(make_host, loop_thread, model_files):
    host = make_host(budget=200 * MiB)
    host.load(load_command(model_files["doubler"], model="used", reservation=80 * MiB))
    host.load(load_command(model_files["doubler"], model="unused", reservation=80 * MiB))
    # Loaded first, but used since: the model loaded later and never used is the LRU one.
    infer(host, loop_thread, "acme.used", np.ones((1, 4), np.float32))
    with pytest.raises(InsufficientMemoryError):
        host.load(load_command(model_files["doubler"], model="new", reservation=80 * MiB))
    host.load(load_command(model_files["doubler"], model="new", reservation=80 * MiB, allow_evict=True))
    assert sorted(s.key.model for s in host.states()) == ["new", "used"]


def test_unload_really_frees_memory(make_host, model_files):
    host = make_host()
    process = psutil.Process()
    host.load(load_command(model_files["doubler"], model="warm"))  # the runtime's one-time cost
    before = process.memory_info().rss
    report = host.load(load_command(model_files["big"], model="big", reservation=1 * MiB))
    loaded = process.memory_info().rss
    assert report.measured_bytes > 60 * MiB  # ~72 MiB of weights
    assert loaded - before > 60 * MiB
    assert host.unload(ModelKey("acme", "big", 1)) is True
    after = process.memory_info().rss
    assert loaded - after > 0.8 * (loaded - before), f"RSS {before} -> {loaded} -> {after}"
    assert host.unload(ModelKey("acme", "big", 1)) is False  # idempotent


def test_the_cached_artifact_goes_with_the_last_model_using_it(make_host, model_files):
    host = make_host()
    first = load_command(model_files["doubler"], model="one")
    host.load(first)
    host.load(load_command(model_files["doubler"], model="two"))  # the same artifact
    cached = host.cache.path_for(first.sha256)
    assert cached.is_file()
    assert host.unload(ModelKey("acme", "one", 1))
    assert cached.is_file()  # still "two"'s
    assert host.unload(ModelKey("acme", "two", 1))
    assert not cached.exists() and list(host.cache.folder.rglob("*")) == []


def test_a_model_is_never_loaded_twice(make_host, model_files, monkeypatch):
    from inference_workers import host as host_module

    opened = []
    real = host_module.measure_footprint

    def counting(*args, **kwargs):
        opened.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(host_module, "measure_footprint", counting)
    host = make_host()
    command = load_command(model_files["mlp"], model="mlp")
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(host.load(command))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(host.states()) == 1
    assert len({r.reserved_bytes for r in reports}) == 1  # later loads saw the first one's result
    assert host.load(command).state == "ready"
    assert len(opened) == 1  # one runtime session opened for five loads of one key


def test_a_checksum_mismatch_fails_the_load_and_reserves_nothing(make_host, model_files):
    host = make_host()
    with pytest.raises(ArtifactError, match="sha256"):
        host.load(load_command(model_files["doubler"], sha256="0" * 64))
    assert host.reserved_bytes == 0
    assert host.states()[0].state == "failed"


def test_running_out_of_memory_while_loading_fails_only_that_load(make_host, loop_thread, model_files, monkeypatch):
    from inference_workers import host as host_module

    host = make_host()
    host.load(load_command(model_files["doubler"], model="good"))
    real = host_module.measure_footprint

    def exhausted(*args, **kwargs):
        raise MemoryError  # the allocation a real load makes, failing

    monkeypatch.setattr(host_module, "measure_footprint", exhausted)
    with pytest.raises(LoadError, match="out of memory while loading the model"):
        host.load(load_command(model_files["doubler"], model="big"))
    reports = {r.key.model: r for r in host.states()}
    assert reports["big"].state == "failed" and reports["big"].reserved_bytes == 0
    assert reports["big"].reason == "out of memory while loading the model"
    assert host.reserved_bytes == reports["good"].reserved_bytes  # the failed load holds nothing
    assert infer(host, loop_thread, "acme.good", np.ones((1, 4), dtype=np.float32))["output"].tolist() == [[2.0] * 4]
    monkeypatch.setattr(host_module, "measure_footprint", real)
    assert host.load(load_command(model_files["doubler"], model="big")).state == "ready"  # once memory is back


def test_a_missing_artifact_fails_clearly(make_host, tmp_path):
    host = make_host()
    with pytest.raises(LoadError, match="cannot fetch"):
        host.load(load_command(tmp_path / "nope.onnx", sha256="1" * 64))


def test_an_artifact_that_is_not_a_model_fails_clearly(make_host, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not an onnx model")
    host = make_host()
    with pytest.raises(LoadError, match="ONNX Runtime cannot load"):
        host.load(load_command(junk))
    assert host.reserved_bytes == 0


def test_a_misbehaving_model_fails_only_its_own_requests(make_host, loop_thread, model_files):
    host = make_host()
    inputs, outputs = doubler_specs()
    host.load(
        load_command(model_files["raiser"], model="raiser", model_format="torchscript", inputs=inputs, outputs=outputs)
    )
    # Declares a batched output but returns one row whatever the batch.
    host.load(
        load_command(
            model_files["collapser"],
            model="collapser",
            model_format="torchscript",
            inputs=inputs,
            outputs=outputs,
            batching=BatchingConfig(max_batch_size=8),
        )
    )
    host.load(load_command(model_files["doubler"], model="good"))
    with pytest.raises(ExecutionFailedError, match="sum over 1000"):
        infer(host, loop_thread, "acme.raiser", np.full((1, 4), 500.0, np.float32))
    with pytest.raises(ExecutionFailedError, match="rows"):
        infer(host, loop_thread, "acme.collapser", np.full((3, 4), 500.0, np.float32))
    assert infer(host, loop_thread, "acme.collapser", np.ones((3, 4), np.float32))["output"].shape == (3, 4)
    assert infer(host, loop_thread, "acme.raiser", np.ones((1, 4), np.float32))["output"][0, 0] == 2.0
    assert infer(host, loop_thread, "acme.good", np.ones((1, 4), np.float32))["output"][0, 0] == 2.0


def test_resolve_by_name_and_version(make_host, model_files):
    host = make_host()
    host.load(load_command(model_files["doubler"], version=1))
    host.load(load_command(model_files["doubler"], version=3))
    assert host.resolve("acme.doubler", None).key.version == 3
    assert host.resolve("acme.doubler", 1).key.version == 1
    with pytest.raises(ModelNotFoundError):
        host.resolve("acme.doubler", 2)
    with pytest.raises(ModelNotFoundError):
        host.resolve("other.doubler", None)


def test_a_model_whose_outputs_break_its_declared_dtype_fails_to_load(make_host, tmp_path):
    from tests.inference_workers.models import widener_torchscript

    host = make_host()
    inputs, outputs = doubler_specs()
    with pytest.raises(LoadError, match="float64"):
        host.load(
            load_command(
                widener_torchscript(tmp_path / "w.pt"),
                model="wide",
                model_format="torchscript",
                inputs=inputs,
                outputs=outputs,
            )
        )
    assert host.reserved_bytes == 0


def test_thread_settings_reach_the_onnx_session(tmp_path):
    from onnx import TensorProto, helper

    from inference_workers.runtimes.base import RuntimeOptions
    from inference_workers.runtimes.onnx import OnnxRunner

    path = tmp_path / "m.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    runner = OnnxRunner(path, RuntimeOptions(device="cpu", intra_op_threads=1, inter_op_threads=2))
    options = runner._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)
    assert options.execution_mode.name == "ORT_PARALLEL"
    # Idle threads sleep unless spin-waiting is asked for.
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = OnnxRunner(path, RuntimeOptions(device="cpu", intra_op_threads=2, spin_wait=True))
    with pytest.raises(RuntimeError, match="does not have"):  # left at ONNX Runtime's default (spinning)
        spinning._session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")


def test_each_load_checks_the_devices_real_use_against_the_accounting(make_host, model_files, caplog):
    # A budget far under this process's real RSS: the accounting fits, reality does not.
    host = make_host(budget=64 * MiB)
    with caplog.at_level("WARNING", logger="inference_workers.host"):
        host.load(load_command(model_files["doubler"], model="tiny", reservation=1 * MiB))
    assert host.last_device_state is not None and host.last_device_state.used_bytes > 64 * MiB
    assert any("over its budget" in record.getMessage() for record in caplog.records)
    caplog.clear()
    roomy = make_host(budget=1024**4)
    with caplog.at_level("WARNING", logger="inference_workers.host"):
        roomy.load(load_command(model_files["doubler"], model="tiny", reservation=1 * MiB))
    assert not [record for record in caplog.records if "over its budget" in record.getMessage()]


def test_on_a_gpu_a_torch_model_reserves_what_it_measured(loop_thread, tmp_path, model_files, monkeypatch):
    """The load command's figure can be the registry's CPU estimate; on a GPU a torch model
    reserves its measure, while ONNX keeps the reservation its CUDA arena is capped at (the
    CUDA measure stands in here, through the same call the host makes: no GPU here)."""
    from dataclasses import replace

    from inference_workers import host as host_module
    from inference_workers.artifacts import ArtifactCache
    from inference_workers.devices import CpuDevice
    from inference_workers.host import ModelHost
    from inference_workers.runtimes import RuntimeOptions

    real = host_module.measure_footprint
    caps = []
    measures = [24 * MiB, 24 * MiB, 0]

    def on_cuda(path, model_format, options, **kwargs):
        assert options.device == "cuda:0"
        caps.append(options.gpu_mem_limit_bytes)
        runner, footprint = real(path, model_format, replace(options, device="cpu"), **kwargs)
        return runner, replace(footprint, bytes=measures.pop(0), device_kind="cuda")

    monkeypatch.setattr(host_module, "measure_footprint", on_cuda)
    host = ModelHost(
        device=CpuDevice(memory_budget_bytes=4 * 1024**3),
        options=RuntimeOptions(device="cuda:0", intra_op_threads=1),
        cache=ArtifactCache(tmp_path / "cache"),
        loop=loop_thread,
    )
    try:
        exported = host.load(
            load_command(model_files["mlp_export"], model="ex", model_format="torch_export", reservation=160 * MiB)
        )
        assert exported.measured_bytes == 24 * MiB and exported.reserved_bytes == 24 * MiB
        onnx = host.load(load_command(model_files["mlp"], model="onnx", reservation=160 * MiB))
        assert onnx.measured_bytes == 24 * MiB and onnx.reserved_bytes == 160 * MiB
        assert caps == [160 * MiB, 160 * MiB]  # each runtime was given its reservation as the cap
        assert host.reserved_bytes == 184 * MiB
        # A measure that a free elsewhere in the process shrank (here to nothing) never puts
        # the reservation below the weights the model holds.
        again = host.load(
            load_command(model_files["mlp_export"], model="ex2", model_format="torch_export", reservation=160 * MiB)
        )
        weights = getattr(host.resolve("acme.ex2", None).runner, "weight_bytes", None)
        assert weights is not None and weights > 0 and again.reserved_bytes == weights
    finally:
        host.close()


def test_a_fetch_whose_folder_an_unload_just_removed_makes_it_again(tmp_path, model_files, monkeypatch):
    """Fetches run beside each other and an unload removes an emptied prefix folder: a fetch
    caught between its mkdir and its draft file makes the folder again."""
    import os

    from inference_workers import artifacts
    from inference_workers.artifacts import ArtifactCache
    from tests.inference_workers.models import sha256_of

    real = artifacts.tempfile.mkstemp
    folders = []

    def racing(dir: str, prefix: str) -> tuple[int, str]:
        folders.append(dir)
        if len(folders) == 1:
            os.rmdir(dir)  # the unload's rmdir, between this fetch's mkdir and mkstemp
        return real(dir=dir, prefix=prefix)

    monkeypatch.setattr(artifacts.tempfile, "mkstemp", racing)
    cache = ArtifactCache(tmp_path / "cache")
    path = cache.fetch(model_files["doubler"].as_uri(), sha256_of(model_files["doubler"]))
    assert path.read_bytes() == model_files["doubler"].read_bytes() and len(folders) == 2


def test_a_load_leaves_the_frozen_heap_alone_and_an_unload_finds_the_cycles_it_left(make_host, model_files):
    import gc
    import weakref

    host = make_host()
    host.load(load_command(model_files["doubler"], model="doubler", version=1))
    frozen_at_full_passes: list[int] = []

    def watch(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            frozen_at_full_passes.append(gc.get_freeze_count())

    gc.callbacks.append(watch)
    try:
        host.load(load_command(model_files["doubler"], model="doubler", version=2))
        # A load's collections walk only what is new: what was frozen stays frozen (a pass
        # over the whole heap would stop every model's requests for a quarter of a second).
        assert frozen_at_full_passes and min(frozen_at_full_passes) > 0
        assert gc.get_freeze_count() > 0
        # The loaded runner is frozen with the rest; give it a cycle, as models' objects have.
        runner = host.resolve("acme.doubler", 2).runner
        runner.itself = runner
        gone = weakref.ref(runner)
        del runner
        frozen_at_full_passes.clear()
        assert host.unload(ModelKey("acme", "doubler", 2))
        # The unload unfreezes and collects everything, so the cycle is found and freed.
        assert 0 in frozen_at_full_passes
        assert gone() is None
        assert gc.get_freeze_count() > 0  # and the heap is frozen again
    finally:
        gc.callbacks.remove(watch)
