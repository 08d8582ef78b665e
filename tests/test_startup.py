"""Misconfigurations stop the ``filegate`` command with one line naming the setting (exit 2)."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from app.storage.budget import Budget
from app.storage.s3 import open_s3_backend
from tests.conftest import created_bucket, s3_settings
from tests.servers import ADMIN, HOST, WRITER, SeaweedFS, Service, free_port, s3_env

MiB = 1024 * 1024


def run_filegate(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = shutil.which("filegate") or str(Path(sys.executable).parent / "filegate")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "LOCAL_"))}
    return subprocess.run(
        [command, "--port", str(free_port())],
        env={**clean, "BACKEND_TIMEOUT": "3", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_refused(done: subprocess.CompletedProcess[str], setting: str, *words: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert lines[0].startswith(f"invalid setting {setting}: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def web_server() -> Iterator[str]:
    """Something that answers HTTP but is not S3 (a static file server)."""
    server = http.server.ThreadingHTTPServer((HOST, 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("create", ["false", "true"])
def test_an_endpoint_that_is_not_s3(web_server: str, tmp_path: Path, create: str) -> None:
    done = run_filegate({**s3_env(web_server, "files"), "S3_CREATE_BUCKET": create}, tmp_path)
    assert_refused(done, "S3_ENDPOINT", web_server, "does not answer like S3")


def test_an_unreachable_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://{HOST}:{free_port()}"
    done = run_filegate(s3_env(endpoint, "files"), tmp_path)
    assert_refused(done, "S3_ENDPOINT", "cannot connect")


async def test_wrong_keys_and_a_missing_bucket(seaweed: SeaweedFS, tmp_path: Path) -> None:
    bucket = await created_bucket(seaweed.endpoint)
    env = s3_env(seaweed.endpoint, bucket)  # correct: the tests of the service start with it
    wrong_write = run_filegate({**env, "S3_SECRET_ACCESS_KEY": "not-the-secret"}, tmp_path)
    assert_refused(wrong_write, "S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY", "key pair")
    wrong_read = run_filegate({**env, "S3_READ_SECRET_ACCESS_KEY": "not-the-secret"}, tmp_path)
    assert_refused(wrong_read, "S3_READ_ACCESS_KEY_ID/S3_READ_SECRET_ACCESS_KEY", "key pair")
    swapped = run_filegate(
        {**env, "S3_READ_ACCESS_KEY_ID": WRITER[0], "S3_READ_SECRET_ACCESS_KEY": WRITER[1]},
        tmp_path,
    )  # the write-only identity may not list: the read pair is refused
    assert_refused(swapped, "S3_READ_ACCESS_KEY_ID/S3_READ_SECRET_ACCESS_KEY", "s3:ListBucket")
    missing = run_filegate({**env, "S3_DEFAULT_BUCKET": "no-such-bucket"}, tmp_path)
    assert_refused(missing, "S3_DEFAULT_BUCKET", "'no-such-bucket' does not exist")


def test_an_unreachable_tracker(tmp_path: Path) -> None:
    env = {"STORAGE_MODE": "fastdfs", "FASTDFS_TRACKER_SERVERS": f"{HOST}:{free_port()}"}
    done = run_filegate(env, tmp_path)
    assert_refused(
        done, "FASTDFS_TRACKER_SERVERS", "no tracker answers", env["FASTDFS_TRACKER_SERVERS"]
    )


def test_a_local_root_that_is_not_a_writable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the root should be")
    done = run_filegate({"LOCAL_ROOT": str(blocker)}, tmp_path)
    assert_refused(done, "LOCAL_ROOT", str(blocker), "is not a writable directory")


_CHURN = """
import os, resource, sys
from app.main import tune_malloc
if sys.argv[1] == "tuned":
    tune_malloc()
halves = memoryview(os.urandom(700 * 1024)), memoryview(os.urandom(700 * 1024))
for _ in range(20):
    chunk = b"".join(halves)
    del chunk
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):  # a chunk made, another made, both freed: as a zip's output chunks are
    one, two = b"".join(halves), b"".join(reversed(halves))
    del one, two
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def test_tuned_malloc_reuses_freed_chunks_instead_of_faulting_them_in_again() -> None:
    """``tune_malloc`` (app/main.py): 1.4 MiB chunks made and freed over and over stay in the
    heap. With glibc's defaults each one is given back to the kernel and faulted in again."""

    def faults(mode: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True
        )
        return int(run.stdout)

    assert faults("default") > 400 * 300  # 400 chunks of 350 pages: nearly every page faulted
    assert faults("tuned") < 2_000


def test_filegate_itself_runs_with_malloc_tuned(local_service: Service, tmp_path: Path) -> None:
    """The test above, in the served process: zips of a 64 MiB file (1 MiB reads in, stream-zip's
    joined chunks out) fault in no new pages. With ``tune_malloc`` taken out of start-up, the
    same four zips faulted in 2,944 pages."""
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(64 * MiB))
    file_id = local_service.upload(source, "big.bin")
    zip_request = [
        "curl", "-sS", "-f", "-o", os.devnull, "-H", "Content-Type: application/json",
        "--data-binary", json.dumps([{"file_id": file_id}]),
        f"{local_service.url}/files/download-zip",
    ]  # fmt: skip
    subprocess.run(zip_request, check=True, timeout=60)  # the heap grows to its working size
    assert local_service.process is not None
    stat = Path(f"/proc/{local_service.process.pid}/stat")

    def minor_faults() -> int:
        return int(stat.read_text().rsplit(")", 1)[1].split()[7])  # minflt, after the name

    before = minor_faults()
    for _ in range(4):
        subprocess.run(zip_request, check=True, timeout=60)
    faults = minor_faults() - before
    assert faults < 500, faults  # 256 MiB zipped: none when tuned, about 3,000 when not


async def test_replicas_racing_to_create_the_bucket_all_start(seaweed: SeaweedFS) -> None:
    """Replicas of one deployment start at once with S3_CREATE_BUCKET on a bucket that does not
    exist yet (docker-compose.yml, profile cluster). Three backends opened together in one loop
    all find it missing, then all create it: the two that lose (S3 answers
    BucketAlreadyOwnedByYou) find it made, and open."""
    bucket = f"raced-{os.urandom(4).hex()}"
    settings = s3_settings(seaweed.endpoint, bucket, s3_create_bucket=True,
                           s3_access_key_id=ADMIN[0], s3_secret_access_key=ADMIN[1])  # fmt: skip
    async with AsyncExitStack() as stack:
        opened = await asyncio.gather(
            *(open_s3_backend(settings, stack, Budget(MiB, 1)) for _ in range(3)),
            return_exceptions=True,
        )
    assert [type(each).__name__ for each in opened] == ["S3Backend"] * 3, opened
