"""The OpenAPI document is what generated clients are built from."""

from __future__ import annotations

from typing import Any

import pytest

from app.settings import Settings
from tests.conftest import serve

OPERATIONS = {
    ("post", "/files/upload"): "upload_file",
    ("put", "/files/upload/{file_name}"): "upload_raw",
    ("post", "/files/batch-upload"): "batch_upload",
    ("get", "/files/{file_id}/download"): "download_file",
    ("delete", "/files/{file_id}"): "delete_file",
    ("get", "/files/{file_id}/info"): "get_file_info",
    ("post", "/files/download-zip"): "download_zip",
    ("post", "/files/{file_id}/link"): "create_link",
}


@pytest.fixture
async def spec(tmp_path: Any) -> dict[str, Any]:
    async with serve(Settings(_env_file=None, local_root=tmp_path)) as client:
        response = await client.get("/openapi.json")
        assert response.status_code == 200
        docs = await client.get("/docs")
        assert docs.status_code == 200
        document: dict[str, Any] = response.json()
        return document


def test_operation_ids_are_stable(spec: dict[str, Any]) -> None:
    found = {
        (method, path): op["operationId"]
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    for key, operation_id in OPERATIONS.items():
        assert found.get(key) == operation_id, key


def test_every_error_response_is_declared_with_its_schema(spec: dict[str, Any]) -> None:
    error_ref = "#/components/schemas/ErrorBody"
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) >= {"detail", "code"}
    expected = {
        "upload_file": {"400", "401", "403", "408", "413", "500", "503"},
        "upload_raw": {"400", "401", "403", "408", "413", "500", "503"},
        "batch_upload": {"400", "401", "403", "408", "413", "500", "503"},
        "download_file": {"400", "401", "403", "404", "416", "500", "503"},
        "get_file_info": {"400", "401", "403", "404", "500", "503"},
        "delete_file": {"400", "401", "403", "500", "503"},
        "download_zip": {"400", "401", "403", "404", "413", "500", "503"},
        "create_link": {"400", "401", "403", "404", "500", "503"},
    }
    for item in spec["paths"].values():
        for op in item.values():
            if op["operationId"] not in expected:
                continue
            errors = {s for s in op["responses"] if s >= "400"}
            assert errors == expected[op["operationId"]], op["operationId"]
            for status in errors:
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": error_ref}
            assert "422" not in op["responses"]


def test_the_key_schemes_are_declared_on_every_file_operation(spec: dict[str, Any]) -> None:
    """Generated clients send the key only where the document asks for it."""
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"]["type"] == "apiKey"
    assert (schemes["apiKey"]["in"], schemes["apiKey"]["name"]) == ("header", "X-API-Key")
    for path, item in spec["paths"].items():
        for method, op in item.items():
            security = op.get("security", [])
            if path.startswith("/files"):
                assert {"apiKey": []} in security and {"bearer": []} in security, (method, path)
            elif path in ("/healthz", "/readyz"):
                assert security == [], path


def test_upload_bodies_are_documented(spec: dict[str, Any]) -> None:
    def form(path: str) -> dict[str, Any]:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        schema: dict[str, Any] = body["schema"]
        return schema

    single = form("/files/upload")
    assert single["required"] == ["file"]
    assert single["properties"]["file"] == {"type": "string", "format": "binary"}
    assert set(single["properties"]) == {"file", "folder", "bucket", "metadata"}
    batch = form("/files/batch-upload")
    assert batch["properties"]["files"]["items"] == {"type": "string", "format": "binary"}
    raw = spec["paths"]["/files/upload/{file_name}"]["put"]["requestBody"]["content"]
    assert "application/octet-stream" in raw
    for schema in ("FileAttach", "FileInfo"):
        assert schema in spec["components"]["schemas"]


async def test_validation_errors_are_400_not_422(tmp_path: Any) -> None:
    async with serve(Settings(_env_file=None, local_root=tmp_path)) as client:
        response = await client.get("/files/local:files/x_y/download?inline=perhaps")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    assert "inline" in body["detail"]  # names the parameter that was wrong
