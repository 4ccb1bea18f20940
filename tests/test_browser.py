"""A call from the page at ``GET /`` in real headless Chromium, driven over the DevTools protocol.

Chromium (Debian's ``chromium`` package; nothing is downloaded) gets a fake microphone that
plays an espeak-ng WAV once (``--use-file-for-fake-audio-capture=caller.wav%noloop``). The
test opens the page with the tenant's API key in the URL hash, clicks "Call", waits for the
caller's words and an agent reply in the live transcript and a row in the latency table,
saves a screenshot to ``test-artifacts/browser-call.png``, clicks "Hang up" and checks the
call was stored with transport ``webrtc``.

The browser is driven with the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (no
Playwright: no browser download, no driver/browser versions to keep in step, no TCP port).
Chromium shuts itself down when the pipe closes, so it goes away even if pytest is killed.

``VOICECORE_BROWSER_TESTS=1`` (CI, ``.ci/run``) asks for this test: then anything it needs that
is missing (``chromium``, ``espeak-ng``, ``soxr``) fails it, naming what is missing. Without it,
a machine without them skips the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

BROWSER_TESTS_ENV = "VOICECORE_BROWSER_TESTS"

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
WAV_RATE = 48000
LEAD_SILENCE_S = 6.0  # the greeting plays first (the file starts with getUserMedia, before the offer)
TAIL_SILENCE_S = 8.0
LAUNCH_TIMEOUT_S = 45
PAGE_TIMEOUT_S = 30
CALL_TIMEOUT_S = 120  # caller speech ends ~10 s in; STT + LLM + TTS on 2 busy cores
STORE_TIMEOUT_S = 30


def browser_tests_asked_for() -> bool:
    return os.environ.get(BROWSER_TESTS_ENV, "").strip() == "1"


def missing_requirements() -> list[str]:
    """What the browser test needs that this machine lacks."""
    import importlib.util

    missing = []
    if shutil.which("chromium") is None:
        missing.append("chromium (apt-get install chromium)")
    if shutil.which("espeak-ng") is None:
        missing.append("espeak-ng (apt-get install espeak-ng)")
    if importlib.util.find_spec("soxr") is None:
        missing.append("the soxr Python package (pip install -e '.[dev]')")
    return missing


def _chromium() -> str:
    """Chromium's path. When something the test needs is missing: a failure if
    VOICECORE_BROWSER_TESTS=1 asked for the browser test (CI must not go green without it), a
    skip otherwise."""
    missing = missing_requirements()
    if missing:
        what = "; ".join(missing)
        if browser_tests_asked_for():
            pytest.fail(f"{BROWSER_TESTS_ENV}=1 asks for the browser test, but this machine lacks: {what} "
                        "(scripts/setup.sh installs them when VOICECORE_BROWSER_TESTS=1)", pytrace=False)
        pytest.skip(f"browser test skipped, missing: {what} "
                    f"(set {BROWSER_TESTS_ENV}=1 and run scripts/setup.sh to install them; .ci/run does)")
    return shutil.which("chromium")  # type: ignore[return-value]


@pytest.fixture
def chromium_exe() -> str:
    """Checked before the server and the caller's voice are set up: a missing browser is said at once."""
    return _chromium()


def browser_tenant(store) -> tuple[str, str]:
    """A tenant of its own on the shared server: acme's policy without post-call reports.

    A report is minutes of background LLM work on 2 busy cores; it would slow the tests that
    follow and hold up the session server's shutdown, and this test is about the page.
    """
    import uuid

    import yaml

    policy = yaml.safe_load(store.tenants.policy_yaml("acme"))
    policy["retention"]["reports"] = 0
    name = f"browser-{uuid.uuid4().hex[:8]}"
    return name, store.tenants.create(name, policy_yaml=yaml.safe_dump(policy), actor="test")


def write_caller_wav(path: Path, samples: np.ndarray, rate: int) -> float:
    """Silence, the utterance, silence: 48 kHz 16-bit mono. Returns the file's length in seconds."""
    import soxr

    speech = soxr.resample(samples.astype(np.float32) / 32768, rate, WAV_RATE)
    speech = (np.clip(speech, -1, 1) * 32767).astype(np.int16)
    audio = np.concatenate([
        np.zeros(int(LEAD_SILENCE_S * WAV_RATE), np.int16), speech, np.zeros(int(TAIL_SILENCE_S * WAV_RATE), np.int16),
    ])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(WAV_RATE)
        w.writeframes(audio.tobytes())
    return audio.size / WAV_RATE


# --------------------------------------------------------------------------- DevTools protocol


