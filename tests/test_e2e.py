"""filegate as a real process, spoken to with curl and raw sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import created_bucket, s3_admin
from tests.fdfs_emulator import FastDFS
from tests.servers import SeaweedFS, Service

MiB = 1024 * 1024


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=120, check=False)


def curl_json(*args: str) -> dict[str, object]:
    done = curl(*args)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
async def s3_service(seaweed: SeaweedFS, tmp_path: Path) -> AsyncIterator[tuple[Service, str]]:
    bucket = await created_bucket(seaweed.endpoint)
    service = Service(seaweed.service_env(bucket))
    service.start(tmp_path)
    yield service, bucket
    service.stop()


def test_curl_form_put_range_and_resume(local_service: Service, tmp_path: Path) -> None:
    url = local_service.url
    source = tmp_path / "Bericht über Q3.bin"
    data = os.urandom(3 * MiB + 17)
    source.write_bytes(data)

    attach = curl_json("-F", "folder=reports", "-F", f"file=@{source}", f"{url}/files/upload")
    file_id = str(attach["file_id"])
    assert attach["file_name"] == "Bericht über Q3.bin"
    assert attach["file_size"] == len(data)
    download_url = f"{url}/files/{quote(file_id)}/download"

    raw = curl_json("-T", str(source), f"{url}/files/upload/")
    assert raw["file_name"] == source.name
    assert raw["file_size"] == len(data)

    whole = tmp_path / "whole.bin"
    assert curl("-f", "-o", str(whole), download_url).returncode == 0
    assert whole.read_bytes() == data

    part = curl("-f", "-r", "100-199", download_url)
    assert part.returncode == 0
    assert part.stdout == data[100:200]

    cut = tmp_path / "resumed.bin"
    cut.write_bytes(data[: 1 * MiB + 5])  # a download that was cut off
    resumed = curl("-f", "-C", "-", "-o", str(cut), download_url)
    assert resumed.returncode == 0, resumed.stderr
    assert cut.read_bytes() == data

    headers = curl("-f", "-I", download_url).stdout.decode().lower()
    assert "content-disposition: attachment;" in headers
    assert "filename*=utf-8''bericht%20%c3%bcber%20q3.bin" in headers


def test_literal_dot_segments_reach_the_service_as_400(local_service: Service) -> None:
    for method, path in (
        ("GET", "/files/local:files/../../../etc/passwd/info"),
        ("GET", "/files/local:files/a/../../x/download"),
        ("DELETE", "/files/local:files/../files/x"),
        ("PUT", "/files/upload/../x"),
    ):
        done = curl(
            "--path-as-is", "-X", method, "--data-binary", "x",
            "-w", "\n%{http_code}", f"{local_service.url}{path}",
        )  # fmt: skip
        body, _, status = done.stdout.decode().rpartition("\n")
        assert status == "400", (path, done.stdout)
        assert json.loads(body)["code"] == "invalid_argument"


def _send_partial_upload(url: str, path: str, declared: int, sent: int) -> None:
    """Start an upload, send part of the body, then vanish."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        block = os.urandom(MiB)
        for _ in range(sent // MiB):
            sock.sendall(block)
        time.sleep(0.5)


def _eventually(check: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_disconnect_mid_upload_leaves_nothing_on_disk(
    local_service: Service, tmp_path: Path
) -> None:
    _send_partial_upload(local_service.url, "/files/upload/cut.bin", 50 * MiB, 20 * MiB)
    root = tmp_path / "data"
    assert _eventually(lambda: stored_files(root / "files") == [])
    assert stored_files(root / ".filegate-meta") == []
    log = local_service.log_path
    assert log is not None
    assert _eventually(lambda: "client went away" in log.read_text())
    assert "Traceback" not in log.read_text()  # not a crash


async def test_disconnect_mid_upload_aborts_the_multipart_upload(
    s3_service: tuple[Service, str], seaweed: SeaweedFS
) -> None:
    service, bucket = s3_service
    _send_partial_upload(service.url, "/files/upload/cut.bin", 60 * MiB, 30 * MiB)
    deadline = time.monotonic() + 15
    async with s3_admin(seaweed.endpoint) as s3:
        while True:
            objects = (await s3.list_objects_v2(Bucket=bucket)).get("Contents", [])
            pending = (await s3.list_multipart_uploads(Bucket=bucket)).get("Uploads", [])
            if (not objects and not pending) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert objects == []
    assert pending == []
    # and the service is still healthy afterwards
    assert curl_json(f"{service.url}/healthz") == {"status": "ok"}


def test_curl_against_s3(s3_service: tuple[Service, str], tmp_path: Path) -> None:
    service, bucket = s3_service
    source = tmp_path / "big.bin"
    data = os.urandom(20 * MiB + 3)
    source.write_bytes(data)
    attach = curl_json("-F", f"file=@{source}", f"{service.url}/files/upload")
    assert str(attach["file_id"]).startswith(f"s3:{bucket}/")
    out = tmp_path / "out.bin"
    url = f"{service.url}/files/{quote(str(attach['file_id']))}/download"
    assert curl("-f", "-o", str(out), url).returncode == 0
    assert out.read_bytes() == data


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_FILE_SIZE", "lots"),
        ("STORAGE_MODE", "cloud"),
        ("S3_ADDRESSING_STYLE", "sideways"),
        ("S3_DEFAULT_BUCKET", "Not_A_Bucket"),
        ("S3_CREATE_BUCKET", "perhaps"),
        ("API_KEYS", '[{"name": "web", "key": "too-short", "scopes": ["read"]}]'),
        ("API_KEYS", '[{"name": "web", "key": "long-enough-key-0123", "scopes": ["admin"]}]'),
        ("API_KEYS", "not json"),
        ("API_KEYS_FILE", "/nonexistent/keys.json"),
        ("SIGNING_SECRET", "changeme"),
        ("CLIENT_IDLE_TIMEOUT", "0"),
    ],
)
def test_invalid_setting_stops_startup_naming_it(tmp_path: Path, variable: str, value: str) -> None:
    command = Path(sys.executable).parent / "filegate"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "LOCAL_"))}
    env[variable] = value
    done = subprocess.run(
        [str(command), "--port", "1"], cwd=tmp_path, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert f"invalid setting {variable}" in done.stderr.decode()


def test_serves_with_no_configuration(tmp_path: Path) -> None:
    service = Service({})
    service.start(tmp_path)
    try:
        attach = curl_json("-T", "/dev/null", f"{service.url}/files/upload/empty.txt")
        assert str(attach["file_id"]).startswith("local:files/")
        assert (tmp_path / "data" / "files").is_dir()
        assert len(stored_files(tmp_path / "data" / "files")) == 1
    finally:
        service.stop()


def test_failure_after_the_first_byte_aborts_the_download(
    local_service: Service, tmp_path: Path
) -> None:
    """A file that shrinks under a running download must fail the transfer, not end it short."""
    data = os.urandom(64 * MiB)
    source = tmp_path / "src.bin"
    source.write_bytes(data)
    attach = curl_json("-T", str(source), f"{local_service.url}/files/upload/shrinks.bin")
    stored = tmp_path / "data" / str(attach["file_id"]).removeprefix("local:")
    out = tmp_path / "out.bin"
    url = f"{local_service.url}/files/{quote(str(attach['file_id']))}/download"
    download = subprocess.Popen(
        ["curl", "-sS", "--limit-rate", "4M", "-o", str(out), url], stderr=subprocess.DEVNULL
    )
    assert _eventually(lambda: out.exists() and out.stat().st_size > 0, timeout=10)
    os.truncate(stored, MiB)  # the backend now fails mid-stream
    assert download.wait(timeout=60) != 0  # curl: transfer closed with data outstanding
    assert out.stat().st_size < len(data)
    assert curl_json(f"{local_service.url}/healthz") == {"status": "ok"}


@pytest.mark.parametrize("path", ["/files/upload/cut.bin", "/files/upload"])
def test_disconnect_mid_upload_leaves_nothing_on_fastdfs(
    fastdfs: FastDFS, fastdfs_service: Service, path: str
) -> None:
    """Streamed (raw PUT with a length) and spooled (form) uploads alike."""
    if path.endswith("cut.bin"):
        _send_partial_upload(fastdfs_service.url, path, 50 * MiB, 20 * MiB)
    else:
        _send_partial_form(fastdfs_service.url, path, 50 * MiB, 20 * MiB)
    time.sleep(1)
    assert _eventually(lambda: fastdfs.stored_files() == [])
    assert curl_json(f"{fastdfs_service.url}/healthz") == {"status": "ok"}


def _send_partial_form(url: str, path: str, declared: int, sent: int) -> None:
    host, port = url.removeprefix("http://").split(":")
    head = (
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\n"
            "Content-Type: multipart/form-data; boundary=XX\r\n\r\n".encode()
            + head
        )
        block = os.urandom(MiB)
        for _ in range(sent // MiB):
            sock.sendall(block)
        time.sleep(0.5)


def test_a_stalled_upload_gets_408_and_leaves_nothing(tmp_path: Path) -> None:
    """A client that stops sending mid-body loses its slot after CLIENT_IDLE_TIMEOUT."""
    service = Service({"LOCAL_ROOT": str(tmp_path / "data"), "CLIENT_IDLE_TIMEOUT": "1"})
    service.start(tmp_path)
    try:
        host, port = service.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"PUT /files/upload/slow.bin HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Length: {10 * MiB}\r\n\r\n".encode()
            )
            sock.sendall(os.urandom(3 * MiB))
            started = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            waited = time.monotonic() - started
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(body)["code"] == "request_timeout"
        assert 0.5 < waited < 8
        assert _eventually(lambda: stored_files(tmp_path / "data" / "files") == [])
    finally:
        service.stop()


def test_a_client_that_stops_reading_is_cut_off(tmp_path: Path) -> None:
    """A download nobody reads does not hold the service: the connection is closed."""
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(64 * MiB))
    service = Service({"LOCAL_ROOT": str(tmp_path / "data"), "CLIENT_IDLE_TIMEOUT": "1"})
    service.start(tmp_path)
    try:
        file_id = service.upload(source, "big.bin")
        host, port = service.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(
                f"GET /files/{quote(file_id)}/download HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            )
            time.sleep(4)  # read nothing: the server's sends stall, then it gives up
            received = 0
            while chunk := sock.recv(MiB):
                received += len(chunk)
        assert 0 < received < 64 * MiB  # the connection ended early, not with the whole file
        log = service.log_path
        assert log is not None
        assert _eventually(lambda: "aborted mid-stream" in log.read_text())
        # and the service still serves
        assert curl("-f", "-o", "/dev/null", f"{service.url}/healthz").returncode == 0
    finally:
        service.stop()


def _traced_fsyncs(pid: int, trace: Path, act: Callable[[], object]) -> list[str]:
    """The paths filegate (every thread) fsyncs while ``act`` runs, seen by strace."""
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-y", "-e", "trace=fsync", "-o", str(trace), "-p", str(pid)]
    )
    try:
        deadline = time.monotonic() + 10
        while "TracerPid:\t0" in Path(f"/proc/{pid}/status").read_text():
            assert time.monotonic() < deadline, "strace did not attach"
            time.sleep(0.05)
        act()
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    return [line.split("<", 1)[1].split(">", 1)[0] for line in trace.read_text().splitlines()
            if "fsync(" in line and "<" in line]  # fmt: skip


