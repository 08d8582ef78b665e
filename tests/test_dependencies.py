"""Where filegate relies on a dependency's internals, a change to them fails here first.

uvicorn's HTTP protocol is extended by app/server.py (a head timeout, a connection cap, bounded
heads and JSON refusals),
aiohttp's ``SKIP_WRITELINES`` is cleared under uvloop (app/storage/s3/client.py), stream-zip's
``zlib`` is zlib-ng (app/storage/zipwriter.py), and
aiofdfs is used below its public client (docs/fastdfs.md, "How filegate uses aiofdfs"): our
connections subclass its ``AsyncConnection`` and stand in for its pool, and its protocol methods
run over them. Those internals are not a promise, so aiofdfs is pinned to one exact version in
pyproject.toml, and this test records the source of every piece we rely on. An upgrade that
touches any of them fails here; re-read the piece, adapt ``app/storage/fastdfs/`` and the
emulator if needed, then record the new fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

PINNED = {"aiofdfs": "0.1.30", "uvicorn": "0.54.0", "aiohttp": "3.14.5", "stream-zip": "0.0.84"}
RELIED_ON = {
    "aiofdfs.async_connection:AsyncConnection.__init__": "0ae67dca42832a5f",
    "aiofdfs.async_connection:AsyncConnection.connect": "d1a55a1fc5b7fa13",
    "aiofdfs.async_connection:AsyncConnection.receive": "cd26b9a552dc87d9",
    "aiofdfs.async_connection:AsyncConnection.send": "27e25412ce380a72",
    "aiofdfs.async_connection:AsyncConnection.disconnect": "66a07e0752f27ea5",
    "aiofdfs.async_connection:AsyncConnection.is_connected": "dd6bb3c73e69c9ca",
    "aiofdfs.async_connection:tcp_recv_response": "ef7aec8591b916a8",
    "aiofdfs.async_connection:tcp_send_data": "4647a294cdc99d70",
    "aiofdfs.async_fdfs_protol:Tracker_header": "e420b3fb1a28238c",
    "aiofdfs.async_fdfs_protol:Storage_server": "d41a519de35520bb",
    "aiofdfs.async_tracker_client:Async_Tracker_Client": "2454e7eed67023a0",
    "aiofdfs.async_storage_client:Async_Storage_Client.storage_upload_from_upload_file": "f0334b7735a98dd6",
    "aiofdfs.async_storage_client:Async_Storage_Client.storage_query_file_info": "85504ec921fbe71e",
    "aiofdfs.async_storage_client:Async_Storage_Client.storage_get_metadata": "7af5377ec39b4ecd",
    "aiofdfs.async_storage_client:Async_Storage_Client.storage_delete_file": "cfa25a6444270b54",
    "aiofdfs.async_storage_client:tcp_upload_from_upload_file": "34600b837f3f3ca7",
    # app/server.py: GuardedProtocol hooks uvicorn's httptools protocol (and reads its
    # connections, loop and transport attributes, set in these methods).
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.__init__": "4f08999410347141",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.connection_made": "6efb565ff3d36b91",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_message_begin": "96d377fdc7c2baef",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_headers_complete": "1ea8589acfad92d8",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.connection_lost": "c91a4c9bf2e29c55",
    # ... and bounds the head in these (the URL, each header, bytes of an unfinished head), and
    # answers in JSON where uvicorn answers a request it cannot parse.
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.data_received": "010a7ae59a5d3b1a",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_url": "37be44e962b04ca8",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_header": "65d62c044f61fdbd",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.send_400_response": "ae5a4a3782b646fd",
    # app/storage/s3/client.py: SKIP_WRITELINES decides here whether head and body are joined.
    "aiohttp.http_writer:StreamWriter._writelines": "7269c41caab2c306",
    # app/storage/zipwriter.py: stream-zip's CRC-32s come from its module's ``zlib``.
    "stream_zip:stream_zip": "d51c3dc9690adf2f",
}


def fingerprint(target: str) -> str:
    module_name, _, qualname = target.partition(":")
    found: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        found = getattr(found, part)
    return hashlib.sha256(inspect.getsource(found).encode()).hexdigest()[:16]  # type: ignore[arg-type]


@pytest.mark.parametrize(("package", "pinned"), list(PINNED.items()))
def test_pinned_versions_are_installed(package: str, pinned: str) -> None:
    assert version(package) == pinned


@pytest.mark.parametrize("target", list(RELIED_ON))
def test_the_internals_we_rely_on_are_unchanged(target: str) -> None:
    assert fingerprint(target) == RELIED_ON[target], target


def test_the_image_installs_exactly_what_ci_tested() -> None:
    """docker/requirements.txt pins the image's runtime dependencies (no download addresses); CI
    runs the tests with the same versions, or this fails. Regenerate it with
    ``uv pip compile pyproject.toml --no-header --no-annotate -o docker/requirements.txt``."""
    pins = Path(__file__).resolve().parent.parent / "docker" / "requirements.txt"
    lines = [line for line in pins.read_text().splitlines() if line and not line.startswith("#")]
    assert lines and all("://" not in line for line in lines)
    project = tomllib.loads((pins.parent.parent / "pyproject.toml").read_text())
    assert sorted(project["tool"]["uv"]["constraint-dependencies"]) == sorted(lines)
    for line in lines:
        name, _, pinned = line.partition("==")
        assert pinned, line
        assert version(name) == pinned, (name, version(name), pinned)


def test_aiohttp_still_decides_by_skip_writelines() -> None:
    from aiohttp import http_writer

    assert isinstance(http_writer.SKIP_WRITELINES, bool)
    assert "SKIP_WRITELINES" in inspect.getsource(http_writer.StreamWriter._writelines)


def test_stream_zip_computes_its_crcs_with_zlib_ng() -> None:
    import stream_zip
    import zlib_ng.zlib_ng

    import app.storage.zipwriter  # noqa: F401 - makes the switch

    assert stream_zip.zlib is zlib_ng.zlib_ng  # type: ignore[attr-defined]
    assert "zlib.crc32(" in inspect.getsource(stream_zip.stream_zip)


def test_head_and_body_go_apart_only_under_uvloop() -> None:
    """Opening the S3 clients clears aiohttp's ``SKIP_WRITELINES`` under uvloop, where the
    transport is uvloop's, and leaves it alone on asyncio's own loop; upload parts then count
    once against the upload memory (app/storage/s3/client.py)."""
    import asyncio
    from contextlib import AsyncExitStack

    import uvloop
    from aiohttp import http_writer

    from app.settings import Settings
    from app.storage.s3.client import botocore_session, open_clients, parts_are_copied

    settings = Settings(
        _env_file=None,
        storage_mode="s3",
        s3_endpoint="http://127.0.0.1:9",
        s3_access_key_id="key",
        s3_secret_access_key="secret",
        s3_default_bucket="files",
    )

    async def opened() -> bool:
        async with AsyncExitStack() as stack:
            await open_clients(settings, stack, botocore_session())
        return parts_are_copied()

    before = http_writer.SKIP_WRITELINES
    try:
        http_writer.SKIP_WRITELINES = True
        assert asyncio.run(opened()) is True
        assert uvloop.run(opened()) is False
    finally:
        http_writer.SKIP_WRITELINES = before
