"""The `radnode` command: parse arguments, load configuration, call the stages."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from node import __version__
from node.config import NodeConfig, load_config, resolve_config_path
from node.domain import JobState
from node.errors import ConfigError, RadnodeError
from node.export import Target, echo, parse_target, send_files, target_of
from node.logs import configure_logging
from node.store import StudySummary

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radnode",
        description="Radnode: receives imaging studies over DICOM, runs AI models on them "
        "and sends standard DICOM results back to the PACS.",
    )
    parser.add_argument("--version", action="version", version=f"radnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            metavar="FILE",
            help="the node's YAML configuration (default: $RADNODE_CONFIG, else config/node.yaml)",
        )

    p = sub.add_parser(
        "serve", help="run the node: DICOM listener, completion, routing and model workers"
    )
    with_config(p)

    p = sub.add_parser("check-config", help="validate a configuration and summarise it")
    with_config(p)

    p = sub.add_parser(
        "echo", help="C-ECHO a destination or AET@host:port (a STOW-RS destination: a QIDO query)"
    )
    with_config(p)
    p.add_argument("target", metavar="TARGET", help="a destination name or AET@host:port")
    p.add_argument("--calling-ae", help="the AE title to call as (default: node.ae_title)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")

    p = sub.add_parser("send", help="C-STORE DICOM files or folders to a destination")
    with_config(p)
    p.add_argument("paths", metavar="PATH", nargs="+", type=Path, help="files or folders")
    p.add_argument(
        "--to", required=True, metavar="TARGET", help="a destination name or AET@host:port"
    )
    p.add_argument("--associations", type=int, default=1, metavar="N", help="parallel (1)")
    p.add_argument("--calling-ae", help="the AE title to call as (default: node.ae_title)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")

    p = sub.add_parser("studies", help="list received studies and their series")
    with_config(p)
    p.add_argument("--limit", type=int, default=50, help="how many studies (default 50)")
    p.add_argument("--show-phi", action="store_true", help="also show patient name and ID (PHI)")

    p = sub.add_parser("models", help="list the model packages and what they accept")
    with_config(p)
    p.add_argument("--models", type=Path, metavar="DIR", help="the models folder to list")

    p = sub.add_parser("run", help="run a model on a folder of DICOM files, without the server")
    with_config(p)
    p.add_argument("model", metavar="MODEL", help="a model package name (see radnode models)")
    p.add_argument("path", metavar="PATH", type=Path, help="a folder holding one series")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="where to write")
    p.add_argument("--models", type=Path, metavar="DIR", help="the models folder to use")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for the model")

    p = sub.add_parser("jobs", help="list jobs with their state and reason, or show one")
    with_config(p)
    p.add_argument(
        "job", nargs="?", metavar="JOB", help="a job id (or its first 8 characters): its timeline"
    )
    p.add_argument("--state", choices=[s.value for s in JobState], help="only this state")
    p.add_argument("--limit", type=int, default=50, help="how many jobs (default 50)")

    p = sub.add_parser("retry", help="put failed jobs back: run again, or deliver again once fixed")
    with_config(p)
    p.add_argument("jobs", nargs="*", metavar="JOB", help="job ids (or their first 8 characters)")
    p.add_argument("--all-failed", action="store_true", help="every job in state failed")

    p = sub.add_parser(
        "demo", help="make a synthetic chest CT, run a node on it and print the findings"
    )
    p.add_argument("--workdir", type=Path, metavar="DIR", help="keep the demo's files here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `radnode` console script."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RadnodeError as exc:  # a model that cannot run, a series it cannot use
        print(f"radnode: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "demo":
        from node.cli.demo import demo

        return demo(args.workdir)
    if command in {"models", "run"}:
        from node.cli import models_cmd

        # A config is optional here: the shipped models/ folder is the default.
        cfg = load_config(args.config) if _has_config(args) else NodeConfig()
        configure_logging("warning", "console" if sys.stderr.isatty() else "json")
        if command == "models":
            return models_cmd.list_models(cfg, args.models)
        return models_cmd.run_model(
            cfg, args.model, args.path, args.out, override=args.models, threads=args.threads
        )
    if command in {"echo", "send"}:
        # A config is optional here: AET@host:port works without one.
        optional = load_config(args.config) if _has_config(args) else None
        return _echo(args, optional) if command == "echo" else _send(args, optional)
    config = load_config(args.config)
    if command == "check-config":
        print(f"{resolve_config_path(args.config)}: valid\n")
        print(summarise_config(config))
        return EXIT_OK
    if command == "serve":
        from node.cli.serve import serve

        configure_logging(config.logging.level, config.logging.format)
        return serve(config)
    if command == "jobs":
        from node.cli.jobs_cmd import list_jobs, show_job

        if args.job:
            return show_job(config, args.job)
        return list_jobs(config, args.state, args.limit)
    if command == "retry":
        from node.cli.jobs_cmd import retry

        if not args.jobs and not args.all_failed:
            raise ConfigError("name the jobs to retry, or give --all-failed")
        return retry(config, args.jobs, args.all_failed)
    return _studies(args, config)


def _has_config(args: argparse.Namespace) -> bool:
    return bool(args.config) or resolve_config_path(None).exists()


def _target(text: str, config: NodeConfig | None) -> Target:
    if config is not None:
        dest = config.destination(text)
        if dest is not None:
            return target_of(dest)
    if "@" not in text and config is not None:
        known = ", ".join(d.name for d in config.destinations) or "none configured"
        raise ConfigError(
            f"{text!r} is not a configured destination (known: {known}); "
            "give a destination name or AET@host:port"
        )
    return parse_target(text)


def _calling_ae(args: argparse.Namespace, config: NodeConfig | None, name: str = "") -> str:
    if args.calling_ae:
        return str(args.calling_ae)
    dest = config.destination(name) if config else None
    if dest is not None and dest.calling_ae_title:
        return dest.calling_ae_title
    return config.node.ae_title if config else "RADNODE"


def _echo(args: argparse.Namespace, config: NodeConfig | None) -> int:
    dest = config.destination(args.target) if config else None
    if dest is not None and dest.protocol == "stow-rs":
        from node.export import check_stow

        ok, message = check_stow(dest)
        print(
            f"{dest.name}: {'OK' if ok else 'FAILED'}: {message}",
            file=sys.stdout if ok else sys.stderr,
        )
        return EXIT_OK if ok else EXIT_FAILED
    target = _target(args.target, config)
    calling = _calling_ae(args, config, args.target)
    result = echo(target, calling, timeout=args.timeout)
    if result.ok:
        print(
            f"{target}: C-ECHO success as {calling}: round trip {result.echo_ms:.1f} ms "
            f"(connect {result.connect_ms:.1f} ms, association {result.associate_ms:.1f} ms)"
        )
        return EXIT_OK
    print(f"{target}: FAILED as {calling}: {result.message}", file=sys.stderr)
    return EXIT_FAILED


def _send(args: argparse.Namespace, config: NodeConfig | None) -> int:
    if args.associations < 1:
        raise ConfigError(f"--associations {args.associations}: give 1 or more")
    target = _target(args.to, config)
    calling = _calling_ae(args, config, args.to)
    if config is not None:  # files from this node's storage may be sealed
        from node.store.sealed import configure_sealing

        configure_sealing(config.storage.encryption_key_file)
    with tqdm(unit="file", desc=f"to {target}", file=sys.stderr, leave=False) as bar:
        report = send_files(
            args.paths,
            target,
            calling,
            associations=args.associations,
            timeout=args.timeout,
            progress=bar.update,
        )
    rate = report.sent / report.seconds if report.seconds else 0.0
    print(
        f"{target}: {report.sent} sent, {len(report.warnings)} with warnings, "
        f"{len(report.failures)} failed, {len(report.skipped)} skipped "
        f"in {report.seconds:.1f} s ({rate:.0f} files/s)"
    )
    for label, rows in (
        ("warning", report.warnings),
        ("failed", report.failures),
        ("skipped", report.skipped),
    ):
        for path, reason in rows:
            print(f"  {label}: {path}: {reason}")
    return EXIT_OK if not report.failures and report.sent else EXIT_FAILED


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _studies(args: argparse.Namespace, config: NodeConfig) -> int:
    from node.cli.serve import open_store

    store = open_store(config)
    try:
        studies = store.index.list_studies(limit=args.limit)
    finally:
        store.close()
    if not studies:
        print("no studies received yet")
        return EXIT_OK
    for study in studies:
        print(_study_line(study, args.show_phi))
        for s in study.series:
            number = "-" if s.series_number is None else str(s.series_number)
            reopened = f", reopened x{s.generation - 1}" if s.generation > 1 else ""
            print(
                f"    series {number:>4} {s.modality:<4} {s.instance_count:>5} inst  "
                f"{s.state:<9}{reopened}  last {_when(s.last_received_at)}  "
                f"{s.series_description!r}  {s.series_uid}"
            )
    return EXIT_OK


def _study_line(study: StudySummary, show_phi: bool) -> str:
    who = f"  patient {study.patient_name!r} id {study.patient_id!r}" if show_phi else ""
    return (
        f"study {study.study_uid}  {study.state}  {study.instance_count} instances in "
        f"{len(study.series)} series  from {study.source or '?'}  "
        f"received {_when(study.first_received_at)} .. {_when(study.last_received_at)}  "
        f"date {study.study_date or '-'}{who}"
    )


def summarise_config(config: NodeConfig) -> str:
    """A readable summary of a valid configuration, like an integration sheet."""
    node, storage, comp = config.node, config.storage, config.completion
    lines = [
        f"node         AE {node.ae_title}, listening on {node.host}:{node.port}"
        f"{' (DICOM TLS)' if node.tls else ''}, "
        f"up to {node.max_associations} associations, {node.listener_processes} listener "
        f"process(es), max PDU {node.max_pdu_bytes} bytes",
        f"storage      {storage.root.resolve()} (index {storage.resolved_index_url()}), "
        f"reserve {storage.min_free_mb} MiB",
        f"completion   series after {comp.series_quiet_seconds:g} s quiet, study after "
        f"{comp.study_quiet_seconds:g} s quiet",
        f"sources      {len(config.sources)}",
    ]
    for s in config.sources:
        hosts = ", ".join(str(h) for h in s.hosts) if s.hosts is not None else "any host"
        query = s.completeness_query
        asks = (
            f"; asks {query.ae_title or s.ae_title}@{query.host}:{query.port} (C-FIND) how "
            "many instances a series has"
            if query
            else ""
        )
        lines.append(f"  - {s.name}: calling AE {s.ae_title} from {hosts}{asks}")
    lines.append(f"destinations {len(config.destinations)}")
    for d in config.destinations:
        fallback = ", ".join(d.fallback_outputs) or "nothing"
        lines.append(
            f"  - {d.name}: {d.describe()}, receives {', '.join(d.outputs)} "
            f"({fallback} if it refuses SEG or SR)"
        )
    lines.append(f"routes       {len(config.routes)}")
    for r in config.routes:
        origin = ", ".join(r.from_) or "any source"
        dest = ", ".join(r.send_to) or "nowhere"
        rules = r.when.model_dump(exclude_defaults=True)
        when = ", ".join(f"{k} {v}" for k, v in rules.items()) or "every series"
        lines.append(
            f"  - {r.name}: model {r.model} (priority {r.priority}) on series from {origin} "
            f"where {when}; results to {dest}"
        )
    inference = config.inference
    lines.append(
        f"inference    {inference.workers} worker(s), providers "
        f"{' > '.join(inference.providers)}, threads {inference.intra_op_threads or 'all cores'}, "
        f"models in {inference.resolved_models_dir()}"
    )
    api = config.api
    scheme = "https" if api.tls else "http"
    lines.append(
        f"http         {scheme}://{api.host}:{api.port}, {len(api.tokens)} token(s): "
        + (", ".join(f"{t.name} ({'+'.join(t.scopes)})" for t in api.tokens) or "only /healthz")
        if api.enabled
        else "http         off (api.enabled: false)"
    )
    lines.append(
        f"retention    {config.storage.retention_hours:g} h after the work is done; audit trail "
        f"{config.storage.resolved_audit_path()}; files "
        + ("encrypted at rest" if config.storage.encryption_key_file else "in the clear")
    )
    delivery = config.delivery
    lines.append(
        f"delivery     retries after {delivery.retry_base_seconds:g} s, doubling up to "
        f"{delivery.retry_max_seconds:g} s, for {delivery.max_age_hours:g} h; then failed"
    )
    if not config.sources:
        lines.append("warning: no sources are configured, so every association is rejected")
    return "\n".join(lines)
