"""The ``filegate`` command: check the settings, then serve with uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import logging.config
import os
import shutil
import sys
import tempfile

import uvicorn
from pydantic import ValidationError

from app.logs import log_config
from app.main import tune_malloc
from app.metrics import MULTIPROC_ENV
from app.preflight import Misconfigured, preflight
from app.settings import Settings, describe_errors


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isdigit():
        print(f"invalid setting {name}: {value!r} is not a whole number", file=sys.stderr)
        sys.exit(2)
    return int(value)


def main(argv: list[str] | None = None) -> None:
    tune_malloc()  # before any thread starts (workers call it again in create_app)
    parser = argparse.ArgumentParser(prog="filegate", description=__doc__)
    parser.add_argument(
        "--host",
        default=os.environ.get("FILEGATE_HOST", "127.0.0.1"),
        help="address to bind (FILEGATE_HOST, default 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_int("FILEGATE_PORT", 8000),
        help="port (FILEGATE_PORT, default 8000)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_env_int("FILEGATE_WORKERS", 1),
        help="worker processes (FILEGATE_WORKERS, default 1)",
    )
    parser.add_argument("--log-level", default=None, help="overrides LOG_LEVEL")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        print(describe_errors(exc), file=sys.stderr)
        sys.exit(2)
    logging_config = log_config(settings.log_format, args.log_level or settings.log_level)
    logging.config.dictConfig(logging_config)  # for the start-up checks; uvicorn applies it again
    try:
        asyncio.run(preflight(settings))
    except Misconfigured as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    if args.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Workers inherit it, so /metrics adds up all of them.
        directory = tempfile.mkdtemp(prefix="filegate-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=logging_config,
        access_log=False,  # one richer line per request comes from app.api.middleware
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        http="app.server:GuardedProtocol",  # header timeout and connection cap
    )


if __name__ == "__main__":
    main()
