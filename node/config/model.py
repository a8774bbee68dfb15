"""The configuration, shaped like a hospital's integration sheet.

Every field's description doubles as the hint shown to IT when its value is wrong,
so each one says what the value is for and what a good value looks like.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

_AE_ALLOWED = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError("an AE title cannot be empty or only spaces")
    if len(value) > 16:
        raise ValueError(f"an AE title has at most 16 characters, this one has {len(value)}")
    if not _AE_ALLOWED.match(value):
        raise ValueError("an AE title uses printable ASCII characters only, without a backslash")
    return stripped


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            "a name uses lower-case letters, digits, '-' and '_', starting with a letter or digit"
        )
    return value


def _parse_network(value: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError as exc:
        raise ValueError(
            f"{value!r} is neither an IP address nor a CIDR block such as 10.0.0.0/24"
        ) from exc


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Name = Annotated[str, AfterValidator(_check_name)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    """Strict base: unknown keys are errors, so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"{value} is not a readable file; check the path")
    return value


PemFile = Annotated[Path, AfterValidator(_existing_file)]


class ServerTls(_Section):
    """TLS for a service of the node (DICOM or HTTP): its certificate and key."""

    certificate: PemFile = Field(
        description="the node's certificate (PEM), with its chain, for this service"
    )
    key: PemFile = Field(description="the certificate's private key (PEM, not encrypted)")
    ca_certificates: PemFile | None = Field(
        None,
        description="CA certificates (PEM) that clients' certificates must be signed by; "
        "set it to require client certificates (mutual TLS), leave out to accept any client",
    )


class ClientTls(_Section):
    """TLS when the node calls a peer: whom to trust, and its own certificate if asked."""

    ca_certificates: PemFile | None = Field(
        None,
        description="CA certificates (PEM) the peer's certificate must be signed by; empty "
        "means the system's trusted CAs",
    )
    certificate: PemFile | None = Field(
        None, description="the node's client certificate (PEM), for peers that ask for one"
    )
    key: PemFile | None = Field(None, description="the client certificate's private key (PEM)")
    server_name: str | None = Field(
        None,
        description="the name the peer's certificate must carry; empty means the host",
    )

    @model_validator(mode="after")
    def _pair(self) -> ClientTls:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("give both certificate and key for a client certificate, or neither")
        return self


class NodeSettings(_Section):
    """How the node presents itself on the DICOM network."""

    ae_title: AETitle = Field(
        "RADNODE",
        description="the node's own AE title; senders must call exactly this (up to 16 characters)",
    )
    host: str = Field(
        "127.0.0.1",
        description="the address to listen on: 0.0.0.0 for every interface, 127.0.0.1 for this "
        "machine only",
    )
    port: Port = Field(
        11112, description="the TCP port for DICOM (1-65535; 104 or 11112 are usual)"
    )
    max_associations: int = Field(
        16,
        ge=1,
        le=1000,
        description="how many DICOM associations may be open at once, over all listener "
        "processes; more are rejected as 'local limit exceeded' so senders retry",
    )
    listener_processes: int = Field(
        1,
        ge=1,
        le=64,
        description="how many processes accept DICOM on the port; one per CPU core is a good "
        "start when several senders push at once",
    )
    max_pdu_bytes: int = Field(
        262144,
        ge=131072,
        le=4194304,
        description="the largest PDU the node accepts, in bytes (at least 131072)",
    )
    network_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="seconds of silence after which an association is dropped",
    )
    tls: ServerTls | None = Field(
        None,
        description="DICOM TLS on node.port: certificate, key, and CA certificates to require "
        "client certificates; leave out for plain DICOM",
    )


