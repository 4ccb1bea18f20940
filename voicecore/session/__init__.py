"""CallSession and open_call: the one road for every call (``serve``, WebRTC, ``run``, ``demo``, ``chat``).

A session owns the call's transport, tenant, pipeline and record. Transports
drive it through the :class:`~voicecore.transports.base.LiveCall` port: caller
audio in (``feed_audio``) or caller text (``send_text``, a text call), DTMF
(``dtmf``) and mark acknowledgements (``mark_played``); the session runs the
Pipecat pipeline, keeps the transcript with per-turn timelines, and at the end
hands the closed :class:`~voicecore.records.CallRecord` to whoever stores it.

:func:`open_call` is how every call starts. It loads the tenant's policy (no
tenant: the built-in :data:`DEFAULT_TENANT` with the privacy-first default
policy), refuses a pipeline the policy does not allow (before any model loads),
and wires the policy seams, each in one place:

- context: :class:`~voicecore.services.llm.PolicyContext` (caller text redacted
  once as it enters the conversation, history bounded by the policy, only the
  allow-listed contact fields): the only road into the LLM;
- recording: only when the policy allows it (``on``; ``consent`` after a spoken
  yes or the consent digit), streamed encrypted to disk by
  :class:`~voicecore.storage.recording.RecordingStream`;
- opt-out: a caller turn matching the policy's opt-out phrases puts the number on
  the tenant's do-not-call list (with its outbox event), flags the record, speaks
  the policy's confirmation and ends the call;
- a restricted caller hears a short notice, nothing is processed or stored;
- the record goes to ``store.calls.save`` (in a worker thread) at the end, and
  the post-call report's job is enqueued (``store.report_jobs``) and started on the given
  :class:`~voicecore.reports.ReportScheduler`.
"""

from voicecore.session.call import (
    CALL_ACTOR,
    CONSENT_GIVEN_REPLY,
    CONSENT_REFUSED_REPLY,
    DEFAULT_TENANT,
    RECORDING_TRACK,
    RESTRICTED_NOTICE,
    CallEnded,
    CallSession,
    system_prompt,
)
from voicecore.session.open import open_call, outbound_check
from voicecore.storage.recording import RecordingStream
from voicecore.transports.base import CallRefused

__all__ = [
    "CALL_ACTOR", "CONSENT_GIVEN_REPLY", "CONSENT_REFUSED_REPLY", "DEFAULT_TENANT", "RECORDING_TRACK",
    "RESTRICTED_NOTICE", "CallEnded", "CallRefused", "CallSession", "RecordingStream", "open_call", "outbound_check",
    "system_prompt",
]