def test_an_upload_into_new_folders_makes_their_entries_durable(
    local_service: Service, tmp_path: Path
) -> None:
    """Acknowledged means it survives a power loss: before the response, filegate fsyncs the
    file (with its record), its folder, and the parent of every folder the upload created, so
    no new folder's entry can be lost. A later upload into the same folder fsyncs only that
    folder."""
    assert local_service.process is not None
    source = tmp_path / "a.txt"
    source.write_bytes(b"durable")
    url = f"{local_service.url}/files/upload"
    uploaded: list[str] = []

    def upload() -> None:
        answer = curl_json("-F", "folder=x/y/z", "-F", f"file=@{source}", url)
        uploaded.append(str(answer["file_id"]))

    curl_json("-F", f"file=@{source}", url)  # the bucket's folder exists from now on
    files = tmp_path / "data" / "files"
    first = _traced_fsyncs(local_service.process.pid, tmp_path / "one.trace", upload)
    assert uploaded[0].startswith("local:files/x/y/z/")
    assert [p for p in first if os.path.basename(p).startswith(".filegate-tmp-")]  # the file
    folders = [str(files / "x/y/z"), str(files / "x/y"), str(files / "x"), str(files)]
    inside = f"{files / 'x/y/z'}/"
    assert sorted(p for p in first if not p.startswith(inside)) == sorted(folders)

    second = _traced_fsyncs(local_service.process.pid, tmp_path / "two.trace", upload)
    assert [p for p in second if not p.startswith(inside)] == folders[:1]
    assert (files / uploaded[1].removeprefix("local:files/")).read_bytes() == b"durable"

    # A resumable upload's last PATCH moves the file into its folder the same way.
    metadata = f"filename {b64encode(b't.txt').decode()},folder {b64encode(b't/u').decode()}"
    tus = {"Tus-Resumable": "1.0.0"}
    created = httpx.post(
        f"{local_service.url}/files/tus",
        headers={**tus, "Upload-Length": "7", "Upload-Metadata": metadata},
    )
    assert created.status_code == 201, created.text
    location = created.headers["location"]

    def patch() -> None:
        answer = httpx.patch(
            location,
            content=b"durable",
            headers={
                **tus,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert answer.status_code == 204, answer.text

    third = _traced_fsyncs(local_service.process.pid, tmp_path / "three.trace", patch)
    new_folders = [str(files / "t/u"), str(files / "t"), str(files)]
    assert sorted(p for p in third if p.startswith(str(files))) == sorted(new_folders)
    assert [p.read_bytes() for p in (files / "t/u").iterdir()] == [b"durable"]


def test_a_delete_holds_after_a_power_loss_with_one_fsync_per_folder(
    local_service: Service, tmp_path: Path
) -> None:
    """A delete answers once the directory that lost the entry is fsynced, so the file cannot
    come back after a power loss. A batch fsyncs each such directory once: two files whose
    folders both empty out cost one fsync, of the folder above them."""
    assert local_service.process is not None
    pid = local_service.process.pid
    source = tmp_path / "a.txt"
    source.write_bytes(b"soon gone")
    url = local_service.url

    def upload(folder: str) -> str:
        return str(curl_json("-F", f"folder={folder}", "-F", f"file=@{source}",
                             f"{url}/files/upload")["file_id"])  # fmt: skip

    keep, first, second, third = upload("p"), upload("p/q"), upload("p/q"), upload("p/r")
    files = tmp_path / "data" / "files"

    def delete_one() -> None:
        assert curl_json("-X", "DELETE", f"{url}/files/{first}")["detail"] == "deleted"

    assert _traced_fsyncs(pid, tmp_path / "one.trace", delete_one) == [str(files / "p/q")]

    def delete_two() -> None:
        body = json.dumps({"file_ids": [second, third]})
        answer = curl_json("-H", "Content-Type: application/json", "--data-binary", body,
                           f"{url}/files/batch-delete")  # fmt: skip
        assert answer["deleted"] == [second, third]

    assert _traced_fsyncs(pid, tmp_path / "two.trace", delete_two) == [str(files / "p")]
    assert stored_files(files) == [keep.removeprefix("local:files/")]
    assert not (files / "p/q").exists() and not (files / "p/r").exists()