class StorageSettings(_Section):
    """Where received instances and the index live."""

    root: Path = Field(
        Path("var/radnode"),
        description="the folder for received instances and the index; relative paths are "
        "relative to the folder Radnode is started from",
    )
    index_url: str | None = Field(
        None,
        description="an SQLAlchemy database URL for the index; empty means SQLite at "
        "<root>/index.sqlite3",
    )
    min_free_mb: int = Field(
        1024,
        ge=0,
        description="free disk space (MiB) to keep in reserve; below it the node answers "
        "'out of resources' and senders retry later",
    )
    retention_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 3650,
        description="how long received instances and results are kept after their work is "
        "done (delivered, rejected, or nothing to do); failed work is kept until retried",
    )
    encryption_key_file: PemFile | None = Field(
        None,
        description="encrypt instance files and results at rest (AES-256-GCM) with a key "
        "derived from this file (head -c 32 /dev/urandom > FILE; keep it safe: without it "
        "the data cannot be read); empty means files are stored in the clear",
    )
    audit_path: Path | None = Field(
        None,
        description="the audit trail (JSON lines: associations, instances received, results "
        "delivered, API calls); empty means <root>/audit.jsonl",
    )

    def resolved_audit_path(self) -> Path:
        """The audit trail's file, by default inside the storage root."""
        return self.audit_path if self.audit_path is not None else self.root / "audit.jsonl"

    def resolved_index_url(self) -> str:
        """The index URL, defaulting to SQLite inside the storage root."""
        if self.index_url:
            return self.index_url
        return f"sqlite:///{(self.root / 'index.sqlite3').resolve()}"


class CompletenessQuery(_Section):
    """Where to ask a source (C-FIND) how many instances a series has."""

    host: str = Field(min_length=1, description="the source's host name or IP address for C-FIND")
    port: Port = Field(description="the source's DICOM port for C-FIND (its SCP port)")
    ae_title: AETitle | None = Field(
        None,
        description="the AE title to query; empty means the source's own ae_title",
    )
    interval_seconds: float = Field(
        5.0,
        ge=0.5,
        le=3600,
        description="how often to ask again while a series is still short of the count",
    )
    timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="seconds to wait for the source's C-FIND answer"
    )


class Source(_Section):
    """A sender IT allows: a PACS or modality, by AE title and (optionally) host."""

    name: Name = Field(description="a short name for this sender, used by routes and in logs")
    ae_title: AETitle = Field(description="the calling AE title this sender uses")
    hosts: list[Annotated[IPNetwork, Field()]] | None = Field(
        None,
        description="addresses or CIDR blocks this sender may call from; leave out to accept "
        "the AE title from any host",
    )
    completeness_query: CompletenessQuery | None = Field(
        None,
        description="for a PACS that answers C-FIND: where to ask how many instances a series "
        "has, so a series is complete as soon as all are here (the quiet timer stays the "
        "fallback); leave out for modalities",
    )

    @field_validator("hosts", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [_parse_network(h) for h in value]
        return value

    def allows_address(self, address: str) -> bool:
        """True when `address` may call as this source."""
        if self.hosts is None:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.hosts)


OutputName = Literal["seg", "sr", "sc", "kos", "pdf"]


def _all_outputs() -> list[OutputName]:
    return ["seg", "sr", "sc", "kos", "pdf"]


class DestinationAuth(_Section):
    """HTTP authentication for a STOW-RS destination."""

    type: Literal["basic", "bearer"] = Field(
        description="basic (user name and password) or bearer (a token)"
    )
    username: str | None = Field(None, description="the user name, for basic authentication")
    password: SecretStr | None = Field(
        None,
        description="the password, for basic authentication; better set through the "
        "environment, e.g. RADNODE_DESTINATIONS__0__AUTH__PASSWORD",
    )
    token: SecretStr | None = Field(
        None,
        description="the token, for bearer authentication; better set through the "
        "environment, e.g. RADNODE_DESTINATIONS__0__AUTH__TOKEN",
    )

    @model_validator(mode="after")
    def _complete(self) -> DestinationAuth:
        if self.type == "basic" and (not self.username or self.password is None):
            raise ValueError("basic authentication needs both username and password")
        if self.type == "bearer" and not self.token:
            raise ValueError("bearer authentication needs a token")
        return self


