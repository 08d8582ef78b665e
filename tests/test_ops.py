"""Health, readiness, metrics, request ids, logs and graceful shutdown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

from app.settings import Settings
from tests.conftest import (
    created_bucket,
    fastdfs_settings,
    s3_settings,
    serve,
)
from tests.fdfs_emulator import FastDFS
from tests.servers import SeaweedFS, Service

MiB = 1024 * 1024


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        name_part, _, label_part = metric.partition("{")
        found = ",".join(sorted(label_part.rstrip("}").split(","))) if label_part else ""
        if name_part == name and found == wanted:
            return float(value)
    return 0.0


async def test_healthz_and_readyz_local(tmp_path: Path) -> None:
    async with serve(Settings(_env_file=None, local_root=tmp_path / "data")) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ok"
        assert body["backends"]["local"]["ok"] is True
        assert body["backends"]["local"]["latency_ms"] >= 0
        (tmp_path / "data").rename(tmp_path / "moved")
        (tmp_path / "data").write_bytes(b"")  # the root is now a file: nothing can be stored
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["backends"]["local"]["ok"] is False
        (tmp_path / "data").unlink()
        (tmp_path / "moved").rename(tmp_path / "data")
        assert (await client.get("/readyz")).status_code == 200


async def test_readiness_follows_s3_going_away_and_coming_back(
    private_seaweed: SeaweedFS,
) -> None:
    bucket = await created_bucket(private_seaweed.endpoint)
    async with serve(s3_settings(private_seaweed.endpoint, bucket)) as client:
        assert (await client.get("/readyz")).status_code == 200
        private_seaweed.stop()
        down = await client.get("/readyz")
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "unavailable"
        assert body["backends"]["s3"]["ok"] is False
        assert body["backends"]["s3"]["error"]
        assert (await client.get("/healthz")).status_code == 200  # alive, just not ready
        private_seaweed.start()
        assert (await client.get("/readyz")).status_code == 200  # no restart needed


async def test_readiness_checks_the_fastdfs_tracker_in_hybrid_mode(
    seaweed: SeaweedFS, fastdfs: FastDFS
) -> None:
    bucket = await created_bucket(seaweed.endpoint)
    settings = s3_settings(
        seaweed.endpoint, bucket, **fastdfs_settings(fastdfs, storage_mode="hybrid")
    )
    async with serve(settings) as client:
        ready = (await client.get("/readyz")).json()
        assert set(ready["backends"]) == {"s3", "fastdfs"}
        assert ready["status"] == "ok"
        fastdfs.run(fastdfs.tracker.stop())
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["backends"]["fastdfs"]["ok"] is False
        assert down.json()["backends"]["s3"]["ok"] is True
        fastdfs.run(fastdfs.tracker.start())
        assert (await client.get("/readyz")).status_code == 200


async def test_metrics_move_with_requests(tmp_path: Path) -> None:
    async with serve(Settings(_env_file=None, local_root=tmp_path / "data")) as client:
        before = (await client.get("/metrics")).text
        data = os.urandom(100_000)
        file_id = (await client.put("/files/upload/m.bin", content=data)).json()["file_id"]
        assert (await client.get(f"/files/{file_id}/download")).content == data
        await client.get("/files/local:files/0123456789abcdef_gone/info")
        after = (await client.get("/metrics")).text
    upload_route = "/files/upload/{file_name}"
    download_route = "/files/{file_id}/download"
    assert (
        sample(after, "filegate_requests_total", method="PUT", route=upload_route, status="201")
        == 1
    )
    assert sample(after, "filegate_received_bytes_total", route=upload_route) == len(data)
    assert sample(after, "filegate_sent_bytes_total", route=download_route) == len(data)
    info_route = "/files/{file_id}/info"
    assert sample(after, "filegate_requests_total", method="GET", route=info_route, status="404")
    # A missing file is the client's question, not a backend failure.
    assert "filegate_backend_errors_total{" not in after
    count = "filegate_request_duration_seconds_count"
    assert sample(after, count, method="GET", route=download_route) == 1
    assert sample(before, count, method="GET", route=download_route) == 0
    assert sample(after, "filegate_requests_in_flight") == 1  # the /metrics request itself


def test_metrics_add_up_across_workers(tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    service = Service(
        {"LOCAL_ROOT": str(tmp_path / "data"), "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    )
    service.start(tmp_path, "--workers", "2")
    try:
        time.sleep(2)  # both workers up
        for _ in range(40):  # a new connection each: the kernel spreads them over the workers
            httpx.get(f"{service.url}/healthz").raise_for_status()
        text = httpx.get(f"{service.url}/metrics").text
    finally:
        service.stop()
    writers = {p.stem.rsplit("_", 1)[-1] for p in shared.glob("counter_*.db")}
    assert len(writers) == 2  # both workers counted requests ...
    served = sample(text, "filegate_requests_total", method="GET", route="/healthz", status="200")
    assert served == 41  # ... and one scrape adds them all up (40 + the start-up probe)


def test_request_id_is_echoed_and_logged_as_json(tmp_path: Path) -> None:
    service = Service({"LOCAL_ROOT": str(tmp_path / "data"), "LOG_FORMAT": "json"})
    service.start(tmp_path, "--log-level", "info")
    try:
        given = httpx.get(f"{service.url}/healthz", headers={"X-Request-ID": "trace-42"})
        assert given.headers["x-request-id"] == "trace-42"
        made = httpx.get(f"{service.url}/files/local:files/0123456789abcdef_x/info")
        generated = made.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        unsafe = httpx.get(f"{service.url}/healthz", headers={"X-Request-ID": "bad id\tvalue"})
        assert unsafe.headers["x-request-id"] != "bad id\tvalue"
    finally:
        service.stop()
    assert service.log_path is not None
    lines = [json.loads(line) for line in service.log_path.read_text().splitlines() if line]
    requests = [line for line in lines if line["logger"] == "app.access"]
    first = next(line for line in requests if line["request_id"] == "trace-42")
    assert first["method"] == "GET"
    assert first["route"] == "/healthz"
    assert first["status"] == 200
    assert first["duration_ms"] >= 0
    assert first["bytes_out"] > 0
    missing = next(line for line in requests if line["request_id"] == generated)
    assert missing["status"] == 404
    assert missing["route"] == "/files/{file_id}/info"


async def test_backend_errors_are_logged_with_the_request_id_and_no_secret(
    private_seaweed: SeaweedFS, tmp_path: Path
) -> None:
    env = private_seaweed.service_env(await created_bucket(private_seaweed.endpoint))
    service = Service({**env, "LOG_FORMAT": "json"})
    service.start(tmp_path, "--log-level", "info")
    try:
        private_seaweed.stop()
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.get(
                f"{service.url}/files/s3:{env['S3_DEFAULT_BUCKET']}/0123456789abcdef_x/info",
                headers={"X-Request-ID": "s3-down-1"},
            )
        assert response.status_code == 503
    finally:
        service.stop()
    assert service.log_path is not None
    log = service.log_path.read_text()
    failures = [
        json.loads(line)
        for line in log.splitlines()
        if '"request_id": "s3-down-1"' in line and "failed on s3" in line
    ]
    assert failures and failures[0]["level"] == "warning"
    assert env["S3_SECRET_ACCESS_KEY"] not in log
    assert env["S3_READ_SECRET_ACCESS_KEY"] not in log


def test_sigterm_lets_a_running_download_finish(tmp_path: Path) -> None:
    service = Service({"LOCAL_ROOT": str(tmp_path / "data"), "SHUTDOWN_GRACE_SECONDS": "60"})
    service.start(tmp_path)
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(24 * MiB))
    file_id = service.upload(source, "slow.bin")
    out = tmp_path / "out.bin"
    download = subprocess.Popen(
        ["curl", "-sS", "-f", "--limit-rate", "8M", "-o", str(out),
         f"{service.url}/files/{file_id}/download"],
    )  # fmt: skip
    try:
        time.sleep(1)
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        refused = subprocess.run(
            ["curl", "-sS", "-f", f"{service.url}/healthz"], capture_output=True
        )
        assert refused.returncode != 0  # new requests are refused while draining
        assert download.wait(timeout=60) == 0
        assert out.read_bytes() == source.read_bytes()
        # uvicorn re-raises the signal once it has shut down cleanly
        assert service.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert service.log_path is not None
        assert "Application shutdown complete" in service.log_path.read_text()
    finally:
        download.kill()
        download.wait()
        service.stop()
