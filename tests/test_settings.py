"""Settings are read from the environment, typed, and refuse invalid values by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings, describe_errors


def problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    return describe_errors(caught.value)


def test_defaults_need_no_configuration() -> None:
    settings = Settings(_env_file=None)
    assert settings.storage_mode == "local"
    assert str(settings.local_root) == "data"
    assert settings.local_bucket == "files"
    assert settings.max_file_size == 0
    assert settings.allowed_s3_buckets == {"files"}


def test_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_FILE_SIZE", "100MB")
    monkeypatch.setenv("FILE_WHITELIST", "PDF, .png,jpg")
    monkeypatch.setenv("S3_BUCKETS", "files, archive")
    monkeypatch.setenv("S3_CREATE_BUCKET", "true")
    settings = Settings(_env_file=None)
    assert settings.max_file_size == 100_000_000
    assert settings.file_whitelist == ["pdf", "png", "jpg"]
    assert settings.allowed_s3_buckets == {"files", "archive"}
    assert settings.s3_create_bucket is True
    monkeypatch.setenv("MAX_FILE_SIZE", "2GiB")
    assert Settings(_env_file=None).max_file_size == 2 * 1024**3


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MAX_FILE_SIZE": "big"}, "MAX_FILE_SIZE"),
        ({"STORAGE_MODE": "cloud"}, "STORAGE_MODE"),
        ({"S3_ENDPOINT": "127.0.0.1:9000"}, "S3_ENDPOINT"),
        ({"S3_BUCKETS": "ok-bucket,UPPER"}, "S3_BUCKETS"),
        ({"S3_ACCESS_KEY_ID": "only-the-id"}, "S3_SECRET_ACCESS_KEY"),
        ({"S3_READ_SECRET_ACCESS_KEY": "only-the-secret"}, "S3_READ_ACCESS_KEY_ID"),
        ({"S3_BUCKETS": "one,two", "S3_DEFAULT_BUCKET": "three"}, "S3_DEFAULT_BUCKET"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    assert named in problems(monkeypatch, **env)


def test_secrets_are_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "very-secret")
    assert "very-secret" not in repr(Settings(_env_file=None))


def test_the_env_example_is_a_valid_configuration() -> None:
    """README: copy .env.example to .env. Every variable in it is one filegate reads (or the
    filegate command's, or compose's), and empty ones mean the default."""
    example = Path(__file__).parent.parent / ".env.example"
    settings = Settings(_env_file=example)
    assert settings.keys == [] and settings.signing_secret is None
    assert settings.cors_allow_origins == [] and settings.client_idle_timeout == 60
    names = [
        line.split("=", 1)[0]
        for line in example.read_text().splitlines()
        if line and not line.startswith("#")
    ]
    fields = {name.upper() for name in Settings.model_fields}
    unknown = [n for n in names if n not in fields and not n.startswith(("FILEGATE_", "MINIO_"))]
    assert unknown == []
    assert fields - set(names) == set()  # and every setting is explained there
