"""Typed settings read from the environment (and ``.env``); an invalid value stops start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.storage.ids import is_valid_bucket_name

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting of API.md; field ``foo_bar`` is the variable ``FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    storage_mode: Literal["local", "s3", "fastdfs", "hybrid"] = "local"
    local_root: Path = Path("./data")
    local_bucket: str = "files"

    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_read_access_key_id: str | None = None
    s3_read_secret_access_key: SecretStr | None = None
    s3_default_bucket: str = "files"
    s3_buckets: CommaList = Field(default_factory=list)
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_create_bucket: bool = False

    fastdfs_tracker_servers: CommaList = Field(default_factory=list)
    fastdfs_connect_timeout: float = Field(default=3, gt=0)
    fastdfs_network_timeout: float = Field(default=30, gt=0)
    fastdfs_download_enabled: bool = True
    fastdfs_delete_enabled: bool = True

    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_seconds: float = Field(default=30, ge=0)

    zip_max_entries: int = Field(default=1000, gt=0)
    zip_max_total_size: ByteSize = ByteSize(0)

    max_file_size: ByteSize = ByteSize(0)
    file_whitelist: CommaList = Field(default_factory=list)
    file_blacklist: CommaList = Field(default_factory=list)

    _split = field_validator(
        "s3_buckets", "file_whitelist", "file_blacklist", "fastdfs_tracker_servers", mode="before"
    )(_split_commas)

    @field_validator("fastdfs_tracker_servers")
    @classmethod
    def _trackers(cls, value: list[str]) -> list[str]:
        for server in value:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("file_whitelist", "file_blacklist")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        return [ext.lower().removeprefix(".") for ext in value]

    @field_validator("local_bucket", "s3_default_bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not is_valid_bucket_name(value):
            raise ValueError(f"{value!r} is not a valid bucket name")
        return value

    @field_validator("s3_buckets")
    @classmethod
    def _bucket_names(cls, value: list[str]) -> list[str]:
        for name in value:
            cls._bucket_name(name)
        return value

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value or None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for key, secret, names in (
            (
                self.s3_access_key_id,
                self.s3_secret_access_key,
                "S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY",
            ),
            (
                self.s3_read_access_key_id,
                self.s3_read_secret_access_key,
                "S3_READ_ACCESS_KEY_ID/S3_READ_SECRET_ACCESS_KEY",
            ),
        ):
            if bool(key) != bool(secret):
                raise ValueError(f"{names}: set both or neither")
        if self.s3_buckets and self.s3_default_bucket not in self.s3_buckets:
            raise ValueError("S3_DEFAULT_BUCKET must be one of S3_BUCKETS")
        if self.storage_mode in ("fastdfs", "hybrid") and not self.fastdfs_tracker_servers:
            raise ValueError(
                f"FASTDFS_TRACKER_SERVERS is required when STORAGE_MODE={self.storage_mode}"
            )
        return self

    @property
    def allowed_s3_buckets(self) -> frozenset[str]:
        return frozenset(self.s3_buckets or [self.s3_default_bucket])


def describe_errors(error: ValidationError) -> str:
    """One line per invalid setting, naming the environment variable."""
    lines = []
    for item in error.errors():
        if item["loc"]:
            lines.append(f"invalid setting {str(item['loc'][0]).upper()}: {item['msg']}")
        else:
            lines.append(f"invalid settings: {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
