"""`radnode serve`: the supervisor with its listeners, completion, routing and workers."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from types import FrameType

import pydicom
import structlog

from node.api import ApiContext, ApiServer, build_app
from node.assembly import CompletionSweeper, CountedCompletion
from node.audit import audit, configure_audit
from node.cli.work import Worker, route_pending
from node.config import NodeConfig
from node.errors import ConfigError
from node.export import DestinationProbe, Exporter, Target, count_series_instances
from node.inference.package import ModelRegistry
from node.inference.pipelines import PIPELINES
from node.ingest import AssociationLimiter, DicomListener
from node.ingest.scp import open_shared_socket
from node.ingest.stow import StowRequestError, receive_stow
from node.logs import configure_logging
from node.store import InstanceIndex, InstanceStore, JobQueue
from node.store.index import WriteLock
from node.store.owners import this_host
from node.store.retention import purge_expired
from node.store.sealed import configure_sealing

log = structlog.get_logger("radnode.serve")

_PR_SET_PDEATHSIG = 1
CHILD_START_SECONDS = 60
RETENTION_CHECK_SECONDS = 60.0
ROUTE_POLL_SECONDS = 0.2  # routing looks for newly complete series (a read when idle)


def open_store(config: NodeConfig, write_lock: WriteLock | None = None) -> InstanceStore:
    """The instance store and index the configuration names."""
    storage = config.storage
    storage.root.mkdir(parents=True, exist_ok=True)
    index = InstanceIndex(storage.resolved_index_url(), write_lock)
    return InstanceStore(storage.root, index, reserve_bytes=storage.min_free_mb * 2**20)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the supervisor dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _pin_gpu(number: int) -> None:
    """Give worker n the n-th NVIDIA GPU (round robin), unless IT chose with
    CUDA_VISIBLE_DEVICES; must run before ONNX Runtime creates a CUDA session."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    gpus = sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*"))
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str((number - 1) % len(gpus))


