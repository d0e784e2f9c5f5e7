"""The model host: many model versions on one device, accounted by measured memory.

Each hosted version reserves memory: the reservation its load command carries (the
registry's measured footprint), raised to what loading it here actually took. A load
that does not fit in the device's capacity (minus headroom) is refused with the bytes
needed and free, or, when the command allows it, makes room by unloading the
least-recently-used idle models first. One lock per model key: a model is never loaded
twice, and a second identical load is a no-op.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from inference_workers.artifacts import ArtifactCache
from inference_workers.batching import DynamicBatcher
from inference_workers.devices import Device
from inference_workers.errors import InsufficientMemoryError, LoadError, ModelNotFoundError, UnavailableError
from inference_workers.loop import EventLoopThread
from inference_workers.metrics import ModelStats, WorkerMetrics
from inference_workers.runtimes import Runner, RuntimeOptions, measure_footprint
from inference_workers.runtimes.base import checked, prime_runtime, release_freed_memory, runtime_primed
from inference_workers.types import HostedModel, HostedState, LoadCommand, ModelFormat, ModelKey

log = logging.getLogger(__name__)


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


@dataclass
class HostedEntry:
    """One hosted model version and everything that serves it."""

    command: LoadCommand
    state: HostedState
    reserved_bytes: int
    measured_bytes: int = 0
    reason: str = ""
    runner: Runner | None = None
    batcher: DynamicBatcher | None = None
    stats: ModelStats | None = None
    loaded_at: float = 0.0

    @property
    def key(self) -> ModelKey:
        return self.command.key

    @property
    def last_used(self) -> float:
        """When it last served a request (or was loaded), for LRU eviction."""
        used = self.stats.last_used if self.stats else 0.0
        return max(used, self.loaded_at)

    @property
    def idle(self) -> bool:
        """Ready with nothing queued or running: safe to evict."""
        return self.state == "ready" and self.batcher is not None and self.batcher.inflight == 0

    def report(self, *, window: bool = False) -> HostedModel:
        """The heartbeat's view of this model; ``window`` takes (and resets) its batch window."""
        p50, p99 = self.stats.percentiles_ms() if self.stats else (0.0, 0.0)
        return HostedModel(
            key=self.key,
            state=self.state,
            reserved_bytes=self.reserved_bytes,
            measured_bytes=self.measured_bytes,
            reason=self.reason,
            inflight=self.batcher.inflight if self.batcher else 0,
            queue_depth=self.batcher.queue_depth if self.batcher else 0,
            requests=self.stats.requests if self.stats else 0,
            errors=self.stats.errors if self.stats else 0,
            p50_ms=round(p50, 3),
            p99_ms=round(p99, 3),
            last_used_at=self.last_used,
            window=self.stats.take_window() if window and self.stats else None,
        )


