"""Every name of Toil's that the project uses beyond Toil's command-line front ends, in one list.

Toil's Python API has no stable surface for what our leaders change (how a job is started,
how long the leader waits, its real-time log server), so ``toil_workers``, ``toil_waits`` and
``toil_realtime`` patch Toil's own classes and module globals. setup.cfg keeps Toil to the
series these were written against; ``missing()`` says which names a Toil install lacks, so
that moving that bound fails with the name that broke (tests/fast/test_toil_internals.py), not
deep in a run's log. Beyond names we patch: what our code reads off Toil's objects, and the
names Toil writes into files we parse (its message bus topics, its job kinds).
"""

from __future__ import annotations

import importlib
import inspect
from typing import NamedTuple


class Internal(NamedTuple):
    module: str
    name: str  # a dotted attribute path in the module; "Class.attr" for an instance attribute
    user: str  # who relies on it, and for what
    instance: bool = False  # set in the class's __init__, so judged by its source


INTERNALS: tuple[Internal, ...] = (
    Internal("toil.batchSystems.singleMachine", "SingleMachineBatchSystem._startChild", "toil_workers: each job's command given its OOM score"),
    Internal("toil.batchSystems.singleMachine", "subprocess", "toil_workers: the module whose Popen(command, shell=True, start_new_session=True) starts a worker, ours there"),
    Internal("toil.worker", "main", "toil_workers: a forked warm worker enters Toil's worker"),
    Internal("toil.worker", "parse_args", "toil_workers: the worker's argv parsed by a parser the zygote built once"),
    Internal("toil.worker", "ArgParser", "toil_workers: the parser class, captured as Toil's parse_args builds it"),
    Internal("toil.lib.threading", "destroy_all_process_names", "toil_workers: the exit hook a fresh worker would register"),
    Internal("toil.wdl.wdltoil", "subprocess", "toil_probes: the module whose check_output(['df', '-k', '-P', dir]) a WDL task job runs, ours there"),
    Internal("toil.lib.accelerators", "get_individual_local_accelerators", "toil_workers: the memoized GPU probe, asked before the zygote forks"),
    Internal("toil.batchSystems.singleMachine", "SingleMachineBatchSystem.resource_sources", "toil_overcommit: the pools a job is booked against (cores second, disk fourth)", instance=True),
    Internal("toil.batchSystems.abstractBatchSystem", "ResourcePool", "toil_overcommit: larger cores and disk pools"),
    Internal("toil.common", "RealtimeLogger", "toil_realtime: the real-time log server replaced by one that never starts"),
    Internal("toil.realtimeLogger", "RealtimeLogger", "toil_realtime: subclassed with no level"),
    Internal("toil.realtimeLogger", "SocketServer", "toil_waits: the log server's class, polled promptly"),
    Internal("toil.version", "baseVersion", "toil_waits: patched only on the Toil series it was measured on"),
    Internal("toil.leader", "Leader.__init__", "toil_waits: the batch system's wait wrapped per leader"),
    Internal("toil.leader", "JobUpdatedMessage", "toil_waits: messages at hand end the wait"),
    Internal("toil.leader", "Leader.batchSystem", "toil_waits: the leader's batch system, whose wait is wrapped", instance=True),
    Internal("toil.batchSystems.singleMachine", "SingleMachineBatchSystem.getUpdatedBatchJob", "toil_waits: the wait wrapped"),
    Internal("toil.batchSystems.singleMachine", "SingleMachineBatchSystem.daddy", "toil_waits: the thread whose 10 ms round sleep is woken by a worker's exit or an issued job"),
    Internal("toil.batchSystems.singleMachine", "SingleMachineBatchSystem._handleChild", "toil_waits: a reaped worker's pidfd closed"),
    Internal("toil.batchSystems.singleMachine", "SingleMachineBatchSystem.issueBatchJob", "toil_waits: an issued job wakes the round sleep"),
    Internal("toil.batchSystems.singleMachine", "time", "toil_waits: the module whose sleep(0.01) ends each round, ours there"),
    Internal("toil.leader", "Leader._messages", "toil_waits: the leader's message queue", instance=True),
    Internal("toil.bus", "MessageInbox.count", "toil_waits: messages at hand counted"),
    Internal("toil.leader", "Leader._waiting_jobs", "toil_waits: retried jobs' backoff heap", instance=True),
    Internal("toil.leader", "Leader.serviceManager", "toil_waits: services that could still end", instance=True),
    Internal("toil.leader", "Leader.getNumberOfJobsIssued", "toil_waits: nothing issued, nothing to wait for"),
    Internal("toil.serviceManager", "throttle", "toil_waits: the service manager's throttle, woken at shutdown"),
    Internal("toil.serviceManager", "ServiceManager.shutdown", "toil_waits: shutdown wakes its waits"),
    Internal("toil.serviceManager", "ServiceManager.get_job_count", "toil_waits: services still to end"),
    Internal("toil.statsAndLogging", "time", "toil_waits: the stats thread's sleep, woken at shutdown"),
    Internal("toil.statsAndLogging", "StatsAndLogging.shutdown", "toil_waits: shutdown wakes its sleep"),
    Internal("toil.common", "Toil.resumeJobStore", "supervisor: the kill flag written into a run's job store"),
    Internal("toil.jobStores.abstractJobStore", "AbstractJobStore.write_kill_flag", "supervisor: the kill flag itself"),
    Internal("toil.jobStores.fileJobStore", "FileJobStore", "supervisor: loaded before the kill-flag writer's chroot"),
    Internal("toil.bus", "JobIssuedMessage", "runs.tasks: the topic toil.bus.JobIssuedMessage in --writeMessages"),
    Internal("toil.bus", "JobCompletedMessage", "runs.tasks: the topic toil.bus.JobCompletedMessage in --writeMessages"),
    Internal("toil.bus", "JobFailedMessage", "runs.tasks: the topic toil.bus.JobFailedMessage in --writeMessages"),
    Internal("toil.bus", "ExternalBatchIdMessage", "runs.tasks: the topic toil.bus.ExternalBatchIdMessage in --writeMessages"),
    Internal("toil.cwl.cwltoil", "main", "engines.cwl: the CWL leader, in our process"),
    Internal("toil.batchSystems.registry", "get_batch_systems", "engines.leader: every batch system imported in the forkserver"),
    Internal("toil.batchSystems.registry", "get_batch_system", "engines.leader: each imported as Toil's options import it"),
    Internal("toil.lib.plugins", "plugin_types", "engines.leader: Toil's plugin kinds, scanned once in the forkserver"),
    Internal("toil.lib.plugins", "get_plugin_names", "engines.leader: the memoized scan for plugins"),
    Internal("toil.leader", "Leader", "engines.leader: the leader loop's module imported in the forkserver"),
    Internal("toil.lib.threading", "ensure_filesystem_lockable", "toil_probes: its `stat -f` per call replaced by statfs"),
    Internal("toil.common", "ensure_filesystem_lockable", "toil_probes: toil.common's own import of it"),
    Internal("toil.common", "getDirSizeRecursively", "toil_probes: its `du -s` per job replaced by a walk"),
    Internal("toil.fileStores.abstractFileStore", "getDirSizeRecursively", "toil_probes: the file store's own import of it"),
    Internal("toil.fileStores.cachingFileStore", "CachingFileStore", "engines.leader: preloaded in the forkserver, not imported per job"),
    Internal("toil.fileStores.nonCachingFileStore", "NonCachingFileStore", "engines.leader: preloaded in the forkserver, not imported per job"),
    Internal("cwltool.main", "use_standard_schema", "toil_schemas: what Toil's setup_schema calls, which dropped the loaded schemas"),
    Internal("cwltool.process", "SCHEMA_CACHE", "toil_schemas: the loaded schemas, by version"),
    Internal("cwltool.process", "custom_schemas", "toil_schemas: versions whose schema has cwltool's extensions"),
    Internal("cwltool.process", "get_schema", "toil_schemas: each version's schema loaded in the forkserver"),
    Internal("toil.cwl.cwltoil", "CWLJob", "engines.cwl: a job id of kind-CWLJob/ is a step (a task)"),
    Internal("toil.wdl.wdltoil", "main", "engines.wdl: the WDL leader, in our process"),
    Internal("toil.wdl.wdltoil", "WDLTaskJob", "engines.wdl: a job id of kind-WDLTaskJob/ is a task"),
    Internal("toil.lib.trs", "parse_trs_spec", "trs: TRS ids parsed as toil-cwl-runner parses them"),
)  # fmt: skip


def missing(internals: tuple[Internal, ...] = INTERNALS) -> list[str]:
    """The entries this Toil install lacks, each as "module:name (who relies on it)"."""
    absent: list[str] = []
    for entry in internals:
        try:
            found: object = importlib.import_module(entry.module)
            *path, last = entry.name.split(".")
            for part in path:
                found = getattr(found, part)
            if entry.instance:
                ok = f"self.{last}" in inspect.getsource(found)  # type: ignore[arg-type]
            else:
                ok = hasattr(found, last)
        except (ImportError, AttributeError, OSError, TypeError):
            ok = False
        if not ok:
            absent.append(f"{entry.module}:{entry.name} ({entry.user})")
    return absent