class CDPError(RuntimeError):
    pass


class CDP:
    """A minimal Chrome DevTools Protocol client over Chromium's debugging pipe (NUL-separated JSON):
    commands with replies, events kept in a list."""

    def __init__(self, write: Any):
        self._write = write  # an asyncio write-pipe transport (fd 3 of the browser)
        self._next = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self.log_tail = lambda: ""

    def on_message(self, raw: bytes) -> None:
        msg = json.loads(raw)
        fut = self._pending.pop(msg["id"], None) if "id" in msg else None
        if fut is not None:
            if not fut.done():
                fut.set_result(msg)
        elif "method" in msg:
            self.events.append(msg)

    def on_closed(self) -> None:
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CDPError("the browser closed its DevTools pipe"))
        self._pending.clear()

    async def send(self, method: str, params: dict | None = None, *, session: str | None = None,
                   timeout: float = 30) -> dict[str, Any]:
        if self.closed:
            raise CDPError("the browser closed its DevTools pipe")
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        self._write.write(json.dumps(msg).encode() + b"\0")
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise CDPError(f"{method}: no answer from the browser within {timeout} s") from None
        finally:
            self._pending.pop(msg["id"], None)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})


class _PipeReader(asyncio.Protocol):
    def __init__(self, cdp: CDP):
        self.cdp = cdp
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\0")) >= 0:
            raw = bytes(self.buf[:end])
            del self.buf[: end + 1]
            self.cdp.on_message(raw)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cdp.on_closed()


class Page:
    """One tab: JavaScript evaluation, real mouse clicks, console capture, screenshots."""

    def __init__(self, cdp: CDP, session: str):
        self.cdp = cdp
        self.session = session

    async def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict[str, Any]:
        return await self.cdp.send(method, params, session=self.session, timeout=timeout)

    async def js(self, expression: str, timeout: float = 30) -> Any:
        r = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                 "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in r:
            raise CDPError(f"JS error in {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def click(self, selector: str) -> None:
        """A real mouse click (a user gesture, as a person would give) at the element's centre."""
        box = await self.js(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return null;
            el.scrollIntoView({{block: "center"}});
            const r = el.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2, disabled: !!el.disabled}};
        }})()""")
        assert box is not None, f"no element {selector}"
        assert not box["disabled"], f"{selector} is disabled"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"],
                                                         "button": "left", "clickCount": 1})

    def console(self) -> list[str]:
        """Console messages, uncaught exceptions and browser log entries of this tab, as text."""
        lines = []
        for e in self.cdp.events:
            if e.get("sessionId") != self.session:
                continue
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled":
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                lines.append(f"console.{p.get('type')}: {args}")
            elif e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                lines.append(f"EXCEPTION: {d.get('exception', {}).get('description') or d.get('text')}")
            elif e["method"] == "Log.entryAdded":
                entry = p.get("entry", {})
                url = entry.get("url", "").split("#")[0]  # the page's URL hash holds the API key
                lines.append(f"log.{entry.get('level')}: {entry.get('text')} {url}".rstrip())
        return lines

    def exceptions(self) -> list[str]:
        return [line for line in self.console() if line.startswith("EXCEPTION")]

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", {"format": "png"}, timeout=30)
        path.write_bytes(base64.b64decode(shot["data"]))

    async def snapshot(self) -> dict[str, Any]:
        """What the call page shows (see SNAPSHOT_JS); an empty page while it is navigating."""
        try:
            return await self.js(SNAPSHOT_JS, timeout=10)
        except CDPError:
            return {"ready": "", "status": "", "key": False, "pipelines": [], "turns": [], "latency": [],
                    "hangupEnabled": False, "callEnabled": False}

    def context(self, snap: dict[str, Any]) -> str:
        """For assertion messages: the page's state, its console and the browser's log."""
        return (f"\npage: {json.dumps(snap, indent=1)}\nconsole:\n" + "\n".join(self.console())
                + f"\nchromium log tail:\n{self.cdp.log_tail()}")


# Put the pipe ends on fds 3 and 4 (where --remote-debugging-pipe expects them), then exec.
_FDS_3_4 = (
    "import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); os.dup2(w, 4); "
    "os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])"
)


def _high_fd(fd: int) -> int:
    """``fd`` moved to a number above 9 (so that putting the other one on 3 or 4 cannot clobber it)."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


