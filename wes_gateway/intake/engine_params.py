"""Which Toil options a client may set, with typed and bounded values.

Everything not listed here is refused with a 400 that names the option: a WES client must
never be able to pass ``--setEnv``, ``--jobStore``, ``--batchSystem`` or ``--writeLogs``.
Options that stock clients always send (toil-wes-cwl-runner's ``--outdir`` and ``--quiet``)
are accepted and dropped, because the gateway owns output directories and logging.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from wes_gateway.config import Settings, parse_memory
from wes_gateway.errors import BadRequest


@dataclass(frozen=True)
class Option:
    name: str
    type: str  # as shown in service-info
    default: str | Callable[[Settings], str]
    check: Callable[[str | None, Settings], list[str]]  # returns the argv fragment


def _bare(name: str) -> Callable[[str | None, Settings], list[str]]:
    def check(value: str | None, _: Settings) -> list[str]:
        if value not in (None, "", "true", "True"):
            raise ValueError(f"{name} is a flag and takes no value")
        return [name]

    return check


def _int_range(name: str, low: int, high: Callable[[Settings], int]) -> Callable[[str | None, Settings], list[str]]:
    def check(value: str | None, settings: Settings) -> list[str]:
        try:
            number = int(str(value))
        except ValueError:
            raise ValueError(f"{name} needs a whole number, not {value!r}") from None
        top = high(settings)
        if not low <= number <= top:
            raise ValueError(f"{name} must be between {low} and {top}")
        return [name, str(number)]

    return check


def _float_range(name: str, high: Callable[[Settings], float]) -> Callable[[str | None, Settings], list[str]]:
    def check(value: str | None, settings: Settings) -> list[str]:
        try:
            number = float(str(value))
        except ValueError:
            raise ValueError(f"{name} needs a number, not {value!r}") from None
        top = high(settings)
        if not 0 < number <= top:
            raise ValueError(f"{name} must be above 0 and at most {top:g}")
        return [name, f"{number:g}"]

    return check


def _memory(name: str) -> Callable[[str | None, Settings], list[str]]:
    def check(value: str | None, settings: Settings) -> list[str]:
        size = parse_memory(str(value))
        if not 0 < size <= parse_memory(settings.run_max_memory):
            raise ValueError(f"{name} must be above 0 and at most {settings.run_max_memory}")
        return [name, str(size)]

    return check


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[str | None, Settings], list[str]]:
    def check(value: str | None, _: Settings) -> list[str]:
        text = str(value).upper()
        if text not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}")
        return [name, text]

    return check


def _dropped(value: str | None, _: Settings) -> list[str]:
    return []


def _listed(name: str, allowed: Callable[[Settings], list[str]]) -> Callable[[str | None, Settings], list[str]]:
    def check(value: str | None, settings: Settings) -> list[str]:
        choices = allowed(settings)
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}")
        return [name, str(value)]

    return check


# Offered only where the deployment lists choices: a client never picks a batch system or a
# partition that the site did not name.
_DEPLOYMENT_OPTIONS: list[tuple[Callable[[Settings], list[str]], Option]] = [
    (
        lambda s: s.allowed_batch_systems,
        Option(
            "--batchSystem",
            "choice",
            lambda s: s.batch_system,
            _listed("--batchSystem", lambda s: [s.batch_system, *s.allowed_batch_systems]),
        ),
    ),
    (
        lambda s: s.allowed_partitions,
        Option(
            "--slurmPartition",
            "choice",
            lambda s: s.batch_options.partition or s.allowed_partitions[0],
            _listed("--slurmPartition", lambda s: s.allowed_partitions),
        ),
    ),
]


OPTIONS: dict[str, Option] = {
    option.name: option
    for option in [
        Option(
            "--maxCores",
            "int",
            lambda s: str(s.effective_max_cores),
            _int_range("--maxCores", 1, lambda s: s.effective_max_cores),
        ),
        Option("--defaultCores", "float", "1", _float_range("--defaultCores", lambda s: float(s.effective_max_cores))),
        Option("--defaultMemory", "size", "2G", _memory("--defaultMemory")),
        Option("--defaultDisk", "size", "3G", _memory("--defaultDisk")),
        Option("--retryCount", "int", "1", _int_range("--retryCount", 0, lambda s: 10)),
        Option(
            "--logLevel", "choice", "INFO", _choice("--logLevel", ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"))
        ),
        Option("--logDebug", "flag", "off", _bare("--logDebug")),
        Option("--stats", "flag", "off", _bare("--stats")),
        Option("--outdir", "ignored", "owned by the gateway", _dropped),
        Option("--quiet", "ignored", "owned by the gateway", _dropped),
    ]
}


def options_for(settings: Settings) -> dict[str, Option]:
    """What a client may set on this deployment."""
    offered = dict(OPTIONS)
    for listed, option in _DEPLOYMENT_OPTIONS:
        if listed(settings):
            offered[option.name] = option
    return offered


def default_of(option: Option, settings: Settings) -> str:
    return option.default(settings) if callable(option.default) else option.default


def engine_argv(params: dict[str, str | None], settings: Settings) -> list[str]:
    """Turn a client's workflow_engine_parameters into Toil argv, or raise BadRequest."""
    argv: list[str] = []
    offered = options_for(settings)
    for key, value in params.items():
        name = key if key.startswith("--") else f"--{key}"
        option = offered.get(name)
        if option is None:
            raise BadRequest(f"workflow_engine_parameters: {key} is not allowed here; allowed: {', '.join(offered)}")
        if value is not None and not isinstance(value, str):
            value = str(value)
        try:
            argv.extend(option.check(value, settings))
        except ValueError as exc:
            raise BadRequest(f"workflow_engine_parameters: {exc}") from None
    return argv
