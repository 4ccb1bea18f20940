"""A Radicale CalDAV server for tests: started on 127.0.0.1 (htpasswd auth, storage in a temporary
directory), stopped afterwards. Used by the calendar, booking and call tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USER = "front-desk"
PASSWORD = "s3cret-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def radicale_server(root: Path, *, calendar: str | None = "Appointments") -> Iterator[str]:
    """Radicale with its collections under ``root``; its URL. ``calendar``: made at start."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "users").write_text(f"{USER}:{PASSWORD}\n")
    port = free_port()
    log = open(root / "radicale.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "radicale", "--server-hosts", f"127.0.0.1:{port}",
         "--storage-filesystem-folder", str(root / "collections"), "--auth-type", "htpasswd",
         "--auth-htpasswd-filename", str(root / "users"), "--auth-htpasswd-encryption", "plain",
         "--logging-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("radicale did not start: " + (root / "radicale.log").read_text()) from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        if calendar:
            make_calendar(url, calendar)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def make_calendar(url: str, name: str) -> None:
    import caldav

    caldav.DAVClient(url=url, username=USER, password=PASSWORD).principal().make_calendar(name=name)


def events(url: str, name: str) -> list:
    """The calendar's events as ``icalendar`` components (read with the caldav client, not the code
    under test)."""
    import caldav
    import icalendar

    cal = caldav.DAVClient(url=url, username=USER, password=PASSWORD).principal().calendar(name=name)
    out = []
    for obj in cal.events():
        out += icalendar.Calendar.from_ical(obj.data).walk("VEVENT")
    return out