@contextlib.asynccontextmanager
async def chromium(exe: str, workdir: Path, caller_wav: Path):
    """Headless Chromium with a fake microphone playing ``caller_wav`` once, driven over its
    DevTools pipe (fd 3: commands in, fd 4: replies and events out); always gone at the end."""
    profile = workdir / "profile"
    profile.mkdir()
    log = workdir / "chromium.log"
    assert "%" not in str(caller_wav)  # Chromium splits the switch value at '%'
    args = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage",  # CI containers often have a tiny /dev/shm
        "--disable-default-apps", "--disable-extensions", "--mute-audio",
        "--autoplay-policy=no-user-gesture-required", "--window-size=1000,1000",
        f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={caller_wav}%noloop",
        "--remote-debugging-pipe", "about:blank",
    ]
    cmd_r, cmd_w = (_high_fd(fd) for fd in os.pipe())  # we write commands, the browser reads fd 3
    out_r, out_w = (_high_fd(fd) for fd in os.pipe())  # the browser writes fd 4, we read
    try:
        with open(log, "wb") as logf:
            proc = subprocess.Popen([sys.executable, "-c", _FDS_3_4, str(cmd_r), str(out_w), *args],
                                    stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=workdir, pass_fds=(cmd_r, out_w),
                                    start_new_session=True)
    finally:
        os.close(cmd_r)
        os.close(out_w)
    loop = asyncio.get_running_loop()
    cdp = CDP(None)
    reader = writer = None

    def log_tail() -> str:
        try:
            return log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    cdp.log_tail = log_tail
    try:
        reader, _ = await loop.connect_read_pipe(lambda: _PipeReader(cdp), os.fdopen(out_r, "rb", buffering=0))
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(cmd_w, "wb", buffering=0))
        cdp._write = writer
        try:  # the first answer comes once the browser is up
            await cdp.send("Browser.getVersion", timeout=LAUNCH_TIMEOUT_S)
        except CDPError as e:
            pytest.fail(f"chromium did not start ({e}; exit code {proc.poll()}):\n{log_tail()}")
        yield cdp
    finally:
        if not cdp.closed and writer is not None:
            with contextlib.suppress(Exception):
                await cdp.send("Browser.close", timeout=5)
        for transport in (writer, reader):
            if transport is not None:
                transport.close()  # a closed pipe alone makes the browser quit
        for _ in range(50):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the browser's own group (start_new_session): its helpers too
        with contextlib.suppress(Exception):
            proc.kill()
        proc.wait(timeout=10)


async def open_page(cdp: CDP, url: str) -> Page:
    target = await cdp.send("Target.createTarget", {"url": "about:blank"})
    attached = await cdp.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
    page = Page(cdp, attached["sessionId"])
    for domain in ("Page", "Runtime", "Log"):
        await page.send(f"{domain}.enable")
    await page.send("Page.navigate", {"url": url})
    return page


async def poll(fetch, done, timeout: float, interval: float = 0.25):
    """Call ``fetch`` until ``done(value)``; returns the last value (check ``done`` again to assert)."""
    deadline = time.monotonic() + timeout
    value = await fetch()
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        value = await fetch()
    return value


SNAPSHOT_JS = """(() => ({
    ready: document.readyState,
    status: document.getElementById("status").textContent,
    key: document.getElementById("apikey").value.length > 0,
    pipelines: [...document.getElementById("pipeline").options].map((o) => o.value),
    turns: [...document.querySelectorAll("#transcript div.turn")].map((d) => ({
        role: d.dataset.role, cls: d.className,
        text: d.textContent.replace(/^(You|Agent):/, "").replace(/\\(cut short\\)$/, "").trim(),
    })),
    latency: [...document.querySelectorAll("#latency tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
    hangupEnabled: !document.getElementById("hangup").disabled,
    callEnabled: !document.getElementById("call").disabled,
}))()"""


def caller_then_reply(snap: dict) -> bool:
    """A caller turn with the question's words, then an agent turn with text, and a latency row."""
    turns = snap["turns"]
    for i, t in enumerate(turns):
        words = t["text"].lower()
        if t["role"] == "caller" and "caller" in t["cls"] and any(w in words for w in ("saturday", "hours", "opening")):
            replies = [a for a in turns[i + 1:] if a["role"] == "agent" and "agent" in a["cls"] and a["text"]]
            rows = [r for r in snap["latency"] if r and r[-1].strip() not in ("", "—")]
            return bool(replies) and bool(rows)
    return False


