"""The OpenAPI document against the tools that trust it: schemathesis and a generated client.

filegate runs as a real process. ``schemathesis run --checks all`` generates requests from the
document (valid and invalid), sends them and checks every answer against it: no 5xx, only declared
statuses and media types, bodies that match their schemas, schema-valid requests accepted and
schema-violating ones refused. ``openapi-python-client`` builds a client from the same document,
and that client drives every operation against the live service.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import created_bucket
from tests.servers import SeaweedFS, Service

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KEY = "schema-tools-key-0123456789"
KEYS = json.dumps([{"name": "tools", "key": KEY, "scopes": ["read", "write", "delete"]}])
SIGNING = {"SIGNING_SECRET": "schema-tools-signing-secret-0123456789"}


def _schemathesis(service: Service, keyed: bool, seconds: int) -> subprocess.CompletedProcess[str]:
    command = [
        str(BIN / "schemathesis"),
        "--config-file",
        str(ROOT / "tests" / "schemathesis.toml"),
        "run",
        f"{service.url}/openapi.json",
        "--checks",
        "all",
        "--max-time",
        str(seconds),
        "--max-examples",
        "25",
        "--workers",
        "2",
        "--generation-database",
        "none",
        "--seed",  # the same cases on every run; a new finding then shows up with a new seed
        "20261125",
        "--no-color",
    ]
    env = {
        **os.environ,
        "FILEGATE_TEST_KEY": KEY if keyed else "unused",
        "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
    }
    return subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 120, cwd=ROOT, env=env
    )


def _plain_schemathesis(service: Service) -> subprocess.CompletedProcess[str]:
    """``schemathesis run --checks all`` as a newcomer types it: no configuration file, no hooks,
    no suppressed health check (docs/api.md, "The OpenAPI document")."""
    command = [
        str(BIN / "schemathesis"), "run", f"{service.url}/openapi.json", "--checks", "all",
        "--max-examples", "40", "--workers", "2", "--generation-database", "none",
        "--seed", "20261206", "--no-color",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS")}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd="/", env=env)


def _findings(output: str) -> list[tuple[str, str, str]]:
    """(operation, check, status) of every failure schemathesis reports."""
    failures = output.partition("= FAILURES =")[2].partition("= WARNINGS =")[0]
    failures = failures.partition("= SUMMARY =")[0]
    found: list[tuple[str, str, str]] = []
    parts = re.split(r"\n_{3,} (.+?) _{3,}\n", failures)
    for operation, body in zip(parts[1::2], parts[2::2], strict=True):
        for check in re.findall(r"^- (ST\d+ [^\n]+)$", body, re.MULTILINE):
            for status in re.findall(r"^\[(\d{3})\]", body, re.MULTILINE):
                found.append((operation, check, status))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["local", "s3"])
async def test_a_plain_schemathesis_run_finds_only_what_tus_requires(
    mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """No health-check error; the one finding allowed is tus 1.0's 412 for an unsupported
    Tus-Resumable, which schemathesis reports as a schema-violating request accepted."""
    env = {"LOCAL_ROOT": str(tmp_path / "data"), **SIGNING}
    if mode == "s3":
        seaweed: SeaweedFS = request.getfixturevalue("seaweed")
        env |= seaweed.service_env(await created_bucket(seaweed.endpoint))
    service = Service(env)
    service.start(tmp_path)
    try:
        done = _plain_schemathesis(service)
    finally:
        service.stop()
    output = done.stdout + done.stderr
    summary = output.rpartition("= SUMMARY =")[2]
    assert "Failed Health Check" not in output, summary
    assert "Unsupported regex" not in output, summary
    findings = _findings(output)
    assert findings, output[-3000:]  # the 412s are there: the parsing works
    for operation, check, status in findings:
        assert "/files/tus" in operation, (operation, check, status)
        assert (check.split()[0], status) == ("ST201", "412"), (operation, check, status)
    errors = summary.partition("Errors:")[2].partition("Warnings:")[0]
    assert set(re.findall(r"🚫 ([^:]+):", errors)) <= {"Serialization not possible"}, summary
    generated = re.search(r"(\d+) generated", summary)
    assert generated is not None and int(generated.group(1)) > 500, summary


@pytest.fixture
def local_service(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Service]:
    env = {"LOCAL_ROOT": str(tmp_path / "data"), **SIGNING}
    if request.param:
        env["API_KEYS"] = KEYS
    service = Service(env)
    service.start(tmp_path)
    try:
        yield service
    finally:
        service.stop()


@pytest.mark.slow
@pytest.mark.parametrize("local_service", [False, True], ids=["open", "keyed"], indirect=True)
def test_schemathesis_finds_nothing_in_local_mode(local_service: Service) -> None:
    done = _schemathesis(local_service, keyed="API_KEYS" in local_service.env, seconds=45)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "Tested: " in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("keyed", [False, True], ids=["open", "keyed"])
async def test_schemathesis_finds_nothing_in_s3_mode(
    seaweed: SeaweedFS, tmp_path: Path, keyed: bool
) -> None:
    env = {**seaweed.service_env(await created_bucket(seaweed.endpoint)), **SIGNING}
    if keyed:
        env["API_KEYS"] = KEYS
    service = Service(env)
    service.start(tmp_path)
    try:
        done = _schemathesis(service, keyed=keyed, seconds=45)
    finally:
        service.stop()
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


# --- a generated client ---------------------------------------------------------------------

CLIENT_CONFIG = """\
project_name_override: filegate_generated
package_name_override: filegate_generated
content_type_overrides:
  "*/*": application/octet-stream
  application/zip: application/octet-stream
  application/offset+octet-stream: application/octet-stream