def _child_started(config: NodeConfig) -> threading.Event:
    """Set up a child process of the supervisor; the event is set by SIGTERM or SIGINT."""
    # pydicom prints invalid values in its warnings (a malformed birth date, say):
    # never in this node's logs.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    _die_with_parent()
    configure_logging(config.logging.level, config.logging.format)
    configure_audit(config.storage.resolved_audit_path())
    configure_sealing(config.storage.encryption_key_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def _listener_process(
    config: NodeConfig,
    counter: Synchronized[int],
    write_lock: WriteLock,
    listen_socket: socket.socket,
    number: int,
    ready: EventType,
) -> None:
    """Entry point of an extra listener process, accepting on the shared socket."""
    stop = _child_started(config)
    store = open_store(config, write_lock)
    listener = DicomListener(
        config,
        store,
        AssociationLimiter(config.node.max_associations, counter),
        listen_socket=listen_socket,
        number=number,
    )
    listener.start()
    ready.set()
    stop.wait()
    listener.stop()
    store.close()


def _worker_process(config: NodeConfig, number: int, ready: EventType) -> None:
    """Entry point of a worker process: claims jobs and runs models until stopped.

    Workers do not take the listeners' write lock: a worker may be killed (out of
    memory, a crashing native library) and a lock held by a dead process is never
    released, which would stop every write of the node. SQLite's own lock, which the
    kernel releases when its holder dies, and its busy timeout order their writes.
    """
    _pin_gpu(number)
    stop = _child_started(config)
    store = open_store(config, None)
    registry = ModelRegistry.load(config.inference.resolved_models_dir())
    ready.set()
    Worker(config, store, registry, number).run(stop)
    store.close()


def load_models(config: NodeConfig) -> ModelRegistry:
    """The model packages, checked against the routes; ConfigError says what to fix."""
    models_dir = config.inference.resolved_models_dir()
    registry = ModelRegistry.load(models_dir)
    for package in registry:
        if package.pipeline not in PIPELINES:
            raise ConfigError(
                f"{package.folder / 'model.yaml'}: pipeline {package.pipeline!r} is unknown; "
                f"use one of {sorted(PIPELINES)}"
            )
    for i, route in enumerate(config.routes):
        if route.model not in registry:
            known = ", ".join(p.name for p in registry) or "none"
            raise ConfigError(
                f"routes[{i}].model {route.model!r} is not a model package in "
                f"{models_dir} (available: {known}); fix the name or "
                "inference.models_dir"
            )
    return registry


def _route_loop(
    config: NodeConfig, store: InstanceStore, stop: threading.Event, interval: float
) -> None:
    """Route complete series into jobs until stopped; errors are logged, the loop goes on."""
    queue = JobQueue(store.index)
    while not stop.wait(interval):
        try:
            route_pending(config, store, queue)
        except Exception:
            log.exception("routing_failed")


def _start_counted_completion(
    config: NodeConfig, store: InstanceStore, stop: threading.Event
) -> threading.Thread | None:
    """Ask the sources that answer C-FIND how many instances each series has."""
    queried = {s.name: s for s in config.sources if s.completeness_query is not None}
    if not queried:
        return None

    def counter(source: str, study_uid: str, series_uid: str) -> int | None:
        query = queried[source].completeness_query
        if query is None:  # only sources with a query are asked
            return None
        target = Target(query.ae_title or queried[source].ae_title, query.host, query.port)
        return count_series_instances(
            target, config.node.ae_title, study_uid, series_uid, query.timeout_seconds
        )

    intervals = {
        name: s.completeness_query.interval_seconds
        for name, s in queried.items()
        if s.completeness_query is not None
    }
    completion = CountedCompletion(store.index, counter, intervals)
    thread = threading.Thread(target=completion.run, args=(stop,), name="counted-completion")
    thread.start()
    return thread


def _api_context(
    config: NodeConfig,
    store: InstanceStore,
    limiter: AssociationLimiter,
    registry: ModelRegistry | None,
    workers: dict[int, BaseProcess],
    probe: DestinationProbe,
) -> ApiContext:
    """What the HTTP API needs from the node: the store, STOW-RS ingest, readiness."""

    def stow(
        source: str, content_type: str, body: bytes, study_uid: str | None, peer: str
    ) -> tuple[int, dict[str, object]]:
        try:
            outcome = receive_stow(
                store, source, content_type, body, study_uid=study_uid, peer=peer
            )
        except StowRequestError as exc:
            log.warning("stow_refused", source=source, peer=peer, reason=exc.reason)
            return exc.http_status, {"detail": exc.reason}
        return outcome.http_status, outcome.response()

    def readiness() -> dict[str, str]:
        problems = {"store": "", "models": "", "workers": "", "disk": ""}
        try:
            store.index.count_instances()
            marker = store.root / f".readyz-{threading.get_ident()}-{os.urandom(4).hex()}"
            marker.write_bytes(b"")
            marker.unlink()
        except OSError as exc:
            problems["store"] = f"the storage root is not writable: {exc.strerror or exc}"
        if config.routes and registry is None:
            problems["models"] = "the model packages are not loaded"
        wanted = config.inference.workers if config.routes else 0
        alive = sum(1 for p in list(workers.values()) if p.is_alive())
        if alive < wanted:
            problems["workers"] = f"{alive} of {wanted} worker processes run"
        free = shutil.disk_usage(store.root).free
        if free < store.reserve_bytes:
            problems["disk"] = (
                f"{free // 2**20} MiB free, below storage.min_free_mb "
                f"({store.reserve_bytes // 2**20} MiB): senders get 'out of resources'"
            )
        return problems

    return ApiContext(
        config=config,
        index=store.index,
        root=store.root,
        receive_stow=stow,
        readiness=readiness,
        associations=lambda: limiter.in_use,
        destination_checks=lambda: {
            name: (r.ok, r.message, r.at) for name, r in probe.results().items()
        },
    )


def _retention_loop(config: NodeConfig, store: InstanceStore, stop: threading.Event) -> None:
    """Purge studies whose retention has passed, every minute; errors are logged."""
    retention = config.storage.retention_hours * 3600
    while not stop.wait(min(RETENTION_CHECK_SECONDS, retention / 10)):
        try:
            for study in purge_expired(store.index, store.root, retention, time.time()):
                log.info(
                    "study_purged",
                    study_uid=study.study_uid,
                    instances=study.instances,
                    results=study.results,
                    retention_hours=config.storage.retention_hours,
                )
                audit("study_purged", study_uid=study.study_uid, instances=study.instances,
                      results=study.results)  # fmt: skip
        except Exception:
            log.exception("retention_failed")


def _cannot_listen(config: NodeConfig, store: InstanceStore, exc: OSError) -> int:
    log.error(
        "dicom_listener_failed",
        host=config.node.host,
        port=config.node.port,
        reason=exc.strerror or str(exc),
        hint="another program uses this port, or the address is not on this machine; "
        "change node.port or node.host",
    )
    store.close()
    return 1


def serve(config: NodeConfig, stop: threading.Event | None = None) -> int:
    """Run the node until SIGTERM or SIGINT; return the exit code."""
    stop = stop or threading.Event()
    try:
        registry = load_models(config) if config.routes else None
    except ConfigError as exc:
        log.error("models_invalid", reason=str(exc))
        return 2
    if registry is not None:
        log.info("models_loaded", models=[f"{p.name} {p.version}" for p in registry])
    context = multiprocessing.get_context("spawn")
    write_lock = context.Lock()
    store = open_store(config, write_lock)
    configure_audit(config.storage.resolved_audit_path())
    configure_sealing(config.storage.encryption_key_file)
    report = store.reindex()
    log.info(
        "storage_ready",
        root=str(config.storage.root.resolve()),
        instances=store.index.count_instances(),
        reindexed=report.indexed,
        unreadable=report.unreadable,
        partial_files_removed=report.partial_removed,
    )
    released = JobQueue(store.index).release_orphans(this_host(), time.time())
    if released:
        log.info("jobs_resumed", count=released, reason="their worker stopped with the node")
    limiter = AssociationLimiter(config.node.max_associations)
    extra = config.node.listener_processes - 1
    try:
        shared = open_shared_socket(config.node.host, config.node.port) if extra else None
    except OSError as exc:
        return _cannot_listen(config, store, exc)

    children: dict[int, BaseProcess] = {}
    workers: dict[int, BaseProcess] = {}

    worker_ready: dict[int, EventType] = {}  # kept referenced: the child unpickles them

    worker_restarts: dict[int, tuple[int, float]] = {}  # number -> (restarts, not before)

    def start_worker(number: int) -> None:
        worker_ready[number] = context.Event()
        process = context.Process(
            target=_worker_process,
            args=(config, number, worker_ready[number]),
            name=f"radnode-worker-{number}",
            daemon=True,
        )
        process.start()
        workers[number] = process

    def start_child(number: int) -> EventType:
        ready = context.Event()
        process = context.Process(
            target=_listener_process,
            args=(config, limiter.counter, write_lock, shared, number, ready),
            name=f"radnode-listener-{number}",
            daemon=True,
        )
        process.start()
        children[number] = process
        return ready

    # Extra listener processes first: once the supervisor also answers, every
    # listener accepts associations, and senders are spread over all of them.
    for number, ready in [(n, start_child(n)) for n in range(1, extra + 1)]:
        if not ready.wait(CHILD_START_SECONDS):
            log.error("listener_process_not_ready", listener=number, seconds=CHILD_START_SECONDS)
    listener = DicomListener(config, store, limiter, listen_socket=shared)
    try:
        listener.start()
    except OSError as exc:
        return _cannot_listen(config, store, exc)
    api: ApiServer | None = None
    probe = DestinationProbe(config)
    if config.api.enabled:
        api = ApiServer(
            build_app(_api_context(config, store, limiter, registry, workers, probe)),
            config.api.host,
            config.api.port,
            config.api.tls,
        )
        try:
            api.start()
        except OSError as exc:
            log.error("http_listener_failed", host=config.api.host, port=config.api.port,
                      reason=str(exc))  # fmt: skip
            listener.stop()
            for process in children.values():
                process.terminate()
            store.close()
            return 1

    sweeper = CompletionSweeper(
        store.index,
        config.completion.series_quiet_seconds,
        config.completion.study_quiet_seconds,
    )
    sweep_thread = threading.Thread(target=sweeper.run, args=(stop,), name="completion")
    sweep_thread.start()
    counted_thread = _start_counted_completion(config, store, stop)
    route_thread = threading.Thread(
        target=_route_loop,
        args=(config, store, stop, ROUTE_POLL_SECONDS),
        name="routing",
    )
    route_thread.start()
    probe_thread = threading.Thread(target=probe.run, args=(stop,), name="probe", daemon=True)
    if config.api.enabled and config.destinations:
        probe_thread.start()  # its results are for the status page
    retention_thread = threading.Thread(
        target=_retention_loop, args=(config, store, stop), name="retention"
    )
    retention_thread.start()
    exporter = Exporter(config, store.index, store.root)
    export_thread = threading.Thread(target=exporter.run, args=(stop,), name="export")
    export_thread.start()
    # Without routes there is nothing to run: no worker is started.
    for number in range(1, (config.inference.workers if config.routes else 0) + 1):
        start_worker(number)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    log.info(
        "node_started",
        ae_title=config.node.ae_title,
        port=listener.port,
        listener_processes=config.node.listener_processes,
        workers=len(workers),
        sources=len(config.sources),
        routes=len(config.routes),
    )
    while not stop.wait(1.0):
        for number, process in list(children.items()):
            if not process.is_alive():
                log.error("listener_process_died", listener=number, exit_code=process.exitcode)
                start_child(number)
        for number, process in list(workers.items()):
            if process.is_alive():
                continue
            restarts, not_before = worker_restarts.get(number, (0, 0.0))
            if not_before == 0.0:
                log.error("worker_process_died", worker=number, exit_code=process.exitcode)
                # A worker that keeps dying (a broken model, no memory) is restarted
                # after 1, 2, 4 ... 60 s, not in a tight loop.
                worker_restarts[number] = (restarts + 1, time.monotonic() + min(60, 2**restarts))
            elif time.monotonic() >= not_before:
                worker_restarts[number] = (restarts, 0.0)
                start_worker(number)

    listener.stop()
    if api is not None:
        api.stop()
    for process in [*children.values(), *workers.values()]:
        process.terminate()
    for process in [*children.values(), *workers.values()]:
        process.join(timeout=10)
    for number, process in workers.items():
        if process.is_alive():
            # A model in the middle of a series: its lease brings the job back later.
            log.warning("worker_killed_at_stop", worker=number)
            process.kill()
            process.join(timeout=5)
    sweep_thread.join()
    route_thread.join()
    export_thread.join()
    retention_thread.join()
    if counted_thread is not None:
        counted_thread.join()
    store.close()
    log.info("node_stopped")
    return 0
