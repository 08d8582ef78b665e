"""``STORAGE_MODE=memory`` as a real process: every operation, the bound, and the warning.

The API-level suites (tests/test_files.py, tests/test_tus.py, tests/test_zip.py) also run in
memory mode, and tests/test_backends.py holds the backend to the contract; this is what a user
of ``STORAGE_MODE=memory`` sees first.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
from tusclient import client as tus_client

from tests.conftest import SIGNING_SECRET
from tests.servers import Service

MiB = 1024 * 1024


@pytest.fixture
def memory_service(tmp_path: Path) -> Iterator[Service]:
    service = Service(
        {
            "STORAGE_MODE": "memory",
            "MEMORY_MAX_SIZE": "8MiB",
            "SIGNING_SECRET": SIGNING_SECRET,
            "LOCAL_ROOT": str(tmp_path / "never-used"),
        }
    )
    service.start(tmp_path)
    yield service
    service.stop()


def test_every_operation_in_memory(memory_service: Service, tmp_path: Path) -> None:
    url = memory_service.url
    report = os.urandom(300_000)
    with httpx.Client(base_url=url) as http:
        plain = http.post(
            "/files/upload",
            data={"folder": "Отчёты/2026", "metadata": '{"author": "Jöhn"}'},
            files={"file": ("Отчёт «Q3».pdf", report, "application/pdf")},
        )
        assert plain.status_code == 201, plain.text
        report_id = plain.json()["file_id"]
        assert report_id.startswith("memory:files/Отчёты/2026/")
        raw = http.put(f"/files/upload/{quote('报告 😀.txt')}", content=b"plain text")
        assert raw.status_code == 201
        batch = http.post(
            "/files/batch-upload",
            data={"folder": "Отчёты/2026"},
            files=[("files", ("a.txt", b"a")), ("files", ("b.txt", b"bb"))],
        )
        assert batch.status_code == 201 and len(batch.json()) == 2

        # tus, with tuspy: the file appears under its id once complete
        source = tmp_path / "resumable.bin"
        data = os.urandom(3 * MiB + 17)
        source.write_bytes(data)
        with source.open("rb") as stream:
            uploader = tus_client.TusClient(f"{url}/files/tus").uploader(
                file_stream=stream,
                chunk_size=MiB,
                metadata={"filename": "resumable.bin", "folder": "Отчёты"},
            )
            uploader.upload()
        assert uploader.url is not None
        head = http.head(uploader.url, headers={"Tus-Resumable": "1.0.0"})
        tus_id = unquote(head.headers["file-id"])
        assert http.get(f"/files/{tus_id}/download").content == data

        whole = http.get(f"/files/{report_id}/download")
        assert whole.content == report
        assert whole.headers["content-type"] == "application/pdf"
        part = http.get(f"/files/{report_id}/download", headers={"Range": "bytes=1000-1999"})
        assert (part.status_code, part.content) == (206, report[1000:2000])
        info = http.get(f"/files/{report_id}/info").json()
        assert (info["backend"], info["file_size"], info["metadata"]) == (
            "memory", len(report), {"author": "Jöhn"}
        )  # fmt: skip

        listed = http.get("/files", params={"prefix": "memory:files/Отчёты/2026/"}).json()
        assert sorted(f["file_name"] for f in listed["files"]) == [
            "a.txt", "b.txt", "Отчёт «Q3».pdf"
        ] or sorted(f["file_name"] for f in listed["files"]) == sorted(
            ["a.txt", "b.txt", "Отчёт «Q3».pdf"]
        )  # fmt: skip
        summary = http.get("/files/summary", params={"prefix": "memory:files/Отчёты/"}).json()
        assert summary["file_count"] == 4 and summary["total_size"] == len(report) + 3 + len(data)

        copied = http.post(f"/files/{report_id}/copy", json={"folder": "copies"})
        assert copied.status_code == 201
        moved = http.post(
            f"/files/{copied.json()['file_id']}/copy",
            json={"folder": "moved", "delete_source": True},
        )
        assert moved.status_code == 201
        moved_id = moved.json()["file_id"]
        assert http.get(f"/files/{moved_id}/download").content == report
        assert http.get(f"/files/{copied.json()['file_id']}/info").status_code == 404

        zipped = http.post(
            "/files/download-zip", json=[{"file_id": report_id}, {"file_id": tus_id}]
        )
        with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
            assert archive.read("Отчёт «Q3».pdf") == report
            assert archive.read("resumable.bin") == data
        folder_zip = http.get("/files/download-zip", params={"prefix": "memory:files/Отчёты/"})
        with zipfile.ZipFile(io.BytesIO(folder_zip.content)) as archive:
            assert len(archive.namelist()) == 4

        link = http.post(f"/files/{report_id}/link", json={"expires_in": 60}).json()
        assert httpx.get(link["url"]).content == report

        assert http.delete(f"/files/{report_id}").status_code == 200
        assert http.get(f"/files/{report_id}/download").status_code == 404
        gone = http.post("/files/delete-prefix", json={"prefix": "memory:files/Отчёты/"})
        assert gone.json()["file_count"] == 3
        assert http.get("/files", params={"prefix": "memory:files/Отчёты/"}).json()["files"] == []
    assert not (tmp_path / "never-used").exists()  # nothing on disk
    assert memory_service.log_path is not None
    log = memory_service.log_path.read_text()
    assert "NOTHING SURVIVES A RESTART" in log and "Traceback" not in log


def test_over_memory_max_size_is_507_and_nothing_is_kept(memory_service: Service) -> None:
    with httpx.Client(base_url=memory_service.url) as http:
        kept = http.put("/files/upload/kept.bin", content=os.urandom(5 * MiB))
        assert kept.status_code == 201
        for attempt in (
            http.put("/files/upload/too-much.bin", content=os.urandom(4 * MiB)),
            http.post("/files/upload", files={"file": ("form.bin", os.urandom(4 * MiB))}),
            http.post(
                "/files/batch-upload",
                files=[
                    ("files", ("1.bin", os.urandom(2 * MiB))),
                    ("files", ("2.bin", b"x" * MiB * 2)),
                ],
            ),
        ):
            assert attempt.status_code == 507, attempt.text
            assert attempt.json()["code"] == "insufficient_storage"
            assert "MEMORY_MAX_SIZE" in attempt.json()["detail"]
        listed = http.get("/files", params={"prefix": "memory:files/", "delimiter": ""}).json()
        assert [f["file_name"] for f in listed["files"]] == ["kept.bin"]
        # tus: a PATCH that goes over keeps nothing of itself, and the upload can go on later
        created = http.post(
            "/files/tus",
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(4 * MiB),
                "Upload-Metadata": "filename dC5iaW4=",
            },
        )
        assert created.status_code == 201
        patch = http.patch(
            created.headers["location"],
            content=os.urandom(4 * MiB),
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patch.status_code == 507
        offset = http.head(created.headers["location"], headers={"Tus-Resumable": "1.0.0"})
        assert offset.headers["upload-offset"] == "0"
        assert http.delete(f"/files/{kept.json()['file_id']}").status_code == 200
        again = http.put("/files/upload/now-it-fits.bin", content=os.urandom(7 * MiB))
        assert again.status_code == 201