"""
"""The generator reads only a few media types; downloads are any type and zips are zips, both
bytes to a client."""


def _generated_client(service: Service, workdir: Path) -> Any:
    spec = workdir / "openapi.json"
    spec.write_bytes(httpx.get(f"{service.url}/openapi.json").content)
    config = workdir / "client.yaml"
    config.write_text(CLIENT_CONFIG)
    out = workdir / "generated"
    subprocess.run(
        [str(BIN / "openapi-python-client"), "generate", "--path", str(spec), "--meta", "none",
         "--output-path", str(out / "filegate_generated"), "--config", str(config)],
        check=True, capture_output=True, text=True, timeout=120,
        env={"PATH": f"{BIN}:/usr/bin:/bin"},
    )  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("filegate_generated")
    finally:
        sys.path.remove(str(out))


def _module(package: Any, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def files(name: str) -> Any:
    return importlib.import_module(f"filegate_generated.api.files.{name}")


def folders(name: str) -> Any:
    return importlib.import_module(f"filegate_generated.api.folders.{name}")


def tus(name: str) -> Any:
    return importlib.import_module(f"filegate_generated.api.resumable_uploads.{name}")


def ops(name: str) -> Any:
    return importlib.import_module(f"filegate_generated.api.operations.{name}")


@pytest.mark.slow
def test_a_generated_client_drives_every_operation(tmp_path: Path) -> None:
    service = Service({"LOCAL_ROOT": str(tmp_path / "data"), "API_KEYS": KEYS, **SIGNING})
    service.start(tmp_path)
    stack = ExitStack()
    try:
        package = _generated_client(service, tmp_path)
        models = _module(package, "models")
        types = _module(package, "types")
        client = package.AuthenticatedClient(
            base_url=service.url,
            token=KEY,
            prefix="Bearer",
            headers={"X-Meta-Author": "generated"},
        )
        stack.enter_context(client)
        operation_ids = {
            op["operationId"]
            for item in json.loads((tmp_path / "openapi.json").read_text())["paths"].values()
            for op in item.values()
        }
        used: set[str] = set()

        def call(module: Any, operation_id: str, *args: Any, **kwargs: Any) -> Any:
            used.add(operation_id)
            return module.sync_detailed(*args, client=client, **kwargs)

        first = b"first file \x00\xff" * 1000
        answer = call(
            files("upload_file"), "upload_file",
            body=models.UploadFileBody(file=types.File(BytesIO(first), "first.bin")),
            folder="generated/one",
        )  # fmt: skip
        assert answer.status_code == 201, answer.content
        first_id = answer.parsed.file_id
        assert first_id.startswith("local:files/generated/one/")

        raw = b"raw body" * 5000
        answer = call(
            files("upload_raw"), "upload_raw", "raw.txt",
            body=types.File(BytesIO(raw), "raw.txt", "text/plain"),
        )  # fmt: skip
        assert answer.status_code == 201, answer.content
        raw_id = answer.parsed.file_id

        batch = models.BatchUploadBody(
            files=[types.File(BytesIO(b"a" * 10), "a.txt"), types.File(BytesIO(b"b" * 20), "b.txt")]
        )
        answer = call(files("batch_upload"), "batch_upload", body=batch, folder="generated/batch")
        assert answer.status_code == 201, answer.content
        assert [item.file_size for item in answer.parsed] == [10, 20]

        answer = call(files("get_file_info"), "get_file_info", raw_id)
        assert answer.status_code == 200
        assert (answer.parsed.file_size, answer.parsed.metadata["author"]) == (
            len(raw),
            "generated",
        )

        answer = call(files("download_file"), "download_file", first_id)
        assert answer.status_code == 200 and answer.content == first
        answer = call(files("download_file_head"), "download_file_head", first_id)
        assert answer.status_code == 200
        assert answer.headers["content-length"] == str(len(first))

        answer = call(
            files("create_link"), "create_link", raw_id,
            body=models.LinkRequest(expires_in=60, filename="renamed.txt"),
        )  # fmt: skip
        assert answer.status_code == 200
        assert httpx.get(answer.parsed.url).content == raw  # a link needs no key

        answer = call(
            files("download_zip"), "download_zip",
            body=[models.ZipItem(file_id=first_id), models.ZipItem(file_id=raw_id)],
        )  # fmt: skip
        assert answer.status_code == 200
        with zipfile.ZipFile(BytesIO(answer.content)) as archive:
            assert sorted(archive.read(n) for n in archive.namelist()) == sorted([first, raw])

        answer = call(files("delete_file"), "delete_file", raw_id)
        assert answer.status_code == 200
        answer = call(files("get_file_info"), "get_file_info", raw_id)
        assert answer.status_code == 404 and answer.parsed.code == "file_not_found"

        # a resumable upload, in two PATCHes, then one terminated
        data = b"resumable \x00\xff" * 100_000
        name = base64.b64encode(b"resumed.bin").decode()
        answer = call(tus("tus_options"), "tus_options")
        assert answer.status_code == 204 and "checksum" in answer.headers["tus-extension"]
        answer = call(
            tus("tus_create"), "tus_create",
            tus_resumable="1.0.0", upload_length=str(len(data)), upload_metadata=f"filename {name}",
        )  # fmt: skip
        assert answer.status_code == 201, answer.content
        upload_id = answer.headers["location"].rsplit("/", 1)[1]
        assert call(tus("tus_upload_options"), "tus_upload_options", upload_id).status_code == 204
        for offset in (0, 600_000):
            chunk = data[offset : offset + 600_000]
            answer = call(
                tus("tus_patch"), "tus_patch", upload_id,
                body=types.File(BytesIO(chunk), "chunk"),
                tus_resumable="1.0.0", upload_offset=str(offset),
                content_type="application/offset+octet-stream",
            )  # fmt: skip
            assert answer.status_code == 204, answer.content
        answer = call(tus("tus_status"), "tus_status", upload_id, tus_resumable="1.0.0")
        assert answer.status_code == 200
        resumed_id = answer.headers["file-id"]
        answer = call(files("download_file"), "download_file", resumed_id)
        assert answer.content == data
        answer = call(
            tus("tus_create"), "tus_create",
            tus_resumable="1.0.0", upload_defer_length="1", upload_metadata=f"filename {name}",
        )  # fmt: skip
        upload_id = answer.headers["location"].rsplit("/", 1)[1]
        answer = call(tus("tus_terminate"), "tus_terminate", upload_id, tus_resumable="1.0.0")
        assert answer.status_code == 204

        # folders: list, summarize, zip, copy, batch delete, delete a folder
        answer = call(
            folders("list_files"), "list_files", prefix="local:files/generated/", delimiter=""
        )
        assert answer.status_code == 200
        listed = [item.file_id for item in answer.parsed.files]
        assert first_id in listed and answer.parsed.next_cursor is None
        answer = call(
            folders("summarize_files"), "summarize_files", prefix="local:files/generated/"
        )
        assert (answer.parsed.file_count, answer.parsed.complete) == (3, True)
        answer = call(
            files("download_zip_prefix"), "download_zip_prefix", prefix="local:files/generated/"
        )
        assert answer.status_code == 200 and answer.content.startswith(b"PK")
        answer = call(
            folders("copy_file"), "copy_file", first_id,
            body=models.CopyRequest(folder="copies", file_name="again.bin"),
        )  # fmt: skip
        assert answer.status_code == 201 and answer.parsed.file_name == "again.bin"
        copy_id = answer.parsed.file_id
        answer = call(
            folders("batch_delete"), "batch_delete",
            body=models.BatchDeleteRequest(file_ids=[copy_id]),
        )  # fmt: skip
        assert answer.status_code == 200 and answer.parsed.deleted == [copy_id]
        answer = call(
            folders("delete_prefix"), "delete_prefix",
            body=models.DeletePrefixRequest(prefix="local:files/generated/batch/"),
        )  # fmt: skip
        assert (answer.parsed.file_count, answer.parsed.deleted) == (2, True)

        assert call(ops("healthz"), "healthz").status_code == 200
        access = call(ops("get_access"), "get_access")
        assert access.status_code == 200 and access.parsed.roots[0].prefix == "local:files/"
        assert call(ops("readyz"), "readyz").status_code == 200
        answer = call(ops("metrics"), "metrics")
        assert answer.status_code == 200 and b"filegate_" in answer.content
    finally:
        stack.close()
        service.stop()
    assert used == operation_ids, operation_ids - used
