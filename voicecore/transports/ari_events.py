"""Asterisk's call progress for campaign calls: :class:`AriEventRelay`.

Asterisk posts no status callbacks: ARI delivers channel events only over its events WebSocket
(``GET {ari_url}/ari/events?app=<app>&subscribeAll=true``, HTTP Basic ``ari_user:ari_password``).
A campaign call is originated into a dialplan context, not into a Stasis application, so the
relay subscribes its application to all events (``subscribeAll``) and keeps the ones about a
channel whose id is one of our attempts (the dialer originates with ``channelId`` = the attempt
id, ``at…``): ``ChannelStateChange`` (Ring, Ringing, Up) and ``ChannelDestroyed`` /
``ChannelHangupRequest`` with the Q.850 ``cause``, read by
:func:`voicecore.telephony.dialing.parse_status_callback` and handed to the dialer's
``on_call_status`` exactly as a provider's signed status callback would be.

One socket per tenant with a running Asterisk campaign (:meth:`AriEventRelay.sync`, called by
the dialer's loop), reconnected with a growing delay when it drops or cannot open; kept
``linger_s`` after the tenant's last running Asterisk campaign stops (a paused campaign's calls
still ringing or talking end on it), then closed; all closed by :meth:`AriEventRelay.close`.
An event whose channel is an attempt of another tenant or provider is dropped (a tenant's
Asterisk speaks only for that tenant's calls). Nothing logged carries a credential or a number.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import aiohttp
from loguru import logger

from voicecore.storage import Store
from voicecore.telephony.dialing import (
    CallStatusEvent,
    IgnoredStatusEvent,
    parse_status_callback,
)

__all__ = ["AriEventRelay", "StatusHook", "ATTEMPT_PREFIX", "DEFAULT_LINGER_S"]

#: (tenant, provider, event) → None: the dialer's ``on_call_status``.
StatusHook = Callable[[str, str, CallStatusEvent], Awaitable[None]]
#: Attempt ids (``store.campaigns.begin_attempt``) start so; other channels are not ours.
ATTEMPT_PREFIX: Final = "at"
#: How long a tenant's socket stays open after its last running Asterisk campaign stopped.
DEFAULT_LINGER_S: Final = 900.0
PROVIDER: Final = "asterisk"
HEARTBEAT_S: Final = 30.0
MAX_EVENT_BYTES: Final = 1024 * 1024


def _app_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)[:80] or "voicecore"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _host(url: str) -> str:
    """The host part of ``url`` for logs (never the user info)."""
    return urlsplit(url).hostname or "?"


class _Watch:
    """One tenant's events socket: a task that connects, reads and reconnects."""

    def __init__(self, tenant: str, tenant_id: str):
        self.tenant = tenant
        self.tenant_id = tenant_id
        self.task: asyncio.Task[None] | None = None
        self.last_wanted = time.monotonic()
        self.connected = asyncio.Event()
        self.connections = 0  # sockets opened so far (tests: a reconnect shows)


