"""Typed settings read from the environment (and ``.env``); an invalid value stops start-up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BeforeValidator,
    ByteSize,
    Field,
    PrivateAttr,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.access import KeySpec
from app.storage.ids import is_valid_bucket_name

CommaList = Annotated[list[str], NoDecode]
_KEY_LIST = TypeAdapter(list[KeySpec])
MIN_SECRET_LENGTH = 32
_PLACEHOLDERS = {"changeme", "change-me", "changethis", "secret", "example"}


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: object) -> object:
    """A duration: seconds, or a number with a unit (``300s``, ``5m``, ``1h``, ``1d``)."""
    if isinstance(value, str) and value.strip()[-1:].lower() in _UNITS:
        number = value.strip()[:-1].strip()
        try:
            return float(number) * _UNITS[value.strip()[-1].lower()]
        except ValueError:
            return value  # pydantic names the variable and the value
    return value


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting (docs/api.md, .env.example); field ``foo_bar`` is the variable ``FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # VAR= in .env means "the default", as .env.example shows
        extra="ignore",
        frozen=True,
    )

    storage_mode: Literal["local", "s3", "fastdfs", "hybrid", "memory"] = "local"
    local_root: Path = Path("./data")
    local_bucket: str = "files"
    local_enabled: bool = False
    memory_max_size: ByteSize = Field(default=ByteSize(256 * 1024**2), ge=0)
    memory_bucket: str = "files"

    cache_dir: Path | None = None
    cache_max_size: ByteSize = Field(default=ByteSize(1024**3), ge=1)
    cache_max_file_size: ByteSize = Field(default=ByteSize(8 * 1024**2), ge=1)
    cache_ttl: Annotated[float, BeforeValidator(_seconds)] = Field(default=300, gt=0)
    download_cache_control: str = "private, max-age=86400, immutable"

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
    s3_multipart_checksum: Literal["crc32", "none"] = "crc32"
    s3_copy_max_size: ByteSize = Field(
        default=ByteSize(5 * 1024**3), ge=5 * 1024**2, le=5 * 1024**3
    )  # larger objects are copied server-side in parts (docs/folders.md)

    fastdfs_tracker_servers: CommaList = Field(default_factory=list)
    fastdfs_groups: CommaList = Field(default_factory=list)
    fastdfs_connect_timeout: float = Field(default=3, gt=0)
    fastdfs_network_timeout: float = Field(default=30, gt=0)
    fastdfs_download_enabled: bool = True
    fastdfs_delete_enabled: bool = True

    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_seconds: float = Field(default=30, ge=0)
    shutdown_drain_seconds: float = Field(default=0, ge=0)

    zip_max_entries: int = Field(default=1000, gt=0)
    zip_max_total_size: ByteSize = ByteSize(0)

    max_file_size: ByteSize = ByteSize(0)
    file_whitelist: CommaList = Field(default_factory=list)
    file_blacklist: CommaList = Field(default_factory=list)

    backend_timeout: float = Field(default=10, gt=0)
    backend_idle_timeout: float = Field(default=30, gt=0)
    breaker_failures: int = Field(default=5, gt=0)
    breaker_backoff: float = Field(default=5, gt=0)

    client_header_timeout: float = Field(default=10, gt=0)
    max_connections: int = Field(default=4096, gt=0)
    max_request_line: ByteSize = Field(default=ByteSize(8 * 1024), ge=1024)
    max_header_size: ByteSize = Field(default=ByteSize(8 * 1024), ge=1024)
    max_headers_size: ByteSize = Field(default=ByteSize(64 * 1024), ge=4 * 1024)
    max_header_count: int = Field(default=100, ge=16)

    max_batch_files: int = Field(default=100, gt=0)
    upload_memory: ByteSize = ByteSize(64 * 1024 * 1024)
    upload_memory_wait: float = Field(default=30, gt=0)
    client_idle_timeout: float = Field(default=60, gt=0)

    tus_expires: float = Field(default=24 * 3600, gt=0)
    tus_sweep_interval: float = Field(default=600, gt=0)

    api_keys: Annotated[list[KeySpec], NoDecode] = Field(default_factory=list)
    api_keys_file: Path | None = None
    metrics_api_key: SecretStr | None = None
    signing_secret: SecretStr | None = None
    link_max_expires: int = Field(default=7 * 24 * 3600, gt=0)
    public_base_url: str | None = None
    cors_allow_origins: CommaList = Field(default_factory=list)
    cors_allow_credentials: bool = False
    console_enabled: bool = True

    _file_keys: list[KeySpec] = PrivateAttr(default_factory=list)

    _split = field_validator(
        "s3_buckets",
        "file_whitelist",
        "file_blacklist",
        "fastdfs_tracker_servers",
        "fastdfs_groups",
        "cors_allow_origins",
        mode="before",
    )(_split_commas)

    @field_validator("upload_memory")
    @classmethod
    def _room_for_parts(cls, value: ByteSize) -> ByteSize:
        if value < 32 * 1024 * 1024:
            raise ValueError("at least 32MiB: one S3 upload holds up to three 8 MiB parts")
        return value

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

    @field_validator("download_cache_control")
    @classmethod
    def _header_value(cls, value: str) -> str:
        if not value.isascii() or not value.isprintable():
            raise ValueError("a header value: printable ASCII only")
        return value

    @field_validator("local_bucket", "memory_bucket", "s3_default_bucket")
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

    @field_validator("signing_secret", "metrics_api_key")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < MIN_SECRET_LENGTH or secret.lower() in _PLACEHOLDERS:
            raise ValueError(
                f"use at least {MIN_SECRET_LENGTH} random characters "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_json(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not a JSON list of keys ({exc})") from None
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _readable_keys_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @field_validator("public_base_url", "s3_endpoint")
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
        if self.cors_allow_credentials and "*" in self.cors_allow_origins:
            raise ValueError("CORS_ALLOW_CREDENTIALS=true needs explicit CORS_ALLOW_ORIGINS, not *")
        if self.api_keys_file is not None:
            try:
                self._file_keys = _KEY_LIST.validate_json(self.api_keys_file.read_bytes())
            except (OSError, ValidationError) as exc:
                raise ValueError(f"API_KEYS_FILE {self.api_keys_file}: {exc}") from None
        key_names = [spec.name for spec in self.keys]
        if len(key_names) != len(set(key_names)):
            raise ValueError("API_KEYS / API_KEYS_FILE: key key_names must be unique")
        return self

    @property
    def keys(self) -> list[KeySpec]:
        """Every configured API key, from ``API_KEYS`` and ``API_KEYS_FILE``."""
        return [*self.api_keys, *self._file_keys]

    @property
    def allowed_s3_buckets(self) -> frozenset[str]:
        return frozenset(self.s3_buckets or [self.s3_default_bucket])


def reveal(secret: SecretStr | None) -> str | None:
    """The plain value of a secret setting, for the one place that hands it on."""
    return secret.get_secret_value() if secret is not None else None


def describe_errors(error: ValidationError) -> str:
    """One line per invalid setting, naming the environment variable."""
    lines = []
    for item in error.errors():
        if item["loc"]:
            lines.append(f"invalid setting {str(item['loc'][0]).upper()}: {item['msg']}")
        else:
            lines.append(f"invalid settings: {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
