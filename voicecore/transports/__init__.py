"""The I/O wing: everything that carries a call's audio (or text) in and out.

- :mod:`~voicecore.transports.base` — the :class:`~voicecore.transports.base.CallTransport`
  port, the :class:`~voicecore.transports.base.LiveCall` port a transport drives, and the
  paced :class:`~voicecore.transports.base.AgentAudioOutput` (the one place agent audio is
  cut into frames);
- :mod:`~voicecore.transports.telephony` — provider media WebSockets around the pure
  protocols of :mod:`voicecore.telephony`;
- :mod:`~voicecore.transports.webrtc` — browser calls through aiortc;
- :mod:`~voicecore.transports.file` — audio files and the terminal.
"""