class ModelHost:
    """Loads, serves and unloads model versions on one device."""

    def __init__(
        self,
        *,
        device: Device,
        options: RuntimeOptions,
        cache: ArtifactCache,
        loop: EventLoopThread,
        metrics: WorkerMetrics | None = None,
        headroom_bytes: int = 0,
    ) -> None:
        self.device = device
        self.options = options
        self.cache = cache
        self.metrics = metrics or WorkerMetrics()
        self.headroom_bytes = headroom_bytes
        self._loop = loop
        self._entries: dict[ModelKey, HostedEntry] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[ModelKey, threading.Lock] = {}
        self._measure_lock = threading.Lock()
        self.last_device_state = device.state()
        self.capacity_bytes = device.state().total_bytes
        self.metrics.hosted = self.states

    # Accounting --------------------------------------------------------------------

    def capacity_recount(self) -> None:
        """Reads the capacity again: the device's changed (its own fixed use taken off)."""
        with self._lock:
            self.capacity_bytes = self.device.state().total_bytes

    @property
    def allocatable_bytes(self) -> int:
        """Capacity less the headroom never handed to models."""
        return max(self.capacity_bytes - self.headroom_bytes, 0)

    @property
    def reserved_bytes(self) -> int:
        """What hosted (and loading) models reserve now."""
        with self._lock:
            return self._reserved_locked()

    def _reserved_locked(self) -> int:
        return sum(entry.reserved_bytes for entry in self._entries.values() if entry.state != "failed")

    def _key_lock(self, key: ModelKey) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def _victims(self, shortfall: int, *, sparing: ModelKey) -> list[HostedEntry] | None:
        """Least-recently-used idle models whose memory covers ``shortfall``, or None."""
        candidates = sorted(
            (entry for entry in self._entries.values() if entry.idle and entry.key != sparing),
            key=lambda entry: entry.last_used,
        )
        chosen: list[HostedEntry] = []
        freed = 0
        for entry in candidates:
            if freed >= shortfall:
                break
            chosen.append(entry)
            freed += entry.reserved_bytes
        return chosen if freed >= shortfall else None

    # Commands ----------------------------------------------------------------------

    def load(self, command: LoadCommand) -> HostedModel:
        """Loads a model version (idempotent: an identical ready load returns at once).

        Raises:
            InsufficientMemoryError: It does not fit, naming bytes needed and free.
            LoadError: The artifact could not be fetched, verified, loaded or run.
        """
        key = command.key
        with self._key_lock(key):
            existing = self._entries.get(key)
            if existing is not None and existing.state == "ready" and existing.command.sha256 == command.sha256:
                return existing.report()
            if existing is not None:
                self._unload_locked(key)
            if self._unprimed(command.format):
                # Before the room is counted: a thread's first prime shrinks what is offered.
                try:
                    with self._measure_lock:
                        self._prime_this_thread(command.format)
                except Exception as exc:
                    reason = f"could not prepare {self.options.device} for the load: {exc}"
                    with self._lock:
                        self._entries[key] = HostedEntry(
                            command=command, state="failed", reserved_bytes=0, reason=reason
                        )
                    raise LoadError(reason) from exc
            with self._lock:
                need = command.reservation_bytes
                free = self.allocatable_bytes - self._reserved_locked()
                victims: list[HostedEntry] = []
                if need > free:
                    found = self._victims(need - free, sparing=key) if command.allow_evict else None
                    if found is None:
                        refusal = InsufficientMemoryError(
                            f"model {key} needs {need} bytes ({_mib(need)}) but only {max(free, 0)} bytes "
                            f"({_mib(max(free, 0))}) of {self.allocatable_bytes} are free on {self.options.device}"
                            + ("" if command.allow_evict else "; allow eviction or free memory")
                        )
                        # Reported in heartbeats like any failed load, so the control plane sees why.
                        self._entries[key] = HostedEntry(
                            command=command, state="failed", reserved_bytes=0, reason=str(refusal)
                        )
                        raise refusal
                    victims = found
                entry = HostedEntry(command=command, state="loading", reserved_bytes=need)
                self._entries[key] = entry
            for victim in victims:
                self._evict(victim, for_key=key)
            try:
                with self._lock:
                    if self._reserved_locked() > self.allocatable_bytes:
                        raise InsufficientMemoryError(
                            f"model {key} needs {need} bytes and the models chosen for eviction became busy; retry"
                        )
                # Fetched outside the measure lock, so several loads' downloads overlap (a
                # worker taking over a dead one's replicas fetches them all at once).
                path = self.cache.fetch(command.artifact_uri, command.sha256)
                with self._measure_lock:  # loads measured one at a time, so RSS/NVML deltas are theirs
                    self._open(entry, path)
            except Exception as exc:
                reason = "out of memory while loading the model" if isinstance(exc, MemoryError) else str(exc)
                with self._lock:
                    entry.state, entry.reason, entry.reserved_bytes = "failed", reason, 0
                runner, entry.runner = entry.runner, None
                opened = runner is not None
                if runner is not None:
                    with self._measure_lock:  # a free inside another load's measure would shrink it
                        runner.close()
                del runner  # before the pass below, so the closed runner can be freed by it
                # A full pass only when a model was opened (a bad artifact retried in a loop
                # would otherwise stop every model's requests at each try).
                release_freed_memory(something_was_freed=opened)
                if isinstance(exc, LoadError):
                    raise
                raise LoadError(reason) from exc
            self._check_reality(key)
            release_freed_memory()  # what the load made is frozen with the rest
            return entry.report()

    def _evict(self, victim: HostedEntry, *, for_key: ModelKey) -> None:
        """Unloads a chosen victim only if it is still that very entry, and still idle."""
        with self._key_lock(victim.key):
            if self._entries.get(victim.key) is victim and victim.idle:
                log.info("evicting %s (least recently used) to make room for %s", victim.key, for_key)
                self._unload_locked(victim.key)

    def _check_reality(self, key: ModelKey) -> None:
        """Compares the device's measured use with the accounting after a load."""
        state = self.device.state()
        reserved = self.reserved_bytes
        # On a GPU: what this process holds against its own use plus what it offers models (a
        # GPU shared by several workers holds theirs too); the whole device's use only where
        # NVML does not list the process.
        mine = self.device.process_used_bytes() if state.kind == "cuda" else None
        used = mine if mine is not None else state.used_bytes
        limit = self.device.own_bytes + self.allocatable_bytes
        if state.kind == "cuda" and used > limit:
            log.warning(
                "after loading %s, NVML shows %s %d bytes, over %d (its own %d, for models %d, reserved %d): "
                "the device is over-committed",
                key,
                "this worker holding" if mine is not None else "the device's use at",
                used,
                limit,
                self.device.own_bytes,
                self.allocatable_bytes,
                reserved,
            )
        elif state.kind == "cpu" and state.used_bytes > self.capacity_bytes:
            log.warning(
                "after loading %s, the worker's RSS is %d bytes, over its budget of %d (reserved %d)",
                key,
                state.used_bytes,
                self.capacity_bytes,
                reserved,
            )
        self.last_device_state = state

    def _unprimed(self, model_format: ModelFormat) -> bool:
        """Whether this loading thread (or the model's runtime) has CUDA state to make before
        the load on this GPU; False on the CPU. No lock, no I/O."""
        if self.device.kind != "cuda" or self.options.cuda_index is None:
            return False
        from inference_workers.runtimes.gpu import primed_here

        return not (primed_here(self.options.cuda_index) and runtime_primed(model_format, self.options))

    def _prime_this_thread(self, model_format: ModelFormat) -> None:
        """Primes CUDA on this loading thread and ``model_format``'s runtime in the process,
        under the measure lock: the thread's cuBLAS handle and workspace (about 95 MiB on the
        H200, made on its first matrix product) and a runtime's one-time state (ONNX
        Runtime's CUDA provider), all outside every model's measure, are counted as the
        worker's own use, off what it offers models from now on. Raises what priming raised."""
        from inference_workers.runtimes.gpu import gpu_meter, prime_cuda

        index = self.options.cuda_index
        assert index is not None
        with gpu_meter(index) as made:
            prime_cuda(index)
            prime_runtime(model_format, self.options)
        if made[0] > 0:
            self.device.own_use_add(made[0])
            self.capacity_recount()
            log.info(
                "priming %s for %s took %s, the worker's own from now on",
                self.options.device,
                model_format,
                _mib(made[0]),
            )

    def _open(self, entry: HostedEntry, path: Path) -> None:
        command = entry.command
        max_batch = max(command.batching.max_batch_size, 1)
        options = self.options
        if options.cuda_index is not None and command.reservation_bytes:
            # The reservation is the footprint measured at the largest batch: ONNX Runtime's
            # CUDA arena may not grow past it, so one model cannot eat its neighbours' memory.
            options = replace(options, gpu_mem_limit_bytes=command.reservation_bytes)
        runner, footprint = measure_footprint(
            path, command.format, options, max_batch=max_batch, inputs=command.inputs, outputs=command.outputs
        )
        entry.runner = runner
        entry.measured_bytes = footprint.bytes
        with self._lock:
            if footprint.bytes > entry.reserved_bytes:
                others = self._reserved_locked() - entry.reserved_bytes
                if others + footprint.bytes > self.allocatable_bytes:
                    raise InsufficientMemoryError(
                        f"model {command.key} took {footprint.bytes} bytes when loaded here, more than its reservation "
                        f"of {entry.reserved_bytes}, and the device has no room for the difference"
                    )
                entry.reserved_bytes = footprint.bytes
            elif options.cuda_index is not None and command.format != "onnx":
                # On a GPU a torch model holds what it measured at its largest batch: the
                # command's figure may be the registry's CPU estimate (hundreds of MiB of
                # runtime for a model of a few). ONNX Runtime keeps its reservation, the cap
                # its CUDA arena was given and may grow to. Never below the weights the model
                # holds on the device, whatever a free elsewhere in the process (an inference
                # releasing its activations meanwhile) did to the measure.
                entry.reserved_bytes = max(footprint.bytes, getattr(runner, "weight_bytes", 0))
        stats = ModelStats(command.key, self.metrics)
        batcher = DynamicBatcher(
            execute=checked(runner),
            config=command.batching,
            batched=runner.signature.batched,
            name=str(command.key),
            observer=stats,
        )

        async def start() -> None:
            batcher.start()

        self._loop.run(start())
        with self._lock:
            entry.batcher, entry.stats, entry.loaded_at = batcher, stats, time.time()
            entry.state = "ready"
        log.info("loaded %s: reserved %s, measured %s", command.key, _mib(entry.reserved_bytes), _mib(footprint.bytes))

    def unload(self, key: ModelKey, *, drain_seconds: float = 30.0) -> bool:
        """Unloads a model version (queued and running requests finish first); False if absent."""
        with self._key_lock(key):
            return self._unload_locked(key, drain_seconds=drain_seconds)

    def _unload_locked(self, key: ModelKey, *, drain_seconds: float = 30.0) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            entry.state = "unloading"
        if entry.batcher is not None:
            self._loop.run(entry.batcher.close(drain_seconds=drain_seconds))
        if entry.runner is not None:
            with self._measure_lock:  # a free inside another load's measure would shrink it
                entry.runner.close()
        with self._lock:
            self._entries.pop(key, None)
            # The cached artifact goes with the last model using it (a load inserts its entry
            # under this lock before it fetches, so none is fetching it now).
            sha256 = entry.command.sha256
            if not any(other.command.sha256 == sha256 for other in self._entries.values()):
                self.cache.remove(sha256)
        self.metrics.forget(key)
        entry.runner = entry.batcher = None
        release_freed_memory(something_was_freed=True)
        log.info("unloaded %s", key)
        return True

    # Serving -----------------------------------------------------------------------

    def resolve(self, name: str, version: int | None) -> HostedEntry:
        """The hosted entry for a data-plane model name (``tenant.model``) and version.

        Without a version, the highest ready version. Raises ``ModelNotFoundError`` or,
        for a model that is loading or unloading, ``UnavailableError``.
        """
        entries = [entry for entry in list(self._entries.values()) if entry.key.dataplane_name == name]
        if version is not None:
            entries = [entry for entry in entries if entry.key.version == version]
        if not entries:
            shown = name.split(".", 1)[-1]
            raise ModelNotFoundError(
                f"model '{shown}'" + (f" version {version}" if version else "") + " is not hosted here"
            )
        ready = [entry for entry in entries if entry.state == "ready"]
        if not ready:
            raise UnavailableError(f"model {entries[0].key} is {entries[0].state}; retry shortly")
        return max(ready, key=lambda entry: entry.key.version)

    def states(self, *, windows: bool = False) -> list[HostedModel]:
        """Every hosted model's report, for heartbeats (``windows``: with their batch windows,
        which each heartbeat takes once) and ``status``."""
        return [entry.report(window=windows) for entry in list(self._entries.values())]

    def put_back_windows(self, models: tuple[HostedModel, ...]) -> None:
        """Returns the batch windows of a heartbeat that was not sent (the next one carries
        them); a model unloaded meanwhile takes its window with it."""
        for model in models:
            entry = self._entries.get(model.key)
            if model.window and entry is not None and entry.stats is not None:
                entry.stats.put_back(model.window)

    @property
    def inflight(self) -> int:
        """Requests queued or running across all models."""
        return sum(entry.batcher.inflight for entry in list(self._entries.values()) if entry.batcher)

    def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no request is in flight; False when ``timeout_s`` ran out first."""
        deadline = time.monotonic() + timeout_s
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.inflight == 0

    def close(self) -> None:
        """Unloads everything."""
        for key in list(self._entries):
            self.unload(key, drain_seconds=0)
