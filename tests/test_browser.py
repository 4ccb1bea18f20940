"""A call from the page at ``GET /`` in real headless Chromium, driven over the DevTools protocol.

Chromium (Debian's ``chromium`` package; nothing is downloaded) gets a fake microphone that
plays an espeak-ng WAV once (``--use-file-for-fake-audio-capture=caller.wav%noloop``). The
test opens the page with the tenant's API key in the URL hash, clicks "Call", waits for the
caller's words and an agent reply in the live transcript and a row in the latency table,
saves a screenshot to ``test-artifacts/browser-call.png``, clicks "Hang up" and checks the
call was stored with transport ``webrtc``.

The browser is driven with the Chrome DevTools Protocol over the ``websockets`` package (no
Playwright, so no browser download and no driver/browser version pairing to keep in step).
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
import time
import wave
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

pytestmark = [pytest.mark.models, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
WAV_RATE = 48000
LEAD_SILENCE_S = 6.0  # the greeting plays first (the file starts with getUserMedia, before the offer)
TAIL_SILENCE_S = 8.0
LAUNCH_TIMEOUT_S = 45
PAGE_TIMEOUT_S = 30
CALL_TIMEOUT_S = 120  # caller speech ends ~10 s in; STT + LLM + TTS on 2 busy cores
STORE_TIMEOUT_S = 30


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium is not installed: apt-get install chromium "
                    "(VOICECORE_BROWSER_TESTS=1 scripts/setup.sh installs it; .ci/run sets that)")
    return exe


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
    """A minimal Chrome DevTools Protocol client: commands with replies, events kept in a list."""

    def __init__(self, ws: Any):
        self.ws = ws
        self._next = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                fut = self._pending.pop(msg["id"], None) if "id" in msg else None
                if fut is not None:
                    if not fut.done():
                        fut.set_result(msg)
                elif "method" in msg:
                    self.events.append(msg)
        except Exception:  # noqa: BLE001 - connection gone: fail whatever waits below
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(CDPError("DevTools connection closed"))
            self._pending.clear()

    async def send(self, method: str, params: dict | None = None, *, session: str | None = None,
                   timeout: float = 30) -> dict[str, Any]:
        if self._reader.done():
            raise CDPError("DevTools connection closed")
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        await self.ws.send(json.dumps(msg))
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(msg["id"], None)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)


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
                lines.append(f"log.{entry.get('level')}: {entry.get('text')} {entry.get('url', '')}".rstrip())
        return lines

    def exceptions(self) -> list[str]:
        return [line for line in self.console() if line.startswith("EXCEPTION")]

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", {"format": "png"}, timeout=30)
        path.write_bytes(base64.b64decode(shot["data"]))


@contextlib.asynccontextmanager
async def chromium(exe: str, workdir: Path, caller_wav: Path):
    """Headless Chromium with a fake microphone playing ``caller_wav`` once; always killed at the end."""
    from websockets.asyncio.client import connect

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
        "--remote-debugging-port=0", "about:blank",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, start_new_session=True)
    cdp: CDP | None = None

    def log_tail() -> str:
        try:
            return log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"chromium exited with {proc.returncode} at start-up:\n{log_tail()}")
            lines = port_file.read_text().split() if port_file.exists() else []
            if len(lines) >= 2:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"chromium did not open its DevTools port within {LAUNCH_TIMEOUT_S} s:\n{log_tail()}")
            await asyncio.sleep(0.1)
        ws = await asyncio.wait_for(
            connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_size=None, ping_interval=None, open_timeout=20), 30
        )
        cdp = CDP(ws)
        cdp.log_tail = log_tail  # type: ignore[attr-defined]
        yield cdp
    finally:
        if cdp is not None:
            with contextlib.suppress(Exception):
                await cdp.send("Browser.close", timeout=5)
            await cdp.close()
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
        if t["role"] == "caller" and "caller" in t["cls"] and any(w in t["text"].lower() for w in ("saturday", "hours")):
            replies = [a for a in turns[i + 1:] if a["role"] == "agent" and "agent" in a["cls"] and a["text"]]
            rows = [r for r in snap["latency"] if r and r[-1].strip() not in ("", "—")]
            return bool(replies) and bool(rows)
    return False


async def test_browser_call_through_the_page(telephony_server, say, tmp_path):
    exe = _chromium()
    utterance = say("What are your opening hours on Saturday?")
    wav = tmp_path / "caller.wav"
    write_caller_wav(wav, utterance.samples, utterance.sample_rate)
    store, key = telephony_server.store, telephony_server.keys["acme"]
    before = {c.call_id for c in store.calls_list("acme", limit=10000)}
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser-call.png"
    shot.unlink(missing_ok=True)

    t0 = time.monotonic()
    async with chromium(exe, tmp_path, wav) as cdp:
        page = await open_page(cdp, f"{telephony_server.base_url}/#key={quote(key, safe='')}")

        async def snapshot() -> dict:
            try:
                return await page.js(SNAPSHOT_JS, timeout=10)
            except CDPError:  # mid-navigation
                return {"ready": "", "status": "", "key": False, "pipelines": [], "turns": [], "latency": [],
                        "hangupEnabled": False, "callEnabled": False}

        def context(snap: dict) -> str:
            return (f"\npage: {json.dumps(snap, indent=1)}\nconsole:\n" + "\n".join(page.console())
                    + f"\nchromium log tail:\n{cdp.log_tail()}")  # type: ignore[attr-defined]

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
        # let the reply's text settle (it is sent again as it grows), then keep the picture
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
            return [c for c in store.calls_list("acme", limit=10000) if c.call_id not in before]

        def finished(cs) -> bool:  # stored as ended, and the server let go of it
            return bool(cs) and all(c.ended_at is not None and c.call_id not in telephony_server.active_calls
                                    for c in cs)

        calls = await poll(stored, finished, STORE_TIMEOUT_S)
        assert len(calls) == 1 and finished(calls), f"stored: {calls}" + context(snap)
        call = calls[0]
        assert call.transport == "webrtc" and call.turn_count >= 3, call
        assert not page.exceptions(), "JS errors on the page" + context(snap)
    elapsed = time.monotonic() - t0
    assert shot.exists() and shot.stat().st_size > 10_000
    (ARTIFACTS / "browser-call.json").write_text(json.dumps({
        "call_id": call.call_id, "seconds": round(elapsed, 1), "reply_after_call_s": round(reply_after_s, 1),
        "turns": snap["turns"], "latency": snap["latency"],
    }, indent=1))