def _default_fallbacks() -> list[OutputName]:
    return ["sc", "kos", "pdf"]


class Destination(_Section):
    """Where results go: a DICOM peer (C-STORE) or a DICOMweb server (STOW-RS)."""

    name: Name = Field(description="a short name for this destination, used by routes and CLI")
    ae_title: AETitle | None = Field(
        None, description="the destination's AE title (the called AE), for C-STORE"
    )
    host: str | None = Field(
        None, min_length=1, description="the destination's host name or IP address, for C-STORE"
    )
    port: Port | None = Field(None, description="the destination's DICOM port, for C-STORE")
    url: str | None = Field(
        None,
        pattern=r"^https?://[^\s]+$",
        description="the DICOMweb base URL for STOW-RS instead of C-STORE, such as "
        "http://pacs.example.org:8042/dicom-web (results are POSTed to <url>/studies)",
    )
    auth: DestinationAuth | None = Field(
        None, description="HTTP authentication for a STOW-RS destination: basic or bearer"
    )
    calling_ae_title: AETitle | None = Field(
        None,
        description="the AE title Radnode calls this destination as; empty means node.ae_title "
        "(the destination must know it, with this machine's address)",
    )
    outputs: list[OutputName] = Field(
        default_factory=_all_outputs,
        min_length=1,
        description="which results this destination receives: seg (segmentation), sr "
        "(structured report), sc (key images with the findings burned in), kos (key "
        "object selection), pdf (summary page); a viewer that shows neither SEG nor SR "
        "wants [sc, kos, pdf]",
    )
    fallback_outputs: list[OutputName] = Field(
        default_factory=_default_fallbacks,
        description="what is sent instead when the destination refuses SEG or SR at "
        "association negotiation (an archive that does not know those SOP classes): "
        "any of sc, kos, pdf, or [] to send nothing in their place",
    )
    timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds to wait for the destination to connect or answer before the "
        "attempt counts as failed and is retried later",
    )
    deidentify: bool = Field(
        False,
        description="send de-identified objects (DICOM PS3.15 Basic Application Level "
        "Confidentiality Profile) with pseudonymous UIDs from deidentification.key_file, for "
        "a research archive; the summary PDF, which names the patient, is not sent there",
    )
    tls: ClientTls | None = Field(
        None,
        description="DICOM TLS to this destination (C-STORE): the CA certificates to trust "
        "and, if it asks, a client certificate; for STOW-RS use an https:// url",
    )

    @field_validator("outputs")
    @classmethod
    def _unique_outputs(cls, value: list[OutputName]) -> list[OutputName]:
        if "sr" in value and "seg" not in value:
            raise ValueError(
                "sr without seg: the SR's measurements point at the SEG's segments; add seg "
                "or remove sr"
            )
        return list(dict.fromkeys(value))

    @field_validator("fallback_outputs")
    @classmethod
    def _fallbacks_are_fallbacks(cls, value: list[OutputName]) -> list[OutputName]:
        wrong = [v for v in value if v in ("seg", "sr")]
        if wrong:
            raise ValueError(
                f"{wrong} cannot stand in for a refused SEG or SR; use sc, kos and pdf"
            )
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _one_protocol(self) -> Destination:
        dimse = [k for k in ("ae_title", "host", "port") if getattr(self, k) is not None]
        if self.url is not None:
            if dimse:
                raise ValueError(
                    f"give either url (STOW-RS) or ae_title, host and port (C-STORE), not both; "
                    f"remove {', '.join(dimse)} or url"
                )
        elif len(dimse) < 3:
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) is None]
            raise ValueError(
                f"missing {', '.join(missing)}: a C-STORE destination needs ae_title, host and "
                "port (or give url for a STOW-RS destination)"
            )
        if self.auth is not None and self.url is None:
            raise ValueError("auth applies to STOW-RS destinations only; add url or remove auth")
        return self

    @property
    def protocol(self) -> Literal["dimse", "stow-rs"]:
        """How results reach this destination."""
        return "stow-rs" if self.url else "dimse"

    def describe(self) -> str:
        """Where it is, without secrets: AET@host:port or the URL."""
        if self.url:
            return f"STOW-RS {self.url}" + (f" ({self.auth.type} auth)" if self.auth else "")
        return f"{self.ae_title}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")