class AriEventRelay:
    """Keeps an ARI events WebSocket open per tenant that runs Asterisk campaigns and relays the
    events about our attempts to ``on_status``."""

    def __init__(self, store: Store, on_status: StatusHook, *, app: str = "voicecore",
                 api_base: Callable[[], str | None] | None = None, linger_s: float = DEFAULT_LINGER_S,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0):  # fmt: skip
        self.store = store
        self.on_status = on_status
        self.app = _app_name(app)
        # another ARI host than the tenant's ari_url (VOICECORE_ASTERISK_API_BASE, as for originating)
        self.api_base = api_base or (lambda: None)
        self.linger_s = linger_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.watches: dict[str, _Watch] = {}
        self.relayed = 0  # events handed to on_status
        self._session: aiohttp.ClientSession | None = None

    # -- which tenants ---------------------------------------------------------------------

    async def sync(self, campaigns: Iterable[Any]) -> None:
        """Open a socket for each tenant with a running Asterisk campaign among ``campaigns`` (the
        running ones: ``store.campaigns.running()``); close those no longer wanted (after ``linger_s``)."""
        now = time.monotonic()
        wanted: set[str] = set()
        for c in campaigns:
            if c.provider != PROVIDER or c.status != "running":
                continue
            wanted.add(c.tenant)
            w = self.watches.get(c.tenant)
            if w is None:
                w = self.watches[c.tenant] = _Watch(c.tenant, c.tenant_id)
            w.last_wanted = now
            if w.task is None or w.task.done():
                w.task = asyncio.create_task(self._watch(w), name=f"ari-events-{c.tenant}")
        for tenant, w in list(self.watches.items()):
            if tenant not in wanted and now - w.last_wanted >= self.linger_s:
                del self.watches[tenant]
                await self._stop(w)
                logger.info(f"ari events: tenant {tenant} runs no Asterisk campaign: socket closed")

    async def ready(self, tenant: str, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) for ``tenant``'s socket to be open: a call originated before
        it is would ring and end unseen. False when it is not (the attempt then ends by the dialer's
        stale rule, unless the socket opens in time)."""
        w = self.watches.get(tenant)
        if w is None:
            return False
        try:
            await asyncio.wait_for(w.connected.wait(), timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            return False
        return True

    async def close(self) -> None:
        """Close every socket (the dialer stops)."""
        watches, self.watches = list(self.watches.values()), {}
        for w in watches:
            await self._stop(w)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    async def _stop(w: _Watch) -> None:
        if w.task is not None and not w.task.done():
            w.task.cancel()
            await asyncio.gather(w.task, return_exceptions=True)

    # -- one tenant's socket ---------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "voicecore-ari-events"})
        return self._session

    def _events_url(self, credentials: Mapping[str, str]) -> str | None:
        base = self.api_base() or credentials.get("ari_url")
        if not base:
            return None
        base = base.rstrip("/")
        if urlsplit(base).scheme not in ("http", "https", "ws", "wss"):
            return None
        return f"{base}/ari/events?{urlencode({'app': self.app, 'subscribeAll': 'true'})}"

    async def _watch(self, w: _Watch) -> None:
        delay = self.backoff_s
        while True:
            try:
                credentials = await asyncio.to_thread(self.store.providers.secrets, w.tenant, PROVIDER)
                url = self._events_url(credentials or {})
                user, password = (credentials or {}).get("ari_user"), (credentials or {}).get("ari_password")
                if url is None or not user or not password:
                    logger.warning(f"ari events: tenant {w.tenant} has no usable ari_url/ari_user/ari_password")
                else:
                    async with self._http().ws_connect(url, headers={"Authorization": _basic(user, password)},
                                                       heartbeat=HEARTBEAT_S, max_msg_size=MAX_EVENT_BYTES,
                                                       autoping=True) as ws:  # fmt: skip
                        w.connections += 1
                        w.connected.set()
                        delay = self.backoff_s  # connected: the next drop starts the backoff over
                        logger.info(f"ari events: tenant {w.tenant} subscribed at {_host(url)}")
                        await self._read(w, ws)
                    logger.warning(f"ari events: tenant {w.tenant}: {_host(url)} closed the socket")
            except asyncio.CancelledError:
                raise
            except aiohttp.WSServerHandshakeError as e:
                why = "refused the credentials" if e.status in (401, 403) else f"answered {e.status}"
                logger.warning(f"ari events: tenant {w.tenant}: Asterisk {why}")
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, TimeoutError) as e:
                logger.warning(f"ari events: tenant {w.tenant}: cannot connect ({type(e).__name__})")
            except Exception as e:  # a bug must not end the watch for good
                logger.error(f"ari events: tenant {w.tenant}: {type(e).__name__}: {e}")
            finally:
                w.connected.clear()
            await asyncio.sleep(delay)
            delay = min(self.max_backoff_s, delay * 2)

    async def _read(self, w: _Watch, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    return
                continue
            try:
                event = json.loads(msg.data)
            except ValueError:
                logger.debug(f"ari events: tenant {w.tenant}: an event that is not JSON")
                continue
            if isinstance(event, dict):
                try:
                    await self._relay(w, event)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    logger.error(f"ari events: tenant {w.tenant}: relaying an event failed: {type(e).__name__}: {e}")

    async def _relay(self, w: _Watch, event: dict[str, Any]) -> None:
        channel = event.get("channel")
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        if not isinstance(channel_id, str) or not channel_id.startswith(ATTEMPT_PREFIX):
            return  # not a channel we originated (every channel of the system comes by: subscribeAll)
        try:
            status = parse_status_callback(PROVIDER, event)
        except (IgnoredStatusEvent, ValueError):  # says nothing about the call's progress, or malformed
            return
        attempt = await asyncio.to_thread(self.store.campaigns.attempt, channel_id)
        if attempt is None or attempt["provider"] != PROVIDER or attempt["tenant_id"] != w.tenant_id:
            logger.debug(f"ari events: tenant {w.tenant}: channel {channel_id[:10]} is no attempt of this tenant")
            return
        self.relayed += 1
        await self.on_status(w.tenant, PROVIDER, status)

