"""``filegate-client``: the command line for a filegate service (docs/client.md).

Errors are one line on stderr, ``error: <code>: <detail>``, with exit status 1; bad usage exits
with 2; Ctrl-C with 130 (an upload or download then resumes on the next run of the command).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from filegate_client.api import Api, Failure, Settings, failure_of, file_path
from filegate_client.download import download
from filegate_client.migrate import run_migration
from filegate_client.progress import Bars
from filegate_client.upload import Uploader, expand, upload_all
from filegate_client.workers import Cancel

MiB = 1024 * 1024
_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_SIZE = re.compile(r"^(\d+)(KiB|MiB|GiB|K|M|G)?$", re.IGNORECASE)

EXAMPLES = {
    "upload": """examples:
  filegate-client upload report.pdf
  filegate-client upload photos/ --folder trips --parallel 4   # photos/… keeps its folders
  filegate-client upload big.iso --json                          # resumes if cut: run it again""",
    "download": """examples:
  filegate-client download 'local:files/3f9c…_report.pdf'
  filegate-client download 's3:files/big.iso' -o /tmp/big.iso --connections 8
  filegate-client download --prefix s3:files/trips/ -o ./trips""",
    "ls": """examples:
  filegate-client ls                      # the root of the default bucket
  filegate-client ls s3:files/trips/ -r   # everything below, recursively""",
    "info": "example:\n  filegate-client info 'local:files/3f9c…_report.pdf'",
    "rm": """examples:
  filegate-client rm 'local:files/3f9c…_a.pdf' 'local:files/77aa…_b.pdf'
  filegate-client rm --prefix local:files/tmp/ --yes""",
    "link": "example:\n  filegate-client link 'local:files/3f9c…_report.pdf' --expires 2h",
    "zip": "example:\n  filegate-client zip 'local:files/3f9c…_a.pdf' 'local:files/77aa…_b.pdf' "
    "-o both.zip",
    "migrate": """examples:
  filegate-client migrate --ids ids.txt --folder legacy --concurrency 8 --delete-source
  mysql -N -e 'select file_id from attachments' | filegate-client migrate --ids - --dry-run
  (stopped? run the same command again: the journal ids.txt.journal says what is done)""",
    "cp": """examples:
  filegate-client cp 'group1/M00/00/05/fwAAAW….pdf' --to s3 --move   # a legacy file to S3
  filegate-client cp 'local:files/3f9c…_a.pdf' --folder archive""",
}


