"""Form parsing, attachment names, location rewriting and the engine-parameter policy."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from wes_gateway.config import Settings, load_settings
from wes_gateway.errors import BadRequest, PayloadTooLarge
from wes_gateway.intake import inputpolicy, staging
from wes_gateway.intake.engine_params import engine_argv


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings({}, data_dir=tmp_path, **overrides)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.cwl", "a.cwl"),
        ("dir/sub/a b#1:x.cwl", "dir/sub/a b#1:x.cwl"),
        ("./a//b.cwl", "a/b.cwl"),
    ],
)
def test_safe_names_are_verbatim(name: str, expected: str) -> None:
    assert str(inputpolicy.safe_relative_name(name)) == expected


@pytest.mark.parametrize("name", ["", "../a", "a/../../b", "/abs", "\\abs", "a\0b", ".", "C:/x"])
def test_unsafe_names(name: str) -> None:
    with pytest.raises(BadRequest):
        inputpolicy.safe_relative_name(name)


def test_parse_request_normalises(tmp_path: Path) -> None:
    request = staging.parse_request(
        {
            "workflow_url": "wf.cwl",
            "workflow_type": "cwl",
            "workflow_type_version": "v1.0",
            "workflow_engine_parameters": '{"--outdir": "/tmp/x", "--quiet": null, "--maxCores": 1}',
        }
    )
    assert request.workflow_type == "CWL"
    assert request.workflow_engine_parameters == {"--outdir": "/tmp/x", "--quiet": None, "--maxCores": "1"}
    assert engine_argv(request.workflow_engine_parameters, settings(tmp_path)) == ["--maxCores", "1"]


def test_policy_bounds(tmp_path: Path) -> None:
    s = settings(tmp_path, run_max_memory="2G")
    assert engine_argv({"--defaultMemory": "1G", "--stats": None, "--logLevel": "debug"}, s) == [
        "--defaultMemory",
        str(1024**3),
        "--stats",
        "--logLevel",
        "DEBUG",
    ]
    for bad in (
        {"--defaultMemory": "3G"},
        {"--retryCount": "-1"},
        {"--stats": "yes"},
        {"--logLevel": "LOUD"},
        {"--writeLogs": "/etc"},
        {"--debugWorker": None},
        {"--batchSystem": "slurm"},
    ):
        with pytest.raises(BadRequest):
            engine_argv(bad, s)


def test_attachment_limits_leave_nothing(tmp_path: Path) -> None:
    s = settings(tmp_path, max_attachment_bytes=10, max_attachment_count=2)
    target = tmp_path / "a"
    with pytest.raises(PayloadTooLarge):
        staging.write_attachments(target, [staging.Attachment("x", io.BytesIO(b"0123456789AB"))], s)
    with pytest.raises(PayloadTooLarge):
        staging.write_attachments(tmp_path / "b", [staging.Attachment(str(i), io.BytesIO(b"1")) for i in range(3)], s)
    with pytest.raises(BadRequest):
        staging.write_attachments(
            tmp_path / "c", [staging.Attachment("d", io.BytesIO(b"1")), staging.Attachment("d", io.BytesIO(b"2"))], s
        )


def test_locations_resolve_to_attachments_and_policy(tmp_path: Path) -> None:
    from wes_gateway.engines.cwl import _rewrite_locations

    root = tmp_path / "att"
    (root / "in").mkdir(parents=True)
    (root / "in" / "item #1.txt").write_text("x")
    s = settings(tmp_path)

    def resolve(reference: str) -> str:
        return staging.resolve_input(reference, root, s)

    params = {
        "a": {"class": "File", "location": "in/item%20%231.txt"},
        "b": [{"class": "File", "path": "in/item #1.txt", "secondaryFiles": []}],
        "c": {"class": "File", "location": "https://127.0.0.1:9/x.txt"},
        "d": "plain string",
    }
    out = _rewrite_locations(params, resolve)
    expected = (root / "in" / "item #1.txt").as_uri()
    assert out["a"]["location"] == expected and out["b"][0]["path"] == expected
    assert out["c"]["location"] == "https://127.0.0.1:9/x.txt" and out["d"] == "plain string"
    with pytest.raises(BadRequest):
        _rewrite_locations({"x": {"class": "File", "location": "s3://bucket/k"}}, resolve)
    allowed = settings(tmp_path, allowed_file_roots=[str(tmp_path)])
    assert staging.resolve_input((root / "in").as_uri(), root, allowed) == str(root / "in")


def test_default_prefix_admits_public_https_only(tmp_path: Path) -> None:
    """The default allowed_url_prefixes (https://) runs a public workflow by URL; a bare scheme
    admits no private, loopback or unresolvable host, and a prefix naming a host admits it."""
    s = settings(tmp_path)
    assert s.allowed_url_prefixes == ["https://"]
    assert s.trs_roots == ["https://dockstore.org/api/ga4gh/trs/v2"]
    inputpolicy.check_prefixed("https://8.8.8.8/wf.cwl", "workflow_url", "x", s)
    for url, fragment in (
        ("https://127.0.0.1/wf.cwl", "private or loopback"),
        ("https://[::1]/wf.cwl", "private or loopback"),
        ("https://10.1.2.3/wf.cwl", "private or loopback"),
        ("https://[::ffff:192.168.0.1]/wf.cwl", "private or loopback"),
        ("https://no-such-host.invalid/wf.cwl", "does not resolve"),
        ("http://8.8.8.8/wf.cwl", "not under an allowed URL prefix"),
    ):
        with pytest.raises(BadRequest, match=fragment):
            inputpolicy.check_prefixed(url, "workflow_url", url, s)
    named = settings(tmp_path, allowed_url_prefixes=["https://127.0.0.1/"])
    inputpolicy.check_prefixed("https://127.0.0.1/wf.cwl", "workflow_url", "x", named)
    with pytest.raises(BadRequest, match="none are configured"):
        inputpolicy.check_prefixed(
            "https://8.8.8.8/wf.cwl", "workflow_url", "x", settings(tmp_path, allowed_url_prefixes=[])
        )