async def _place_call(page: Page, server, tenant: str, shot: Path):
    """Load, call, wait for the caller's words and a reply, screenshot, hang up, check the stored call."""
    store, snapshot, context = server.store, page.snapshot, page.context
    # the page loaded its config and picked the key up from the URL hash
    snap = await poll(snapshot, lambda s: s["ready"] == "complete" and s["key"] and s["pipelines"], PAGE_TIMEOUT_S)
    assert snap["key"] and "receptionist" in snap["pipelines"], "page did not load" + context(snap)

    await page.click("#call")
    clicked = time.monotonic()
    snap = await poll(snapshot, lambda s: s["hangupEnabled"] or s["status"].startswith("could not"), 30)
    assert snap["hangupEnabled"], "the call did not connect" + context(snap)

    snap = await poll(snapshot, caller_then_reply, CALL_TIMEOUT_S, interval=0.5)
    assert caller_then_reply(snap), f"no caller words + agent reply within {CALL_TIMEOUT_S} s" + context(snap)
    reply_after_s = time.monotonic() - clicked
    # let the transcript settle (a turn's text is sent again if it changes), then keep the picture
    last = None
    for _ in range(10):
        if snap["turns"] == last:
            break
        last = snap["turns"]
        await asyncio.sleep(1.0)
        snap = await snapshot()
    await page.screenshot(shot)
    assert snap["status"] == "in call", context(snap)

    await page.click("#hangup")
    snap = await poll(snapshot, lambda s: s["callEnabled"] and not s["hangupEnabled"], 10)
    assert "ended" in snap["status"] and snap["callEnabled"], context(snap)

    async def stored():
        return store.calls.list(tenant, actor="test")

    def finished(cs) -> bool:  # stored as ended, and the server let go of it
        return bool(cs) and all(c.ended_at is not None and c.call_id not in server.active_calls
                                for c in cs)

    calls = await poll(stored, finished, STORE_TIMEOUT_S)
    assert len(calls) == 1 and finished(calls), f"stored: {calls}" + context(snap)
    call = calls[0]
    assert call.transport == "webrtc" and call.turn_count >= 3, call
    full = store.calls.get(tenant, call.call_id, actor="test")
    assert any(t.role == "caller" and t.text and any(w in t.text.lower() for w in ("saturday", "hours", "opening"))
               for t in full.turns), full.turns
    return call, snap, reply_after_s


@pytest.mark.parametrize("asked", [True, False], ids=["asked-for", "not-asked-for"])
def test_a_missing_browser_fails_when_browser_tests_are_asked_for_and_skips_otherwise(
    asked: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No chromium on PATH: with VOICECORE_BROWSER_TESTS=1 the browser test fails, naming it; a
    skip there would let CI go green without the browser ever running."""
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no chromium, no espeak-ng
    if asked:
        monkeypatch.setenv(BROWSER_TESTS_ENV, "1")
    else:
        monkeypatch.delenv(BROWSER_TESTS_ENV, raising=False)
    with pytest.raises(BaseException) as outcome:  # a skip is an exception too: catch it to check it
        _chromium()
    expected = pytest.fail.Exception if asked else pytest.skip.Exception
    assert outcome.type is expected, f"{outcome.type.__name__} ({outcome.value}), expected {expected.__name__}"
    message = str(outcome.value)
    assert "chromium" in message and "espeak-ng" in message  # everything that is missing, by name
    if asked:
        assert message.startswith("VOICECORE_BROWSER_TESTS=1 asks for the browser test")


@pytest.mark.models
@pytest.mark.timeout(420)
async def test_browser_call_through_the_page(chromium_exe, telephony_server, say, tmp_path):
    exe = chromium_exe
    utterance = say("What are your opening hours on Saturday?")
    wav = tmp_path / "caller.wav"
    write_caller_wav(wav, utterance.samples, utterance.sample_rate)
    tenant, key = browser_tenant(telephony_server.store)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-call.png"
    for old in (shot, ARTIFACTS / "browser-call-failed.png"):
        old.unlink(missing_ok=True)

    t0 = time.monotonic()
    async with chromium(exe, tmp_path, wav) as cdp:
        page = await open_page(cdp, f"{telephony_server.base_url}/#key={quote(key, safe='')}")

        try:
            call, snap, reply_after_s = await _place_call(page, telephony_server, tenant, shot)
        except BaseException:
            with contextlib.suppress(Exception):  # what the page looked like, for the CI artifacts
                await page.screenshot(ARTIFACTS / "browser-call-failed.png")
            raise
        assert not page.exceptions(), "JS errors on the page" + page.context(snap)
    elapsed = time.monotonic() - t0
    assert shot.exists() and shot.stat().st_size > 10_000
    (ARTIFACTS / "browser-call.json").write_text(json.dumps({
        "call_id": call.call_id, "seconds": round(elapsed, 1), "reply_after_call_s": round(reply_after_s, 1),
        "turns": snap["turns"], "latency": snap["latency"],
    }, indent=1))
