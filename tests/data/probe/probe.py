"""What a hostile workflow step tries from inside a run (tests/test_sandbox.py).

Reads a JSON list of attempts, makes each, and prints one JSON object: attempt name -> "ok: ..."
or "denied: ...". It never fails itself, so the run completes and its report is an output."""

import json
import os
import sqlite3
import sys
import urllib.error
import urllib.request


def attempt(kind, target, extra):
    if kind == "read":
        with open(target, "rb") as handle:
            return f"{len(handle.read())} bytes"
    if kind == "list":
        return ",".join(sorted(os.listdir(target))[:20])
    if kind == "write":
        with open(target, "w") as handle:
            handle.write("written by another user's run\n")
        return "written"
    if kind == "environ":
        with open(target, "rb") as handle:
            found = extra.encode() in handle.read()
        return "secret seen" if found else "read, no secret"
    if kind == "sql":
        db = sqlite3.connect(target, timeout=5)
        db.execute(
            "INSERT INTO api_token (user, token_hash, label, created_at) VALUES (?, ?, 'probe', '2026-01-01')",
            ("admin", extra),
        )
        db.commit()
        return "row inserted"
    if kind == "processes":
        seen = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        seen.append(handle.read().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
        gateway = [line for line in seen if any(needle in line for needle in extra.split("|"))]
        if gateway:
            return f"{len(gateway)} gateway processes seen: {gateway[0][:80]}"
        raise PermissionError(f"no gateway process among {len(seen)} visible")
    if kind == "http":
        request = urllib.request.Request(target, headers=json.loads(extra))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            raise PermissionError(f"HTTP {exc.code}") from None
    if kind == "unix_http":
        import http.client
        import socket

        connection = http.client.HTTPConnection("localhost", timeout=10)
        connection.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.sock.connect(target)
        connection.request("GET", "/ga4gh/wes/v1/runs", headers=json.loads(extra))
        status = connection.getresponse().status
        if status != 200:
            raise PermissionError(f"HTTP {status}")
        return f"HTTP {status}"
    if kind == "plant":
        # Point a name in the run's own directory (the nearest parent of this step's working
        # directory that holds params.json) at a file of the service's, hoping that the
        # service reads it back for us.
        run_root = os.getcwd()
        while run_root != "/" and not os.path.exists(os.path.join(run_root, "params.json")):
            run_root = os.path.dirname(run_root)
        link = os.path.join(run_root, target)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(extra, link)
        return f"planted {link}"
    if kind == "container":
        # The run's own container engine, asked to show a host file inside a container: the
        # engine runs in the sandbox, so it can bind only what the sandbox shows.
        import subprocess

        folder, name = os.path.split(target)
        argv = ["docker", "run", "--rm", "--net=none", "-v", f"{folder}:/probe:ro", extra, "cat", f"/probe/{name}"]
        done = subprocess.run(argv, capture_output=True, timeout=120)
        if done.returncode != 0 or not done.stdout:
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            raise PermissionError(f"exit {done.returncode}: {lines[-1][:200] if lines else ''}")
        return f"{len(done.stdout)} bytes"
    raise ValueError(kind)


report = {}
for name, kind, target, extra in json.load(open(sys.argv[1])):
    try:
        report[name] = "ok: " + attempt(kind, target, extra)
    except Exception as exc:  # every failure is the answer we want to see
        report[name] = f"denied: {type(exc).__name__}: {exc}"
print(json.dumps(report, indent=1))
