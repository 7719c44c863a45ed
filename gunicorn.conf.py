"""Gunicorn settings for wes-gateway. Every value can be overridden by environment variables.

The master also owns the run supervisor: a separate process started when Gunicorn is ready
and stopped when it exits. Web workers only read and write the store, so recycling,
timing out or reloading them (HUP) never touches a running workflow.
"""

import gc
import multiprocessing
import os
import subprocess
import sys
import threading
import time

# One source for the bind address, shared with the app (which refuses no-auth off loopback).
from wes_gateway import metrics
from wes_gateway.config import load_settings

# Before any worker imports prometheus-client: every process of the service writes its
# samples there (multiprocess mode), and the supervisor inherits it too.
metrics.configure(load_settings())

# Several listeners may be given, comma-separated (a unix socket for Apache, loopback TCP).
bind = [address.strip() for address in load_settings().bind.split(",") if address.strip()]
# A unix socket is born without access for others (chmod 0660 follows in when_ready).
umask = 0o007
workers = int(os.environ.get("WES_GATEWAY_WORKERS", str(min(2 * multiprocessing.cpu_count() + 1, 8))))
worker_class = os.environ.get("WES_GATEWAY_WORKER_CLASS", "wes_gateway.web.serving.UvicornWorker")
wsgi_app = os.environ.get("WES_GATEWAY_APP", "wes_gateway.web.asgi:app")
# Large uploads over slow links: be patient with requests, quick to restart on HUP.
timeout = int(os.environ.get("WES_GATEWAY_TIMEOUT", "300"))
graceful_timeout = int(os.environ.get("WES_GATEWAY_GRACEFUL_TIMEOUT", "30"))
threads = int(os.environ.get("WES_GATEWAY_THREADS", "4"))  # gthread worker only
keepalive = int(os.environ.get("WES_GATEWAY_KEEPALIVE", "5"))
max_requests = int(os.environ.get("WES_GATEWAY_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("WES_GATEWAY_MAX_REQUESTS_JITTER", "0"))
forwarded_allow_ips = os.environ.get("WES_GATEWAY_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
# The app writes its own access log (user, request id) through logging; Gunicorn's would
# only repeat it for WSGI workers.
accesslog = os.environ.get("WES_GATEWAY_ACCESS_LOG") or None
errorlog = os.environ.get("WES_GATEWAY_ERROR_LOG", "-")
loglevel = os.environ.get("WES_GATEWAY_LOG_LEVEL", "info")
access_log_format = '%(h)s %({x-wes-gateway-user}i)s [%(t)s] "%(r)s" %(s)s %(b)s %(M)sms "%({x-request-id}i)s"'
# Several instances on one host (tests, blue/green) must not share one control socket.
if os.environ.get("WES_GATEWAY_CONTROL_SOCKET"):
    control_socket = os.environ["WES_GATEWAY_CONTROL_SOCKET"]
else:
    control_socket_disable = True
# Start the supervisor unless a deployment runs it separately (`wes-gateway supervise`).
run_supervisor = os.environ.get("WES_GATEWAY_SUPERVISOR", "embedded") == "embedded"


def on_starting(server):
    # Refuse to start without the run sandbox and batch system the settings ask for, before
    # anything listens.
    from wes_gateway.host.batch import BatchSystemUnusable
    from wes_gateway.host.containers import ContainersUnusable
    from wes_gateway.host.limits import LimitsUnavailable
    from wes_gateway.host.sandbox import SandboxUnavailable
    from wes_gateway.host.volumes import VolumesUnavailable
    from wes_gateway.runs.supervisor import preflight

    try:
        preflight(load_settings())
    except (SandboxUnavailable, BatchSystemUnusable, LimitsUnavailable, VolumesUnavailable, ContainersUnusable) as exc:
        server.log.error("wes-gateway cannot start: %s", exc)
        sys.exit(1)
    # A previous instance's proof of life would stand for this one's supervisor until it beats.
    from wes_gateway.files.paths import supervisor_beat

    supervisor_beat(load_settings()).unlink(missing_ok=True)
    # Counters start again with the service: a directory of a previous run is emptied.
    metrics.configure(load_settings(), fresh=True)
    # Migrate once, here, rather than racing in every worker.
    from wes_gateway.cli import main

    main(["db", "upgrade"])
    # No cold start: what checking a submission loads (cwltool and its schemas, miniwdl and its
    # grammars: seconds on a first POST) is loaded here, once, before the web workers fork,
    # so each takes its first submission warm and they share those pages. Nothing of it holds
    # a thread, a file or a connection. The supervisor is a new interpreter of its own.
    from wes_gateway.engines import warm_validation

    warm_validation()
    # Left out of the collector's passes, the inherited objects stay shared (its passes would
    # write to every one of them in each worker).
    gc.collect()
    gc.freeze()


def when_ready(server):
    # Judge what was bound, not what the settings said (GUNICORN_CMD_ARGS can change it).
    from wes_gateway.web.auth import exposed_listeners

    settings = load_settings()
    exposed = exposed_listeners(settings, [listener.sock.getsockname() for listener in server.LISTENERS])
    if exposed:
        server.log.error(
            "wes-gateway refuses to serve without authentication on %s: set WES_GATEWAY_AUTH_MODES, "
            "or listen on loopback or a unix socket only",
            ", ".join(exposed),
        )
        server.halt(exit_status=1)
    for listener in server.LISTENERS:
        path = listener.sock.getsockname()
        if isinstance(path, str) and path:
            # Only the web server's group may speak to a unix socket: it is trusted to name users.
            group = -1
            if settings.socket_group:
                import grp

                group = grp.getgrnam(settings.socket_group).gr_gid
            os.chown(path, -1, group)
            os.chmod(path, 0o660)
    if run_supervisor:
        server.wes_stopping = False
        _start_supervisor(server)
        # The master keeps it alive: a supervisor that dies (killed, out of memory) is started
        # again, sooner the first time, with a growing pause if it keeps dying.
        threading.Thread(target=_keep_supervisor, args=(server,), name="wes-supervisor", daemon=True).start()


def _start_supervisor(server):
    # Its proof of life starts now: a supervisor that hangs before its first beat (in its
    # start-up checks, say) turns /health to 503 after a lease, as one that stops beating does.
    from wes_gateway.files.paths import supervisor_beat

    supervisor_beat(load_settings()).touch()
    server.wes_supervisor = subprocess.Popen(
        [sys.executable, "-m", "wes_gateway.cli", "supervise", "--exit-with-parent"]
    )
    server.log.info("run supervisor started (pid %s)", server.wes_supervisor.pid)


def _keep_supervisor(server):
    pause = 1.0
    while True:
        started = time.monotonic()
        # Gunicorn's own reaping may take the status first; Popen then reports 0.
        status = server.wes_supervisor.wait()
        if server.wes_stopping:
            return
        if time.monotonic() - started > 300:
            pause = 1.0  # it had run well: this is a new trouble, not the same one again
        server.log.error("run supervisor exited (status %s); starting it again in %.0f s", status, pause)
        time.sleep(pause)
        if server.wes_stopping:
            return
        _start_supervisor(server)
        pause = min(pause * 2, 60.0)


def child_exit(server, worker):
    metrics.worker_exited(worker.pid)


def on_exit(server):
    server.wes_stopping = True
    supervisor = getattr(server, "wes_supervisor", None)
    if supervisor is not None and supervisor.poll() is None:
        supervisor.terminate()
        try:
            supervisor.wait(15)
        except subprocess.TimeoutExpired:
            supervisor.kill()
