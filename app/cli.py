"""The ``filegate`` command: check the settings, then serve with uvicorn."""

from __future__ import annotations

import argparse
import sys

import uvicorn
from pydantic import ValidationError

from app.settings import Settings, describe_errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="filegate", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    args = parser.parse_args(argv)
    try:
        Settings()
    except ValidationError as exc:
        print(describe_errors(exc), file=sys.stderr)
        sys.exit(2)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