def _common(defaults: bool) -> argparse.ArgumentParser:
    """The flags every command takes, before or after its name. The sub-commands' copies have no
    defaults, so ``--url X ls`` keeps X (argparse lets a sub-parser's default overwrite it)."""
    common = argparse.ArgumentParser(add_help=False)
    unset: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    common.add_argument("--url", help="the service (FILEGATE_URL; default http://127.0.0.1:8000)",
                        **unset)  # fmt: skip
    common.add_argument("--api-key", help="an API key (FILEGATE_API_KEY)", **unset)
    common.add_argument("--json", action="store_true", help="print JSON (for scripts)", **unset)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars", **unset)
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common(defaults=False)
    parser = argparse.ArgumentParser(
        prog="filegate-client",
        description="Upload, download, list, copy and delete files on a filegate service.",
        parents=[_common(defaults=True)],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, epilog=EXAMPLES[name], parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    up = command("upload", "Upload files or directories (large files resumable).")
    up.add_argument("paths", nargs="+", metavar="PATH")
    up.add_argument("--folder", help="the folder to upload into")
    up.add_argument("--bucket", help="a bucket from the service's allowlist")
    up.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="metadata, repeatable")  # fmt: skip
    up.add_argument("--parallel", type=int, default=4, help="files at once (default 4)")
    up.add_argument("--chunk-size", type=_size, default=8 * MiB,
                    help="bytes per resumable PATCH (default 8MiB)")  # fmt: skip

    down = command("download", "Download a file (parallel, resumable, verified) or a folder.")
    down.add_argument("file_id", nargs="?", metavar="ID")
    down.add_argument("--prefix", help="download every file under this folder")
    down.add_argument("-o", "--output", help="a file (or with --prefix, a directory)")
    down.add_argument("--connections", type=int, default=4, help="ranged GETs at once (default 4)")

    ls = command("ls", "List files and folders.")
    ls.add_argument("prefix", nargs="?", metavar="PREFIX")
    ls.add_argument("-r", "--recursive", action="store_true", help="everything below")

    info = command("info", "Show what the service knows of a file.")
    info.add_argument("file_id", metavar="ID")

    rm = command("rm", "Delete files, or a folder.")
    rm.add_argument("file_ids", nargs="*", metavar="ID")
    rm.add_argument("--prefix", help="delete every file under this folder")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask")

    link = command("link", "Make a signed download link.")
    link.add_argument("file_id", metavar="ID")
    link.add_argument("--expires", type=_duration, default=3600, help="e.g. 30m, 2h, 7d")

    zipped = command("zip", "Download several files as one zip.")
    zipped.add_argument("file_ids", nargs="+", metavar="ID")
    zipped.add_argument("-o", "--output", required=True)

    cp = command("cp", "Copy a file, within or across backends (--move deletes the source).")
    cp.add_argument("file_id", metavar="ID")
    cp.add_argument("--to", choices=["s3", "local", "fastdfs"], help="default: where uploads go")
    cp.add_argument("--bucket")
    cp.add_argument("--folder")
    cp.add_argument("--name", help="a new file name")
    cp.add_argument("--move", action="store_true")

    mig = command("migrate", "Move FastDFS files to S3 in bulk; their old ids keep working.")
    mig.add_argument(
        "--ids", required=True, metavar="FILE", help="one FastDFS id per line; - for stdin"
    )
    mig.add_argument("--to", choices=["s3"], default="s3", help="where to (S3, hybrid mode)")
    mig.add_argument("--folder", help="the folder in S3 (default: none)")
    mig.add_argument("--bucket", help="default: S3_DEFAULT_BUCKET")
    mig.add_argument("--concurrency", type=int, default=4, help="ids at once (default 4)")
    mig.add_argument("--delete-source", action="store_true",
                     help="delete each FastDFS copy once its S3 copy is verified")  # fmt: skip
    mig.add_argument("--dry-run", action="store_true", help="check and count, move nothing")
    mig.add_argument("--journal", help="default: FILE.journal")
    mig.add_argument("--csv", help="old id → new id; default: FILE.csv")
    return parser


def _size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 8MiB")
    unit = (match.group(2) or "").upper()[:1]
    return int(match.group(1)) * {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}[unit]


def _duration(text: str) -> int:
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m or 2h")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _print(args: argparse.Namespace, value: Any, lines: list[str]) -> None:
    if args.json:
        print(json.dumps(value, indent=None if isinstance(value, list) else 2))
    else:
        for line in lines:
            print(line)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env(args.url, args.api_key)
    with Api(settings) as api:
        return COMMANDS[args.command](api, args)


def _upload(api: Api, args: argparse.Namespace) -> int:
    metadata = {}
    for pair in args.meta:
        key, sep, value = pair.partition("=")
        if not sep:
            raise Failure(f"--meta {pair!r}: use KEY=VALUE", "usage")
        metadata[key] = value
    items = expand(args.paths, args.folder)
    with Bars(quiet=args.quiet, total=sum(i.size for i in items), label="total") as bars:
        uploader = Uploader(
            api, bars, bucket=args.bucket, metadata=metadata, chunk_size=args.chunk_size,
            cancel=Cancel(),
        )  # fmt: skip
        results = upload_all(uploader, items, args.parallel)
    _print(args, results, [r["file_id"] for r in results])
    return 0


def _download(api: Api, args: argparse.Namespace) -> int:
    if (args.file_id is None) == (args.prefix is None):
        raise Failure("give an ID or --prefix", "usage")
    if args.prefix:
        return _download_prefix(api, args)
    info = api.info(args.file_id)
    target = Path(args.output or info["file_name"] or "download")
    if target.is_dir():
        target = target / info["file_name"]
    with Bars(quiet=args.quiet, total=int(info["file_size"]), label="total") as bars:
        result = download(api, bars, args.file_id, target, connections=args.connections)
    _print(args, result, [str(target)])
    return 0


