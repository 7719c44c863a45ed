"""Starting a run's leader: the run's filesystem, identity, containers and cgroup made ready
(unless it planted a link where one of its directories was), its sandbox planned, its Toil
command line and LeaderSpec built, and the leader forked from the forkserver (which has Toil
loaded), with the database URL sent down a pipe rather than through its environment. Then
the run is watched until its leader exits."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import uuid

from wes_gateway import metrics, store
from wes_gateway.config import Settings
from wes_gateway.engines import Engine, LeaderSpec, engine_for, toil_argv
from wes_gateway.files.paths import RunPaths
from wes_gateway.host import batch, containers, limits, sandbox, volumes
from wes_gateway.runs import watching
from wes_gateway.runs.context import Holder
from wes_gateway.runs.finishing import seconds_since
from wes_gateway.runs.leaders import Leader, leader_env, leader_main, run_as_of

log = logging.getLogger(__name__)


def start(supervisor: Holder, run_id: str, restart: bool = False) -> None:
    run = store.get_run(run_id)
    if run is None:
        return
    if run.cancel_requested or run.state == store.CANCELING:
        store.transition(run_id, store.CANCELED)
        return
    engine = engine_of(run)
    if engine is None:
        return
    paths = RunPaths.of(supervisor.settings, run_id)
    prepared = _prepare(supervisor, run_id, paths)
    if prepared is None:
        return
    spec = _spec(supervisor, run, engine, paths, *prepared, restart)
    paths.result.unlink(missing_ok=True)
    paths.leader_file.unlink(missing_ok=True)
    # From here this leader, and no earlier one on any host, owns the run.
    store.leader_started(run_id, spec.token, supervisor.host_id)
    process = _launch(supervisor, run, engine, spec, restart)
    watching.watch(supervisor, run, engine, Leader(_pid_of(process), process), paths, spec.token)


def _prepare(
    supervisor: Holder, run_id: str, paths: RunPaths
) -> tuple[sandbox.RunIdentity | None, limits.RunGroup | None] | None:
    """Make the run's directory, identity, containers and cgroup ready: who its leader is and
    its group; None if the run was refused for a planted name."""
    settings = supervisor.settings
    volumes.provide(settings, paths, run_id)
    if refused_for_planted_names(settings, run_id, paths):
        return None
    identity = supervisor.identity_for(run_id, paths)
    # A sandbox whose leader never is root cannot give containers a /proc of their own.
    # Jobs a cluster runs elsewhere are in no sandbox, even when the leader is.
    sandboxed = settings.run_sandbox != "none" and settings.batch_system == "single_machine"
    containers.prepare(paths, settings, sandboxed, own_pid_namespace=not sandboxed or bool(identity))
    sandbox.hand_over(paths, identity)
    group = limits.group_of(settings, run_id)
    if group is not None:
        group.create(settings.effective_run_memory_limit, settings.run_max_processes)
    return identity, group


def _spec(
    supervisor: Holder,
    run: store.Run,
    engine: Engine,
    paths: RunPaths,
    identity: sandbox.RunIdentity | None,
    group: limits.RunGroup | None,
    restart: bool,
) -> LeaderSpec:
    settings = supervisor.settings
    argv = toil_argv(
        run.workflow_path, paths, settings, engine.language_args(paths, settings), run.engine_args, restart
    )
    return LeaderSpec(
        run_id=run.run_id,
        workflow_type=run.workflow_type,
        argv=argv,
        env=leader_env(settings, run.run_id, paths, dropped=supervisor.identity is not None),
        root=str(paths.root),
        sandbox=sandbox_of(supervisor, paths),
        run_as=run_as_of(identity),
        token=uuid.uuid4().hex,
        heartbeat_seconds=settings.lease_seconds / 3,
        fence_seconds=settings.lease_seconds * 2 / 3,
        prompt_shutdown=settings.toil_prompt_shutdown,
        warm_workers=settings.toil_warm_workers,
        overcommit=settings.toil_overcommit,
        keep_schemas=settings.toil_keep_schemas,
        # Not where jobs run on other hosts, in new interpreters, which would parse the schema
        # (the leader also turns it off where its own workers are not forked warm).
        pickle_schemas=settings.toil_pickle_schemas and not batch.is_remote(settings),
        probes_in_process=settings.toil_probes_in_process,
        cgroup_procs=group.procs_files if group is not None else (),
        rlimits=limits.rlimits_for(settings) if group is None else (0, 0),
    )


def _launch(
    supervisor: Holder, run: store.Run, engine: Engine, spec: LeaderSpec, restart: bool
) -> multiprocessing.process.BaseProcess:
    """Fork the leader from the forkserver and record that the run is RUNNING."""
    run_id = run.run_id
    receiver, sender = supervisor.context.Pipe(duplex=False)
    process = supervisor.context.Process(target=leader_main, args=(spec, receiver), name=f"leader-{run_id}")
    process.start()
    receiver.close()
    sender.send(supervisor.settings.effective_database_url)
    sender.close()
    pid = _pid_of(process)
    fields: dict[str, object] = {"leader_pid": pid, "cmd": [engine.program, *spec.argv]}
    if run.start_time is None:
        fields["start_time"] = store.utc_now()
    log.info("run %s: leader pid %d started%s", run_id, pid, " (restart)" if restart else "")
    metrics.get().leader_starts.labels("restart" if restart else "start").inc()
    if store.transition(run_id, store.RUNNING, **fields):
        if not restart:
            metrics.get().queue_wait.observe(seconds_since(run.submitted_at))
    else:
        # Cancelled while we were starting it: record the pid so the cancel can find it.
        store.update_run(run_id, **fields)
    return process


def _pid_of(process: multiprocessing.process.BaseProcess) -> int:
    assert process.pid is not None  # a started process has one
    return process.pid


def refused_for_planted_names(settings: Settings, run_id: str, paths: RunPaths) -> bool:
    """End a run that put a link or a file where one of its directories was (found when it
    is started again: its leader is gone, nothing of it runs). Root would otherwise bind,
    create in or hand over what the link names; the run is not resumed, and the planted
    names are taken away so that nothing later (delete, retention) meets them."""
    planted = paths.replaced()
    if not planted:
        return False
    names = ", ".join(planted)
    log.warning("run %s: not started: it replaced %s of its own directory with a link or file", run_id, names)
    paths.remove_replaced(planted)
    group = limits.group_of(settings, run_id)
    if group is not None:
        with contextlib.suppress(OSError):
            group.remove()  # an earlier life's, now empty
    store.append_system_log(
        run_id,
        f"{store.utc_now()} not started again: the run replaced its own {names} with a link or a file, "
        "which the service does not follow",
    )
    if not store.transition(run_id, store.EXECUTOR_ERROR):
        store.transition(run_id, store.CANCELED)  # a cancel was asked for meanwhile
    return True


def sandbox_of(supervisor: Holder, paths: RunPaths) -> sandbox.SandboxSpec | None:
    settings = supervisor.settings
    if settings.run_sandbox == "none":
        return None
    services = [*batch.sandbox_paths(settings, os.environ), *containers.sandbox_paths(settings)]
    return sandbox.plan(
        settings,
        paths,
        paths.read_inputs(),
        supervisor.hidden_files,
        supervisor.identity,
        services,
        fresh_proc=containers.engine(settings) == "podman",
    )


def engine_of(run: store.Run) -> Engine | None:
    engine = engine_for(run.workflow_type)
    if engine is None:
        store.append_system_log(run.run_id, f"no engine for workflow type {run.workflow_type}")
        store.transition(run.run_id, store.SYSTEM_ERROR)
    return engine
