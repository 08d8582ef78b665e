"""``filegate-client`` in a real terminal: tmux runs a shell, ``send-keys`` types the commands and
Ctrl-C, ``capture-pane`` reads the screen (docs/client.md, "Output and errors").

The upload's progress bars must render (file and total, with bytes, rate and time left), Ctrl-C
must stop it at once with exit status 130 and a resumable tus upload on the service, and the same
command typed again must resume and finish byte-identical.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Service
from tests.test_client import client_command

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
# rich's DownloadColumn and TransferSpeedColumn: "12.6/268.4 MB", "45.2 MB/s"; the bar "━".
BAR = re.compile(r"━.*\d+(\.\d+)?/\d+(\.\d+)? [kMG]?B +\d+(\.\d+)? [kMG]?B/s +\d+:\d\d:\d\d")


def ended(marker: str) -> Callable[[str], bool]:
    """Whether the shell printed ``<marker>=<status>`` on a line of its own (the command line
    has ``$?`` instead). Each command echoes its own marker: after ``clear`` the screen may still
    show the last command's line for a moment."""
    return lambda screen: re.search(rf"^{marker}=\d+$", screen, re.MULTILINE) is not None


class Terminal:
    """A tmux session of its own (own server socket), 120 by 30, running bash."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.base = ["tmux", "-S", str(socket)]
        exports = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        subprocess.run(
            [*self.base, "new-session", "-d", "-x", "120", "-y", "30", *exports,
             "bash --norc --noprofile"],
            check=True,
        )  # fmt: skip
        self.type("PS1='$ '; clear")

    def type(self, line: str) -> None:
        subprocess.run([*self.base, "send-keys", "-l", line], check=True)
        subprocess.run([*self.base, "send-keys", "Enter"], check=True)

    def ctrl_c(self) -> None:
        subprocess.run([*self.base, "send-keys", "C-c"], check=True)

    def screen(self) -> str:
        done = subprocess.run(
            [*self.base, "capture-pane", "-p", "-J"], capture_output=True, text=True, check=True
        )
        return done.stdout

    def wait_for(self, check: Callable[[str], bool], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.05)
        raise AssertionError(f"the screen never showed it:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], check=False, capture_output=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[Service, Terminal]]:
    """filegate (local disk) as a process, and a terminal whose shell finds the client."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: .ci/run installs it (apt-get install tmux)")
    service = Service({"LOCAL_ROOT": str(tmp_path / "data")})
    service.start(tmp_path)
    env = {
        "FILEGATE_URL": service.url,
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PATH": f"{Path(client_command()).parent}:{os.environ['PATH']}",
        "TERM": "xterm-256color",
        "COLUMNS": "120",
    }
    try:
        terminal = Terminal(tmp_path / "tmux.sock", env)
        try:
            yield service, terminal
        finally:
            terminal.close()
    finally:
        service.stop()


def test_progress_bars_render_and_ctrl_c_resumes(
    terminal: tuple[Service, Terminal], tmp_path: Path
) -> None:
    service, shell = terminal
    source = tmp_path / "video.bin"
    source.write_bytes(os.urandom(256 * MiB))
    state = tmp_path / "cache" / "filegate-client" / "uploads.json"
    command = f"filegate-client upload {source} --chunk-size 1MiB; echo"

    def tus_offset() -> int:
        try:
            url = next(iter(json.loads(state.read_text()).values()))
        except (OSError, ValueError, StopIteration):
            return 0
        return int(httpx.head(url, headers=TUS).headers.get("upload-offset", 0))

    shell.type(f"{command} first=$?")
    # a bar for the file and one for the total, both moving, before anything is stored
    screen = shell.wait_for(
        lambda s: (
            sum(1 for line in s.splitlines() if BAR.search(line)) >= 2
            and "video.bin" in s
            and "total" in s
        )
    )
    print(f"\n--- the terminal during the upload ---\n{screen.rstrip()}\n---")
    deadline = time.monotonic() + 60
    while tus_offset() < 16 * MiB and time.monotonic() < deadline:
        time.sleep(0.02)
    shell.ctrl_c()
    screen = shell.wait_for(ended("first"), timeout=30)
    assert re.search(r"^first=130$", screen, re.MULTILINE), screen
    assert "interrupted: run the same command again to resume" in screen
    offset = tus_offset()
    assert 16 * MiB <= offset < source.stat().st_size, offset
    listing = httpx.get(f"{service.url}/files", params={"delimiter": ""}).json()
    assert listing["files"] == []  # nothing visible until the upload is complete

    shell.type(f"clear; {command} again=$?")
    screen = shell.wait_for(ended("again"))
    print(f"--- the same command again ---\n{screen.rstrip()}\n---")
    assert re.search(r"^again=0$", screen, re.MULTILINE), screen
    assert re.search(r"video\.bin: resuming at [\d,]+ of 268,435,456 bytes", screen), screen
    assert "268.4/268.4 MB" in screen  # both bars end full
    [stored] = httpx.get(f"{service.url}/files", params={"delimiter": ""}).json()["files"]
    assert stored["file_id"] in screen.replace("\n", "")
    body = httpx.get(f"{service.url}/files/{stored['file_id']}/download").content
    assert body == source.read_bytes()
    assert json.loads(state.read_text()) == {}


def test_no_bars_when_quiet_or_piped(terminal: tuple[Service, Terminal], tmp_path: Path) -> None:
    """On the same terminal, ``--quiet`` and a pipe print the id alone."""
    _, shell = terminal
    source = tmp_path / "small.bin"
    source.write_bytes(os.urandom(12 * MiB))
    shell.type(f"filegate-client upload {source} --quiet; echo quiet=$?")
    quiet = shell.wait_for(ended("quiet"))
    shell.type(f"clear; filegate-client upload {source} | cat; echo piped=$?")
    piped = shell.wait_for(ended("piped"))
    for screen, marker in ((quiet, "quiet"), (piped, "piped")):
        lines = [line.strip() for line in screen.splitlines() if line.strip()]
        assert not any("━" in line or "MB/s" in line for line in lines), screen
        end = lines.index(f"{marker}=0")
        assert re.fullmatch(r"local:files/[0-9a-f]{16}_small\.bin", lines[end - 1]), screen