def _download_prefix(api: Api, args: argparse.Namespace) -> int:
    base = Path(args.output or ".")
    prefix = args.prefix if args.prefix.endswith("/") else args.prefix + "/"
    folder = prefix.split("/", 1)[1] if "/" in prefix else ""
    files = [item for page, _ in api.walk(prefix, recursive=True) for item in page]
    results = []
    with Bars(quiet=args.quiet, total=sum(f["file_size"] for f in files), label="total") as bars:
        for item in files:
            key = item["file_id"].split("/", 1)[1]
            below = key[len(folder) :].rpartition("/")[0]
            target = base / below / item["file_name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            results.append(
                download(api, bars, item["file_id"], target, connections=args.connections)
            )
    _print(args, results, [r["path"] for r in results])
    return 0


def _ls(api: Api, args: argparse.Namespace) -> int:
    entries: list[dict[str, Any]] = []
    lines: list[str] = []
    for files, folders in api.walk(args.prefix, recursive=args.recursive):
        for folder in folders:
            entries.append({"folder": folder})
            lines.append(f"{'':>12}  {'':25}  {folder}")
        for item in files:
            entries.append(item)
            when = item["last_modify_time"][:19].replace("T", " ")
            lines.append(f"{item['file_size']:>12,}  {when:25}  {item['file_id']}")
    _print(args, entries, lines)
    return 0


def _info(api: Api, args: argparse.Namespace) -> int:
    info = api.info(args.file_id)
    _print(args, info, [f"{key}: {value}" for key, value in info.items()])
    return 0


def _rm(api: Api, args: argparse.Namespace) -> int:
    if bool(args.file_ids) == bool(args.prefix):
        raise Failure("give IDs or --prefix", "usage")
    if args.prefix:
        body = {"prefix": args.prefix, "dry_run": True}
        count = api.json("POST", "/files/delete-prefix", json=body)["file_count"]
        if not args.yes:
            if not sys.stdin.isatty():
                raise Failure(f"{count} files under {args.prefix}: add --yes to delete", "usage")
            answer = input(f"Delete {count} files under {args.prefix}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted", file=sys.stderr)
                return 1
        result = api.json("POST", "/files/delete-prefix", json={"prefix": args.prefix})
        _print(args, result, [f"deleted {result['file_count']} files under {args.prefix}"])
        return 0
    result = api.json("POST", "/files/batch-delete", json={"file_ids": args.file_ids})
    lines = [f"deleted {file_id}" for file_id in result["deleted"]]
    lines += [f"failed {e['file_id']}: {e['code']}: {e['detail']}" for e in result["errors"]]
    _print(args, result, lines)
    return 1 if result["errors"] else 0


def _link(api: Api, args: argparse.Namespace) -> int:
    body = {"expires_in": args.expires}
    result = api.json("POST", file_path(args.file_id, "/link"), json=body)
    _print(args, result, [result["url"]])
    return 0


def _zip(api: Api, args: argparse.Namespace) -> int:
    body = [{"file_id": file_id} for file_id in args.file_ids]
    target = Path(args.output)
    part = target.with_name(target.name + ".part")
    with api.http.stream("POST", "/files/download-zip", json=body) as response:
        if response.status_code >= 400:
            response.read()
            raise failure_of(response)
        with part.open("wb") as file:
            for chunk in response.iter_bytes(MiB):
                file.write(chunk)
    part.replace(target)
    _print(args, {"path": str(target), "size": target.stat().st_size}, [str(target)])
    return 0


def _cp(api: Api, args: argparse.Namespace) -> int:
    body = {
        "backend": args.to,
        "bucket": args.bucket,
        "folder": args.folder,
        "file_name": args.name,
        "delete_source": args.move,
    }
    result = api.json("POST", file_path(args.file_id, "/copy"), json=body)
    _print(args, result, [result["file_id"]])
    return 0


COMMANDS = {
    "upload": _upload,
    "download": _download,
    "ls": _ls,
    "info": _info,
    "rm": _rm,
    "link": _link,
    "zip": _zip,
    "cp": _cp,
    "migrate": run_migration,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except Failure as failure:
        print(f"error: {failure}", file=sys.stderr)
        return 2 if failure.code == "usage" else 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
