"""The one typed settings object, read from an optional TOML file and WES_GATEWAY_* variables.

Precedence: explicit keyword overrides > environment > file > defaults. Every field can be
set as ``WES_GATEWAY_<FIELD>`` (upper case); lists accept JSON or comma-separated text.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

ENV_PREFIX = "WES_GATEWAY_"
# What one run is allowed in sizing the default concurrency. Measured for a CWL run waiting on
# its one job (2026-12-02): launcher 11 MB and leader 32 MB of private memory (the rest is
# shared with the forkserver), the job's Toil worker 52 MB; the tools' own memory comes on
# top, which a single_machine leader bounds by --maxMemory.
LEADER_MEMORY = 1 << 30


# At most 18 digits: a size of an exabyte or so, and never a float that overflows.
_MEMORY = re.compile(r"^\s*(\d{1,18}(?:\.\d{1,9})?)\s*([KMGTP]i?)?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


# Where published workflows' images live: Docker Hub, Biocontainers and others (quay.io), GitHub,
# Google's (GATK, DeepVariant), Amazon's public gallery, GitLab.
DEFAULT_REGISTRIES = ("docker.io", "quay.io", "ghcr.io", "gcr.io", "public.ecr.aws", "registry.gitlab.com")


def parse_memory(text: str) -> int:
    """Bytes of a size such as 512M, 4G or 1.5GiB (Toil's spelling)."""
    match = _MEMORY.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 512M or 4G")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "")[:1].upper()])


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


class BatchOptions(BaseModel):
    """What Toil's batch system is told for every run (Slurm's flags; the args elsewhere)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str = Field("", description="Slurm partition (Toil's --slurmPartition).")
    time: str = Field("", description="Slurm time limit per job, [DD-]HH:MM:SS (Toil's --slurmTime).")
    args: str = Field("", description="Extra submission arguments (TOIL_SLURM_ARGS, TOIL_LSF_ARGS, ...).")


_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_MIRROR = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._-]+)*$")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bind: str = Field("127.0.0.1:8080", description="Where Gunicorn listens (host:port or unix:PATH).")
    data_dir: Path = Field(Path("var"), description="Root for the SQLite file and run directories.")
    database_url: str = Field("", description="Peewee db_url; empty means SQLite at <data_dir>/wes.sqlite3.")
    max_concurrent_runs: int = Field(
        0,
        ge=0,
        description="Runs whose leaders may run at once; 0 picks one for the host (effective_max_concurrent_runs).",
    )
    batch_system: str = Field(
        "single_machine",
        pattern=r"^[a-z_]+$",
        description="Toil's batch system for every run's jobs: single_machine, slurm (or lsf, htcondor, ...).",
    )
    batch_options: BatchOptions = Field(default_factory=BatchOptions)  # type: ignore[arg-type]
    allowed_batch_systems: list[str] = Field(
        default_factory=list, description="Batch systems a client may pick per run (--batchSystem); none by default."
    )
    allowed_partitions: list[str] = Field(
        default_factory=list, description="Slurm partitions a client may pick per run (--slurmPartition)."
    )
    shared_dir: Path | None = Field(
        None,
        description="Shared filesystem for run directories (job stores, work dirs), needed off single_machine.",
    )
    host_id: str = Field("", description="This gateway host's name among several on one database; default hostname.")
    run_max_cores: int = Field(0, ge=0, description="--maxCores for each run; 0 means the machine's core count.")
    run_max_memory: str = Field("4G", description="--maxMemory for each run.")
    run_limits: Literal["auto", "cgroup", "rlimit", "none"] = Field(
        "auto",
        description="Hold each run on this host to run_memory_limit and run_max_processes in a cgroup of its "
        "own: cgroup (refuse to start without one), auto (where the host allows it, else rlimits), rlimit "
        "(RLIMIT_AS per process and RLIMIT_NPROC per run uid, which needs run_uids), none.",
    )
    run_memory_limit: str = Field(
        "",
        description="Memory of all of a run's processes on this host (Toil, tools, containers); empty: "
        "run_max_memory and 1G for Toil itself; 0: no limit.",
    )
    run_max_processes: int = Field(
        4096, ge=0, description="Processes and threads of one run at once; a run that reaches it ends. 0: no limit."
    )
    run_disk: Literal["auto", "loop", "none"] = Field(
        "auto",
        description="Give each run a filesystem of run_disk_limit bytes (a loop-mounted sparse ext4 image): "
        "loop (refuse to start without), auto (where the host allows it: root, no shared filesystem), none.",
    )
    run_disk_limit: str = Field("10G", description="Disk space of one run: its job store, work, outputs and logs.")
    disk_reserve: str = Field(
        "2G",
        description="Free space kept for the database, logs and metrics: runs are not started, and uploads "
        "are refused (507), when less would remain.",
    )
    run_cgroup_parent: Path | None = Field(
        None, description="A delegated cgroup v2 directory to make run groups in (cgroup v1 is found by itself)."
    )
    default_page_size: int = Field(50, ge=1)
    max_page_size: int = Field(1000, ge=1)
    poll_interval: float = Field(0.5, gt=0, description="Seconds between supervisor store polls.")
    toil_prompt_shutdown: bool = Field(
        True,
        description="Cut Toil's idle waits short in the leaders: its threads' sleeps at shutdown, the "
        "leader loop's wait on its batch system with work at hand, and the single-machine batch system's "
        "10 ms sleep between a worker's exit or a job's issue and its noticing (wes_gateway/engines/toil_waits.py).",
    )
    toil_warm_workers: bool = Field(
        True,
        description="Fork the Toil workers that a leader starts on its own host from a warm process instead "
        "of starting each as a new interpreter (wes_gateway/engines/toil_workers.py).",
    )
    toil_probes_in_process: bool = Field(
        True,
        description="Let Toil's workers check their directories' filesystem type (statfs) and measure a job's "
        "disk use (a directory walk) themselves, instead of starting `stat` twice and `du` once for every job "
        "(wes_gateway/engines/toil_probes.py).",
    )
    toil_keep_schemas: bool = Field(
        True,
        description="Keep the CWL schemas the leaders' forkserver loaded: Toil's set-up makes cwltool drop "
        "them, and each CWL run would parse its version's schema again (wes_gateway/engines/toil_schemas.py).",
    )
    toil_pickle_schemas: bool = Field(
        True,
        description="Where a run's workers are all forked warm (the single-machine batch system), pickle the "
        "standard CWL schema that every CWL job body carries as its version's name, not as 150 KB of schema "
        "that each step's job wrote and read (wes_gateway/engines/toil_pickles.py).",
    )
    toil_overcommit: float = Field(
        1.0,
        ge=1.0,
        le=16.0,
        description="Let a leader's single-machine batch system book jobs against this many times the "
        "cores and disk the run has, so that many short steps overlap their starts and waits (the run's CPU "
        "quota and filesystem still bound what they use; memory is never overbooked); 1 books as Toil does "
        "(wes_gateway/engines/toil_overcommit.py).",
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="A supervisor that has not renewed its lease for this long is dead."
    )
    cancel_grace_seconds: float = Field(
        10.0, ge=0, description="Wait after the kill flag before SIGTERM, and after SIGTERM before SIGKILL."
    )
    failed_jobstore_retention: str = Field(
        "7d", description="Keep job stores of failed or cancelled runs this long, for debugging (90s, 12h, 30d)."
    )
    retention_interval: float = Field(300.0, gt=0, description="Seconds between job-store retention sweeps.")
    auth_modes: list[str] = Field(
        default_factory=list,
        description="Any of proxy, token, jwt, basic; empty (no auth) is allowed only on a loopback bind.",
    )
    auth_proxy_header: str = Field("X-Remote-User", description="User header set by the trusted proxy.")
    auth_proxy_peers: list[str] = Field(
        default_factory=list,
        description="TCP peers whose user header is honoured; none by default. Unix-socket peers always are.",
    )
    auth_proxy_secret: str = Field(
        "", description="If set, a user header is also honoured when the request carries this shared secret."
    )
    auth_proxy_secret_header: str = Field(
        "X-WES-Gateway-Proxy-Secret", description="The header carrying auth_proxy_secret (the proxy adds it)."
    )
    auth_failures_allowed: int = Field(
        20, ge=1, description="Failed Basic logins per user from one peer within auth_failure_window, then 429 there."
    )
    auth_failure_window: float = Field(60.0, gt=0, description="Seconds over which failed logins are counted.")
    socket_group: str = Field("", description="Group given a unix socket that the service listens on (mode 0660).")
    auth_service_info: bool = Field(False, description="Whether GET /service-info needs credentials.")
    htpasswd_file: str = Field("", description="htpasswd-style file (bcrypt or argon2) for auth mode basic.")
    jwt_jwks: str = Field("", description="JWKS file path or URL for auth mode jwt.")
    jwt_public_key: str = Field("", description="PEM public key file for auth mode jwt (instead of a JWKS).")
    jwt_issuer: str = Field("", description="Required iss claim.")
    jwt_audience: str = Field("", description="Required aud claim.")
    jwt_user_claim: str = Field("sub", description="Claim that names the user.")
    jwt_admin_claim: str = Field("roles", description="Claim listing roles; admin_role there grants admin.")
    admin_role: str = Field("wes-admin", description="Role (in jwt_admin_claim) that makes a caller admin.")
    admin_users: list[str] = Field(default_factory=list, description="User names that are admins.")
    state_counts_scope: Literal["all", "caller"] = Field(
        "all", description="Whether service-info's system_state_counts covers everyone or the caller."
    )
    max_active_runs_per_user: int = Field(0, ge=0, description="Queued plus running runs per user; 0 is no limit.")
    allowed_url_prefixes: list[str] = Field(
        default_factory=lambda: ["https://"],
        description="http(s) prefixes a remote workflow_url (and the documents it imports) may start with. "
        "A prefix that is a bare scheme (the default, https://) admits public hosts only: a URL admitted by it "
        "must not resolve to a private, loopback or link-local address. Name a host to admit it (empty: none).",
    )
    trs_roots: list[str] = Field(
        default_factory=lambda: ["https://dockstore.org/api/ga4gh/trs/v2"],
        description="GA4GH TRS v2 API base URLs that a workflow_url may name (trs://, Dockstore ids and pages, "
        "TRS descriptor URLs); each is itself the permission to reach that server, loopback included.",
    )
    allowed_workflows: list[str] = Field(
        default_factory=list,
        description="The only workflows runs may be of (comma-separated): TRS ids, with :VERSION to allow that "
        "version only (#workflow/github.com/org/repo, #workflow/github.com/org/repo:v1.2), or URL prefixes "
        "of a workflow_url (entries with ://). Anything else, attachments included, is a 403. Empty: any.",
    )
    trs_timeout: float = Field(
        20.0, gt=0, le=300, description="Seconds a submission may spend fetching a workflow from a TRS server."
    )
    trs_max_bytes: int = Field(
        64 * 1024**2, ge=1, description="Bytes of files one workflow fetched from a TRS server may hold."
    )
    drs_resolvers: dict[str, str] = Field(
        default_factory=dict,
        description="GA4GH DRS servers that drs:// inputs may name, as NAME=BASE_URL (comma-separated): "
        "drs://NAME/ID (NAME a host, with port if any) and drs://NAME:ID resolve through BASE_URL "
        "(e.g. drs.example.org=https://drs.example.org/ga4gh/drs/v1); each is itself the permission to reach "
        "that server's API. Other hosts resolve to https://HOST/ga4gh/drs/v1 where allowed_url_prefixes admits it.",
    )
    drs_credentials: str = Field(
        "",
        description='JSON file {"NAME": {"bearer": "TOKEN"}} (NAME as in drs_resolvers): the token is sent to '
        "that DRS server's API only, never to the access URLs it hands out.",
    )
    drs_timeout: float = Field(
        30.0, gt=0, le=300, description="Seconds a submission may spend fetching its DRS inputs, all of them."
    )
    service_id: str = "org.example.wes-gateway"
    service_name: str = "wes-gateway"
    service_description: str = "GA4GH WES 1.1 for CWL and WDL on Toil"
    organization_name: str = "Example Research Computing"
    organization_url: str = "https://example.org"
    environment: str = "dev"
    auth_instructions_url: str = "https://example.org/wes-gateway/auth"
    contact_url: str = ""
    documentation_url: str = ""
    public_url: str = Field(
        "",
        pattern=r"^(https?://[^/?#\s]+(/[^?#\s]*)?)?$",
        description="The service's URL as clients reach it (https://wes.example.org/prefix): absolute URLs are "
        "built from it, never from Host or X-Forwarded-* headers. Empty: from the request, headers checked.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1", "unix"],
        description="Peers whose X-Forwarded-Proto/-Host/-Prefix headers are honoured ('unix': a unix-socket peer).",
    )
    extra_path: list[str] = Field(
        default_factory=list,
        description="Directories put first on the leaders' PATH (helper tools, container engines).",
    )
    run_sandbox: Literal["bwrap", "none"] = Field(
        "bwrap", description="Sandbox of every run's leader: bwrap (bubblewrap), or none (an explicit opt-out)."
    )
    run_user: str = Field(
        "nobody",
        description="Account leaders drop to when the supervisor runs as root; empty keeps root (inside a user namespace).",
    )
    run_uids: str = Field(
        "",
        pattern=r"^(\d{1,10}-\d{1,10})?$",
        description="A range of user ids (200000-265535) from which each run on this host gets one of its "
        "own instead of run_user's: runs cannot reach each other's processes or files, and a process limit "
        "(RLIMIT_NPROC, where there are no cgroups) counts one run. Empty: every run is run_user.",
    )
    container_engine: Literal["auto", "podman", "docker", "singularity", "none"] = Field(
        "auto",
        description="What runs the images workflows declare: podman (rootless, in the run sandbox), docker, "
        "singularity, or none (CWL tools from the hosts' PATH; WDL through a singularity on the leaders' PATH). "
        "auto is podman where it is installed, else none.",
    )
    image_store: Path | None = Field(
        None,
        description="A read-only Podman image store shared by every run (additionalimagestores), filled by "
        "the admin (scripts/build-images, or podman --root STORE pull as the run user).",
    )
    allowed_registries: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REGISTRIES),
        description="Registries the service pulls images from for runs (once per host, into image_store): "
        "by default those where published workflows' images live (" + ", ".join(DEFAULT_REGISTRIES) + "); "
        "an institution narrows it to its own mirror, or empty: only what image_store holds.",
    )
    registry_mirrors: dict[str, str] = Field(
        default_factory=dict,
        description="Where the service fetches a registry's images instead, as REGISTRY=MIRROR (comma-separated; "
        "MIRROR is host[:port][/prefix]), e.g. docker.io=mirror.example.org: an institution's pull-through "
        "cache. Images keep their own names (what allowed_registries checks, what runs and records show); "
        "registry_auth_file and registry_certs_dir are looked up for the mirror's host.",
    )
    registry_auth_file: Path | None = Field(
        None,
        description="Credentials for private registries (a containers-auth.json, as `podman login` writes), "
        "read by the service's pulls only: never shown to a run.",
    )
    registry_certs_dir: Path | None = Field(
        None,
        description="A certs.d directory (<host:port>/ca.crt, Podman's layout) of CAs the service's pulls "
        "trust for those registries, besides the system's.",
    )
    image_tag_ttl: float | None = Field(
        None,
        gt=0,
        description="Seconds a tag stays resolved to the digest first pulled for it; empty: for as long as "
        "image_store holds it (every run of a tag gets the same image, and no registry is asked again).",
    )
    image_store_limit: str = Field(
        "50G",
        description="Size of the layers the service may keep in image_store; least recently used pulled "
        "images that no active run uses are removed to make room. Images the admin put there stay.",
    )
    registry_timeout: float = Field(
        60.0, gt=0, description="Seconds the service waits for a registry to resolve a tag or answer at all."
    )
    pull_timeout: float = Field(
        900.0, gt=0, description="Seconds one image's pull may take before the step that needs it fails."
    )
    allowed_file_roots: list[Path] = Field(
        default_factory=list,
        description="Directories that file:// inputs may point into; none by default.",
    )
    max_attachment_bytes: int = Field(2 * 1024**3, ge=1, description="Total attachment size per run.")
    max_attachment_count: int = Field(1000, ge=1)
    max_attachment_file_bytes: int = Field(1024**3, ge=1, description="Size of one attachment.")
    max_served_file_bytes: int = Field(
        64 * 1024**3,
        ge=1,
        description="Bytes one response sends of one output or log file (a Range of a larger file is served).",
    )
    max_served_run_bytes: int = Field(
        128 * 1024**3,
        ge=1,
        description="Bytes of files in one outputs.zip or RO-Crate, and the output bytes hashed for a crate.",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection has to send a request's headers (then 408 and closed)."
    )
    response_validation: bool = Field(False, description="Validate responses against the YAML.")
    send_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a download's client may take nothing of what is sent before it is dropped.",
    )
    max_downloads_per_user: int = Field(
        16,
        ge=0,
        description="Downloads (output or log files, outputs.zip, RO-Crates) of one user at once on this host, "
        "across its web workers; 429 beyond. 0 is no limit.",
    )

    @field_validator(
        "trusted_proxies",
        "auth_proxy_peers",
        "extra_path",
        "allowed_file_roots",
        "auth_modes",
        "admin_users",
        "allowed_url_prefixes",
        "trs_roots",
        "allowed_workflows",
        "allowed_batch_systems",
        "allowed_partitions",
        "allowed_registries",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("drs_resolvers", "registry_mirrors", mode="before")
    @classmethod
    def _split_table(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                return json.loads(text)
            table = {}
            for part in filter(None, (item.strip() for item in text.split(","))):
                name, sep, base = part.partition("=")
                if not sep or not name.strip() or not base.strip():
                    raise ValueError(f"{info.field_name}: {part!r} is not NAME=VALUE")
                table[name.strip()] = base.strip()
            return table
        return value

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors(cls, value: dict[str, str]) -> dict[str, str]:
        # Names as pulls.registry_of reads them: a scheme or a path in the registry would never match.
        for registry, mirror in value.items():
            if not _REGISTRY.match(registry) or not _MIRROR.match(mirror):
                raise ValueError(f"registry_mirrors: {registry}={mirror} is not REGISTRY=host[:port][/prefix]")
        return value

    @field_validator("run_max_memory", "run_memory_limit", "run_disk_limit", "disk_reserve", "image_store_limit")
    @classmethod
    def _size(cls, value: str) -> str:
        if value:
            parse_memory(value)
        return value

    @field_validator("batch_options", mode="before")
    @classmethod
    def _parse_table(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @property
    def runs_dir(self) -> Path:
        """Run directories: on the shared filesystem where there is one (batch jobs on other
        hosts, and other gateway hosts, read their job stores), else in the data directory.
        The database and config never go there: every batch job can read it."""
        return (self.shared_dir or self.data_dir).resolve() / "runs"

    @property
    def effective_host_id(self) -> str:
        return self.host_id or socket.gethostname()

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir.resolve() / 'wes.sqlite3'}"

    @property
    def effective_max_concurrent_runs(self) -> int:
        """With single_machine a leader's jobs share this host's cores with every other
        run's, so two leaders a core keep the cores busy while some leaders only start up,
        wait on their jobs or shut down. On a cluster batch system a leader only waits on
        jobs that run elsewhere: eight a core. Never more than one per LEADER_MEMORY."""
        if self.max_concurrent_runs:
            return self.max_concurrent_runs
        cores = os.cpu_count() or 1
        wanted = cores * (2 if self.batch_system == "single_machine" else 8)
        memory = _physical_memory()
        if memory:
            wanted = min(wanted, memory // LEADER_MEMORY)
        return max(2, wanted)

    @property
    def run_uid_range(self) -> range | None:
        if not self.run_uids:
            return None
        low, high = (int(part) for part in self.run_uids.split("-"))
        return range(low, high + 1) if 0 < low <= high else None

    @property
    def effective_run_memory_limit(self) -> int:
        """Bytes, or 0 for none."""
        if not self.run_memory_limit:
            return parse_memory(self.run_max_memory) + LEADER_MEMORY
        return parse_memory(self.run_memory_limit)

    @property
    def effective_max_cores(self) -> int:
        return self.run_max_cores or (os.cpu_count() or 1)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        with open(config_file, "rb") as handle:
            values.update(tomllib.load(handle))
    for name in Settings.model_fields:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    values.update(overrides)
    return Settings(**values)


# Where create_app keeps the settings in Flask's config, for current_settings().
SETTINGS_KEY = "WES_GATEWAY_SETTINGS"


def current_settings() -> Settings:
    """The settings of the app serving the current request."""
    import flask  # only web code asks; the supervisor and the CLI never import Flask

    settings = flask.current_app.config[SETTINGS_KEY]
    assert isinstance(settings, Settings)
    return settings
