"""The library filegate replaces, as the benchmark's third column: s3py-helper 0.0.17 from the
package index, in the FastAPI integration its README gives (section 5), in S3 mode.

It runs from a virtual environment of its own (cached under ``~/.cache/filegate-bench``), made
with uv, so its dependency versions never touch the project's. Uvicorn serves it with one worker
and no access log, its best case; it has no keys, metrics or request log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import HOST, free_port, wait_http

VERSION = "0.0.17"
VENV = Path.home() / ".cache" / "filegate-bench" / f"s3py-helper-{VERSION}"

APP = '''"""s3py-helper's FastAPI integration (its README, section 5), in S3 mode."""
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, File, UploadFile
from s3py_helper.storage import (
    FileDownload, S3Config, StorageManager, StorageMode, StorageModeConfig,
)
from starlette.responses import Response, StreamingResponse

s3_config = S3Config(
    endpoint=os.environ["PEER_S3_ENDPOINT"],
    access_key_id=os.environ["PEER_S3_KEY"],
    secret_access_key=os.environ["PEER_S3_SECRET"],
    default_bucket=os.environ["PEER_S3_BUCKET"],
)
_manager = None


@asynccontextmanager
async def lifespan(app: FastAPI):
    global _manager
    _manager = StorageManager(
        mode_config=StorageModeConfig(mode=StorageMode.S3), s3_config=s3_config
    )
    async with _manager:
        yield


app = FastAPI(lifespan=lifespan)


def get_manager() -> StorageManager:
    return _manager


@app.post("/files/upload")
async def upload_file(file: UploadFile = File(...)):
    attach = await get_manager().upload_service.upload_file(file, folder="uploads")
    return {"file_id": attach.file_id, "file_name": attach.file_name}


@app.get("/files/{file_id:path}/download")
async def download_file(file_id: str):
    data = await get_manager().download_service.download_bytes(file_id)
    return Response(content=data, media_type="application/octet-stream")


@app.post("/files/download-zip")
async def download_zip(body: list[FileDownload]):
    return StreamingResponse(
        get_manager().download_service.stream_zip(body),
        media_type="application/zip",
        headers={"Content-Disposition": "attachment; filename=files.zip"},
    )
'''


def ensure_venv() -> Path:
    """The peer's virtual environment, made once (needs the package index)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        uv = shutil.which("uv") or "uv"
        VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([uv, "venv", "-q", "--python", "3.12", str(VENV)], check=True)
        subprocess.run(
            [
                uv,
                "pip",
                "install",
                "-q",
                "--python",
                str(python),
                f"s3py-helper=={VERSION}",
                "uvicorn[standard]",
                "python-multipart",
            ],
            check=True,
        )
    return VENV


@dataclass
class Peer:
    """The s3py-helper app as a process on a free loopback port."""

    endpoint: str
    key: tuple[str, str]
    bucket: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, work: Path) -> None:
        venv = ensure_venv()
        (work / "peer_app.py").write_text(APP)
        env = {
            **os.environ,
            "PEER_S3_ENDPOINT": self.endpoint,
            "PEER_S3_KEY": self.key[0],
            "PEER_S3_SECRET": self.key[1],
            "PEER_S3_BUCKET": self.bucket,
        }
        log = open(work / "peer.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(
            [
                str(venv / "bin" / "uvicorn"),
                "peer_app:app",
                "--app-dir",
                str(work),
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_http(f"{self.url}/docs", 60, self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=15)
            self.process = None
