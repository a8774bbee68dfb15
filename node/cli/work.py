"""Routing and workers: where the store, routing and inference meet.

The supervisor routes every complete series (`route_pending`); worker processes
claim jobs with a lease, load the series, run the model and keep the result for
encoding (`Worker`). Bad input is rejected with its reason and never retried; a
failure of the model or the machine is retried up to `inference.max_attempts`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from node.config import NodeConfig
from node.domain import Job, JobState, ModelInfo, SeriesFacts
from node.domain.volume import Volume
from node.errors import ConfigError, InvalidInput, ModelError, TransientError
from node.inference.package import ModelRegistry
from node.inference.pipelines import (
    InferenceResult,
    Pipeline,
    RuntimeSettings,
    build_pipeline,
    requirements_of,
)
from node.inference.volume import SeriesRejected, read_series
from node.results.context import ALL_OUTPUTS, DecisionSupport, EncodingInput, OutputKind
from node.results.encode import OUTPUTS_DIR, encode, warm_up_encoders, write_outputs
from node.routing import explain_mismatch, match_routes
from node.store import InstanceStore, JobQueue
from node.store.files import RESULTS_DIR
from node.store.owners import this_host
from node.store.results import save_result
from node.store.sealed import dicom_source, read_text

log = structlog.get_logger("radnode.work")

POLL_SECONDS = 0.2  # claims look first with a read, so an idle poll costs no write
RETRY_BASE_SECONDS = 10.0
RETRY_MAX_SECONDS = 600.0


# -- routing ---------------------------------------------------------------------------


def enrich_facts(facts: SeriesFacts, sample: Path | None) -> SeriesFacts:
    """Add what the index does not keep (SliceThickness, ImageType) from one header."""
    if sample is None:
        return facts
    try:
        header = pydicom.dcmread(
            dicom_source(sample),
            stop_before_pixels=True,
            specific_tags=["SliceThickness", "ImageType"],
        )
    except (OSError, InvalidDicomError):
        return facts
    thickness = header.get("SliceThickness")
    image_type = header.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = [image_type]
    try:
        thickness_mm = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness_mm = None
    return replace(
        facts,
        slice_thickness_mm=thickness_mm,
        image_type=tuple(str(v) for v in image_type),
    )


def route_pending(
    config: NodeConfig, store: InstanceStore, queue: JobQueue, now: Callable[[], float] = time.time
) -> int:
    """Turn every complete, not yet routed series into jobs; return how many jobs."""
    created = 0
    for series_uid, _generation in queue.series_to_route():
        try:
            created += _route_one(config, store, queue, series_uid, now)
        except Exception:  # one unreadable series must not hold up the others
            log.exception("routing_failed", series_uid=series_uid)
    return created


def _route_one(
    config: NodeConfig,
    store: InstanceStore,
    queue: JobQueue,
    series_uid: str,
    now: Callable[[], float],
) -> int:
    """Route one complete series; return how many jobs it made."""
    found = queue.series_facts(series_uid)
    if found is None:
        return 0
    facts, sample = found
    facts = enrich_facts(facts, store.path_of(sample) if sample else None)
    matches = match_routes(config.routes, facts)
    unmatched = {
        route.name: reason
        for route in config.routes
        if (reason := explain_mismatch(route, facts)) is not None
    }
    jobs = queue.record_routing(facts, matches, now(), unmatched)
    for job in jobs:
        log.info(
            "job_created",
            job_id=job.id,
            study_uid=job.study_uid,
            series_uid=job.series_uid,
            route=job.route,
            model=job.model,
            priority=job.priority,
        )
    if not matches:
        log.info(
            "series_not_routed",
            study_uid=facts.study_uid,
            series_uid=series_uid,
            reasons=unmatched or "no routes configured",
        )
    return len(jobs)


# -- workers ---------------------------------------------------------------------------


def build_encoding_input(
    *,
    job_id: str,
    model: ModelInfo,
    volume: Volume,
    result: InferenceResult,
    sources: Sequence[Dataset],
    decision_support: DecisionSupport,
    segments: tuple[str, ...],
    series_numbers_in_use: frozenset[int],
) -> EncodingInput:
    """Join a model's result with its source headers (in volume order) for encoding."""
    return EncodingInput(
        job_id=job_id,
        model=model,
        volume=volume,
        sources=tuple(sources),
        findings=tuple(result.findings),
        findings_labels=result.findings_labels,
        segments=result.segments,
        include_segments=tuple(s for s in segments if s in result.segments),
        decision_support=decision_support,
        series_numbers_in_use=series_numbers_in_use,
    )


def runtime_settings(config: NodeConfig) -> RuntimeSettings:
    """The ONNX Runtime settings the configuration asks for."""
    inference = config.inference
    return RuntimeSettings(
        providers=tuple(inference.providers),
        intra_op_threads=inference.intra_op_threads,
        batch_slices=inference.batch_slices,
    )