class CompletionSettings(_Section):
    """When a series and a study count as complete."""

    series_quiet_seconds: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="a series is complete after this many seconds without a new instance",
    )
    study_quiet_seconds: float = Field(
        120.0,
        gt=0,
        le=86400,
        description="a study is complete after this many seconds without a new instance; "
        "must not be shorter than series_quiet_seconds",
    )

    @model_validator(mode="after")
    def _study_not_shorter(self) -> CompletionSettings:
        if self.study_quiet_seconds < self.series_quiet_seconds:
            raise ValueError(
                f"study_quiet_seconds ({self.study_quiet_seconds:g}) is shorter than "
                f"series_quiet_seconds ({self.series_quiet_seconds:g}); make it at least as long"
            )
        return self


def _one_or_many(value: Any) -> Any:
    """Let IT write `modality: CT` as well as `modality: [CT, PT]`."""
    return [value] if isinstance(value, str) else value


def _check_pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
    return value


UpperWords = Annotated[list[str], BeforeValidator(_one_or_many)]


class RouteRules(_Section):
    """Conditions on a complete series; every condition given must hold."""

    modality: UpperWords = Field(
        default_factory=list,
        description="the series' Modality, one value or a list such as [CT]",
    )
    body_part: UpperWords = Field(
        default_factory=list,
        description="BodyPartExamined, one value or a list such as [CHEST, LUNG, THORAX]; a "
        "series without the attribute matches only when allow_missing_body_part is true",
    )
    allow_missing_body_part: bool = Field(
        True,
        description="whether a series with no BodyPartExamined passes the body_part rule "
        "(many scanners leave it empty)",
    )
    min_slices: int = Field(
        0, ge=0, description="the fewest instances in the series, such as 30 for a volume"
    )
    max_slice_thickness_mm: float | None = Field(
        None, gt=0, description="the thickest slices accepted, in millimetres, such as 3"
    )
    series_description: Annotated[str, AfterValidator(_check_pattern)] | None = Field(
        None,
        description="a regular expression searched in SeriesDescription, case-insensitive, "
        "such as 'lung|chest'",
    )
    exclude_series_description: Annotated[str, AfterValidator(_check_pattern)] | None = Field(
        None,
        description="a regular expression that, when found in SeriesDescription, excludes "
        "the series, such as 'scout|topogram|dose'",
    )
    image_type: UpperWords = Field(
        default_factory=list,
        description="values that must all appear in ImageType, such as [ORIGINAL, AXIAL]",
    )

    @field_validator("modality", "body_part", "image_type")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]


class Route(_Section):
    """Which model runs on which series, and where its results go."""

    name: Name = Field(description="a short name for this route")
    from_: list[str] = Field(
        default_factory=list,
        alias="from",
        description="the names of the sources this route applies to; empty means every source",
    )
    when: RouteRules = Field(
        default_factory=RouteRules,
        description="conditions on the series: modality, body_part, min_slices, "
        "max_slice_thickness_mm, series_description, image_type",
    )
    model: Name = Field(description="the name of the model package to run (see radnode models)")
    send_to: list[str] = Field(
        default_factory=list, description="the names of the destinations for the results"
    )
    priority: int = Field(0, description="higher runs first when jobs wait for a worker")
    decision_support: Literal["fleischner-2017", "none"] = Field(
        "fleischner-2017",
        description="the follow-up guideline quoted, for reference, beside the findings: "
        "fleischner-2017 for incidental nodules, none for screening programmes (where "
        "Lung-RADS applies, not Fleischner)",
    )
    segments: list[str] = Field(
        default_factory=lambda: ["Lung"],
        description="the model's other segments to include in the SEG beside the findings, "
        "by label, such as [Lung]; [] for findings only",
    )


