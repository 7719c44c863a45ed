"""The real gateway on loopback, for the end-to-end tests (tests/e2e/conftest.py wraps it in
fixtures) and the benchmarks (bench/common.py): Gunicorn and its supervisor on a free port, a
data directory, and loopback stand-ins for the services a run reaches. Needs only the project's
runtime dependencies and requests (which Toil already brings); nothing here imports pytest."""

# A top-level package beside bench/ rather than bench/harness.py: the tests use it as much as
# the benchmarks do, and neither should reach into the other's folder to start a server.