def result_payload(volume: Volume, result: InferenceResult) -> dict[str, object]:
    """The metadata kept beside a result: what encoding needs, no patient data."""
    return {
        "model": result.model,
        "model_version": result.model_version,
        "provider": result.provider,
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "notes": result.notes,
        "study_uid": volume.study_uid,
        "series_uid": volume.series_uid,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "sop_class_uid": volume.sop_class_uid,
        "sop_instance_uids": list(volume.sop_instance_uids),
        "origin": list(volume.origin),
        "spacing": list(volume.spacing),
        "row_direction": list(volume.row_direction),
        "column_direction": list(volume.column_direction),
        "shape": list(volume.shape),
    }


class Worker:
    """Claims jobs and runs them, one at a time, with warm pipelines."""

    def __init__(
        self,
        config: NodeConfig,
        store: InstanceStore,
        registry: ModelRegistry,
        number: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.queue = JobQueue(store.index)
        self.registry = registry
        # Fits jobs.lease_owner (64 characters) however long the host name is.
        self.owner = f"{this_host()}:{os.getpid()}:w{number}"
        self.number = number
        self._clock = clock
        self._pipelines: dict[str, Pipeline] = {}
        self._lease_lost = threading.Event()

    def pipeline(self, model: str) -> Pipeline:
        """The model's pipeline, built on first use and kept warm."""
        if model not in self._pipelines:
            package = self.registry.get(model)
            self._pipelines[model] = build_pipeline(package, runtime_settings(self.config))
        return self._pipelines[model]

    def warm_up(self) -> None:
        """Build the pipeline of every model a route names, and load the encoders'
        tables, before any job comes."""
        warm_up_encoders()
        for model in sorted({route.model for route in self.config.routes}):
            try:
                self.pipeline(model)
            except Exception:  # a broken package must not stop the other models
                log.exception("model_unavailable", model=model, worker=self.number)

    def run_once(self) -> Job | None:
        """Claim one job and run it; None when there was nothing to do."""
        inference = self.config.inference
        job = self.queue.claim(
            self.owner, inference.lease_seconds, self._clock(), inference.max_attempts
        )
        if job is None:
            return None
        fields = {"job_id": job.id, "series_uid": job.series_uid, "model": job.model}
        log.info("job_claimed", worker=self.number, pid=os.getpid(), attempt=job.attempts, **fields)
        stop_renewing = threading.Event()
        self._lease_lost = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(job.id, stop_renewing), name="lease", daemon=True
        )
        renewer.start()
        try:
            self._run(job, fields)
        finally:
            stop_renewing.set()
            renewer.join()
        return self.queue.get(job.id)

    def _renew(self, job_id: str, stop: threading.Event) -> None:
        """Renew the lease until the job ends; a lease lost is flagged, never ignored."""
        lease = self.config.inference.lease_seconds
        while not stop.wait(lease / 3):
            try:
                renewed = self.queue.renew(job_id, self.owner, lease, self._clock())
            except Exception:  # the index busy or the disk failing: try again next time
                log.exception("job_lease_renewal_failed", job_id=job_id, worker=self.number)
                continue
            if not renewed:
                log.warning("job_lease_lost", job_id=job_id, worker=self.number)
                self._lease_lost.set()
                return

    def _run(self, job: Job, fields: dict[str, str]) -> None:
        now = self._clock
        try:
            pipeline = self.pipeline(job.model)
        except (ConfigError, ModelError) as exc:
            self._fail(job, f"model {job.model!r} cannot run: {exc}", fields)
            return
        paths = [self.store.path_of(p) for p in self.queue.series_instance_relpaths(job.series_uid)]
        started = time.perf_counter()
        try:
            volume, headers = read_series(paths, requirements_of(pipeline.package))
        except SeriesRejected as exc:
            self.queue.finish(job.id, self.owner, JobState.REJECTED, now(), reason=exc.reason)
            log.warning("series_rejected", reason=exc.reason, **fields)
            return
        except (OSError, TransientError, InvalidInput) as exc:  # unreadable now: try later
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._fail(job, f"cannot read the series: {reason}", fields)
            return
        load_seconds = time.perf_counter() - started
        try:
            result = pipeline.run(volume)
        except MemoryError:
            self._fail(job, "out of memory while running the model", fields)
            return
        except Exception as exc:  # a model's failure must not stop the worker
            log.exception("model_failed", **fields)
            self._fail(job, f"the model failed: {type(exc).__name__}: {exc}", fields)
            return
        result.timings["load"] = load_seconds
        detail: dict[str, object] = {
            "findings": len(result.findings),
            "provider": result.provider,
            "seconds": round(sum(result.timings.values()), 3),
        }
        timings = {k: round(v, 3) for k, v in result.timings.items()}
        log.info("job_inferred", **fields, **detail, timings=timings)
        # The job's trace: when the model finished, with its stage times.
        self.store.index.add_event(
            "job_inferred",
            now=now(),
            study_uid=job.study_uid,
            series_uid=job.series_uid,
            job_id=job.id,
            detail={**detail, "timings": timings},
        )
        encode_started = time.perf_counter()
        try:
            inp = self.encoding_input(job, volume, result, headers)
            outputs, encode_timings = encode(inp, self.output_kinds(job))
        except Exception as exc:  # an encoder's failure must not stop the worker
            log.exception("encoding_failed", **fields)
            self._fail(job, f"encoding the results failed: {type(exc).__name__}: {exc}", fields)
            return
        if self._lease_lost.is_set():
            # Another worker may own the job now; it writes the same files (same UIDs).
            log.warning("job_lease_lost_before_writing", **fields)
            return
        relpath = f"{RESULTS_DIR}/{job.id}"
        meta = result_payload(volume, result)
        meta["outputs"] = [o.describe() for o in outputs]
        meta["encode_timings"] = {k: round(v, 4) for k, v in encode_timings.items()}
        try:
            write_outputs(self.store.root / relpath / OUTPUTS_DIR, outputs)
            save_result(
                self.store.root,
                job.id,
                findings=[f.as_json() for f in result.findings],
                masks=result.segments,
                labels={"findings": result.findings_labels},
                meta=meta,
            )
        except OSError as exc:
            self._fail(job, f"cannot write the results: {exc.strerror or exc}", fields)
            return
        except Exception as exc:  # a result pydicom refuses to write must not stop the worker
            log.exception("writing_results_failed", **fields)
            self._fail(job, f"writing the results failed: {type(exc).__name__}: {exc}", fields)
            return
        detail["outputs"] = len(outputs)
        # Encoding and keeping the results durably, for the timeline and the metrics.
        detail["encode_seconds"] = round(time.perf_counter() - encode_started, 3)
        if self.queue.finish(
            job.id, self.owner, JobState.ENCODED, now(), result_relpath=relpath, detail=detail
        ):
            log.info(
                "job_encoded",
                **fields,
                outputs=[o.kind for o in outputs],
                seconds=round(sum(encode_timings.values()), 3),
            )
        else:
            log.warning("job_lease_lost_before_finish", **fields)

    def output_kinds(self, job: Job) -> list[OutputKind]:
        """What the job's destinations want, with what stands in for SEG and SR where a
        destination refuses them; everything when the job has no destination."""
        wanted: set[str] = set()
        for name in job.send_to:
            destination = self.config.destination(name)
            if destination is not None:
                wanted.update(destination.outputs)
                if {"seg", "sr"} & set(destination.outputs):
                    wanted.update(destination.fallback_outputs)
        return [k for k in ALL_OUTPUTS if k in wanted] or list(ALL_OUTPUTS)

    def encoding_input(
        self, job: Job, volume: Volume, result: InferenceResult, headers: Sequence[Dataset]
    ) -> EncodingInput:
        """The job's result with its source headers, route options and study context."""
        route = next((r for r in self.config.routes if r.name == job.route), None)
        return build_encoding_input(
            job_id=job.id,
            model=self.pipeline(job.model).package.info(),
            volume=volume,
            result=result,
            sources=headers,
            decision_support=route.decision_support if route else "fleischner-2017",
            segments=tuple(route.segments) if route else ("Lung",),
            series_numbers_in_use=self.series_numbers_in_use(job),
        )

    def series_numbers_in_use(self, job: Job) -> frozenset[int]:
        """The study's received series numbers, and those the results of the study's
        other jobs took (two series of one study routed: their results must not share
        numbers)."""
        numbers = set(self.queue.study_series_numbers(job.study_uid))
        for other in self.queue.study_jobs(job.study_uid, JobState.ENCODED):
            if other.id == job.id or other.result_relpath is None:
                continue
            meta = self.store.root / other.result_relpath / "result.json"
            try:
                outputs = json.loads(read_text(meta)).get("outputs", [])
            except (OSError, ValueError):
                continue
            numbers.update(int(o.get("series_number", 0)) for o in outputs)
        numbers.discard(0)
        return frozenset(numbers)

    def _fail(self, job: Job, reason: str, fields: dict[str, str]) -> None:
        now = self._clock()
        if job.attempts >= self.config.inference.max_attempts:
            self.queue.finish(job.id, self.owner, JobState.FAILED, now, reason=reason)
            log.error("job_failed", reason=reason, attempts=job.attempts, **fields)
        else:
            # Exponential backoff, so that a passing problem (a disk full for a while, a
            # GPU out of memory) does not use up every attempt within seconds.
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (job.attempts - 1))
            self.queue.release_for_retry(job.id, self.owner, reason, now, delay)
            log.warning(
                "job_retry", reason=reason, attempts=job.attempts, delay_seconds=delay, **fields
            )

    def run(self, stop: threading.Event) -> None:
        """Work until `stop` is set."""
        self.warm_up()
        log.info("worker_ready", worker=self.number, models=len(self.registry))
        while not stop.is_set():
            try:
                job = self.run_once()
            except Exception:  # the store may be busy or the disk full; try again
                log.exception("worker_error", worker=self.number)
                job = None
            if job is None:
                stop.wait(POLL_SECONDS)