ProviderName = Literal["tensorrt", "cuda", "cpu"]


def _default_providers() -> list[ProviderName]:
    # TensorRT builds an engine per input shape; the lung crop changes shape from one
    # slice group to the next, so it is opt-in, for models with fixed input shapes.
    return ["cuda", "cpu"]


class InferenceSettings(_Section):
    """Where models live and how they run."""

    models_dir: Path | None = Field(
        None,
        description="the folder holding one folder per model package (model.yaml inside); "
        "unset means the models/ folder of the checkout Radnode runs from, else ./models",
    )
    workers: int = Field(
        1,
        ge=0,
        le=64,
        description="worker processes that run models; 0 runs none (receive only); one per "
        "GPU, or one on a CPU-only machine",
    )
    providers: list[ProviderName] = Field(
        default_factory=_default_providers,
        min_length=1,
        description="ONNX Runtime execution providers to try, in order: tensorrt, cuda, cpu; "
        "the first that works runs the model (tensorrt suits models with fixed input shapes: "
        "it builds an engine for every new shape)",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="CPU threads one model may use; 0 means one per core",
    )
    batch_slices: int = Field(
        4, ge=1, le=256, description="slices run through a 2D network at once"
    )
    lease_seconds: float = Field(
        300,
        ge=10,
        le=86400,
        description="how long a worker holds a job without renewing its lease; a job whose "
        "worker died runs again after this",
    )
    max_attempts: int = Field(
        3, ge=1, le=20, description="how often a job is tried before it is marked failed"
    )

    def resolved_models_dir(self) -> Path:
        """models_dir, or the models/ folder beside the node package when unset."""
        if self.models_dir is not None:
            return self.models_dir
        shipped = Path(__file__).resolve().parents[2] / "models"
        return shipped if shipped.is_dir() else Path("models")


class DeliverySettings(_Section):
    """How results are delivered: retries and when to give up."""

    retry_base_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="the wait before the first retry of a failed delivery; each further "
        "retry waits twice as long (with some jitter), up to retry_max_seconds",
    )
    retry_max_seconds: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="the longest wait between two delivery attempts",
    )
    max_age_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 90,
        description="how long a result is retried before it goes to the failed list "
        "(radnode jobs --state failed), where radnode retry puts it back",
    )

    @model_validator(mode="after")
    def _max_not_below_base(self) -> DeliverySettings:
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError(
                f"retry_max_seconds ({self.retry_max_seconds:g}) is shorter than "
                f"retry_base_seconds ({self.retry_base_seconds:g}); make it at least as long"
            )
        return self


Scope = Literal["read", "store", "admin"]
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ApiToken(_Section):
    """A bearer token for the HTTP API, kept only as the SHA-256 of the token."""

    name: Name = Field(description="who holds the token; shown in the audit trail and logs")
    sha256: str = Field(
        description="the SHA-256 of the token, 64 lower-case hex digits; make one with "
        "`printf %s TOKEN | sha256sum`"
    )
    scopes: list[Scope] = Field(
        min_length=1,
        description="what the token may do: read (status, jobs, studies, metrics), store "
        "(send instances by STOW-RS), admin (read, and retry jobs)",
    )

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256_HEX.match(value):
            raise ValueError(
                "expected the SHA-256 of the token as 64 hex digits (printf %s TOKEN | "
                "sha256sum), never the token itself"
            )
        return value


