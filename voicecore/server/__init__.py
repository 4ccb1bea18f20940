"""``voicecore serve``: the ASGI app, its call routes, the ``/v1`` admin API and the background workers.

- :mod:`~voicecore.server.app` — :func:`create_app`, :func:`running_server` (tests,
  benchmarks), :func:`serve` (uvicorn);
- :mod:`~voicecore.server.state` — what the routes share (:class:`ServerState`);
- :mod:`~voicecore.server.calls` — media streams, Twilio's voice webhook, WebRTC, health, metrics;
- :mod:`~voicecore.server.api` — the tenant admin API (models in :mod:`~voicecore.server.api_models`);
- :mod:`~voicecore.server.webhooks` — the outbox sender (signed webhooks);
- :mod:`~voicecore.server.metrics` — Prometheus text.
"""

from voicecore.server.app import create_app, running_server, serve
from voicecore.server.state import ServerState, load_pipelines

__all__ = ["ServerState", "create_app", "load_pipelines", "running_server", "serve"]