class ApiSettings(_Section):
    """The HTTP server: health, metrics, jobs, studies, STOW-RS and the status page."""

    enabled: bool = Field(True, description="whether `radnode serve` starts the HTTP server")
    host: str = Field(
        "127.0.0.1",
        description="the address the HTTP server listens on: 0.0.0.0 for every interface",
    )
    port: Port = Field(8080, description="the HTTP port (1-65535)")
    tokens: list[ApiToken] = Field(
        default_factory=list,
        description="bearer tokens, by their SHA-256; with none, only /healthz answers",
    )
    tls: ServerTls | None = Field(
        None, description="HTTPS: the certificate and key; leave out for plain HTTP"
    )
    max_body_mb: int = Field(
        2048,
        ge=1,
        le=65536,
        description="the largest STOW-RS request accepted, in MiB; larger ones get HTTP 413",
    )

    @model_validator(mode="after")
    def _unique_tokens(self) -> ApiSettings:
        _unique("api.tokens", "name", [t.name for t in self.tokens])
        _unique("api.tokens", "sha256", [t.sha256 for t in self.tokens])
        return self


class DeidentificationSettings(_Section):
    """The key behind the pseudonyms of de-identified destinations."""

    key_file: PemFile = Field(
        description="a file of at least 32 random bytes (head -c 32 /dev/urandom > FILE); the "
        "same key gives a study the same pseudonymous UIDs every time, so a research archive "
        "can collect its cases; keep it secret and keep it: a new key gives new pseudonyms"
    )

    @field_validator("key_file")
    @classmethod
    def _long_enough(cls, value: Path) -> Path:
        if value.stat().st_size < 32:
            raise ValueError(f"{value} holds fewer than 32 bytes; make a longer random key")
        return value


class LoggingSettings(_Section):
    """How Radnode logs."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the least severe level written: debug, info, warning or error"
    )
    format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="json for log collectors, console for people; auto picks console on a "
        "terminal and json otherwise",
    )


class NodeConfig(_Section):
    """The whole configuration file."""

    node: NodeSettings = Field(default_factory=NodeSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    sources: list[Source] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    routes: list[Route] = Field(default_factory=list)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    deidentification: DeidentificationSettings | None = None
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @model_validator(mode="after")
    def _cross_references(self) -> NodeConfig:
        _unique("sources", "name", [s.name for s in self.sources])
        _unique("sources", "ae_title", [s.ae_title for s in self.sources])
        _unique("destinations", "name", [d.name for d in self.destinations])
        _unique("routes", "name", [r.name for r in self.routes])
        for i, dest in enumerate(self.destinations):
            if dest.deidentify and self.deidentification is None:
                raise ValueError(
                    f"destinations[{i}].deidentify is true but deidentification.key_file is not "
                    "set; add a key file (head -c 32 /dev/urandom > FILE) under deidentification"
                )
        source_names = {s.name for s in self.sources}
        dest_names = {d.name for d in self.destinations}
        for i, route in enumerate(self.routes):
            for name in route.from_:
                if name not in source_names:
                    raise ValueError(
                        f"routes[{i}].from names source {name!r}, which is not configured; "
                        f"use one of {sorted(source_names)} or add it under sources"
                    )
            for name in route.send_to:
                if name not in dest_names:
                    raise ValueError(
                        f"routes[{i}].send_to names destination {name!r}, which is not "
                        f"configured; use one of {sorted(dest_names)} or add it under destinations"
                    )
        return self

    def source_for(self, calling_ae: str) -> Source | None:
        """The source configured with this calling AE title, if any."""
        wanted = calling_ae.strip()
        for source in self.sources:
            if source.ae_title == wanted:
                return source
        return None

    def source(self, name: str) -> Source | None:
        """The source with this name, if any."""
        for source in self.sources:
            if source.name == name:
                return source
        return None

    def destination(self, name: str) -> Destination | None:
        """The destination with this name, if any."""
        for dest in self.destinations:
            if dest.name == name:
                return dest
        return None


def _unique(section: str, key: str, values: list[str]) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ValueError(
                f"{section}[{i}].{key} {value!r} is used twice; each {key} under {section} "
                "must be unique"
            )
        seen.add(value)


def field_hint(loc: tuple[int | str, ...]) -> str | None:
    """The description of the field at `loc`, used as the 'what to change' hint."""
    model: type[BaseModel] | None = NodeConfig
    description: str | None = None
    for part in loc:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            field = next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        description = field.description
        model = _inner_model(field.annotation)
    return description


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None
