"""Post-call reports: what the caller wanted, in a form the tenant can act on.

``generate_report`` runs after a call was stored. It reads the call's transcript
through the tenant policy (:meth:`ContextBuilder.transcript_for_summary`: caller
text redacted as the policy says; the model never sees more than that), asks the
local LLM about it, validates the answers with pydantic and stores the report
with the policy's ``retention.reports`` (and a ``report.ready`` outbox event in
the same transaction) through :meth:`Store.save_report`.

The report (``format: voicecore-report/1``)::

    {"format": "voicecore-report/1",
     "purpose": "book an appointment",                 # one of PURPOSES
     "contact": {"name": "Maria Lopez", "phone": "+14155552671", "email": null},
     "need": "I'd like to book a teeth cleaning.",    # the caller's own sentence
     "appointment": {"requested": "next Tuesday at ten", "slot": "2024-05-21T10:00:00",
                     "service": "cleaning", "status": "booked"},  # service/status: from the booking
     "optout_requested": false,
     "summary": "Maria Lopez called to book a teeth cleaning for next Tuesday at ten.",
     "summary_source": "model",                        # or "template" (below)
     "withheld": [],                                   # contact kinds the policy redacted
     "call_date": "2024-05-15", "model": "SmolLM2-135M-Instruct.Q4_1.gguf"}

How it stays truthful with a 135M-parameter model ("never invented"):

* What the call's tools recorded comes first (:mod:`~voicecore.reports.tools`): the ``tool``
  and ``message`` turns give the appointment (the slot as the calendar has it, service,
  status), the purpose (the tool the request reached), the need (a message taken) and the
  caller's name (given to a tool, unless the policy redacts names); the model is not asked
  those questions. The model's summary is checked (:mod:`~voicecore.reports.grounding`): a
  day, date, time, price, phone number or street address that neither the transcript nor a
  tool's result states rejects it, and the summary built from the tool records is stored
  instead (``summary_source: template``), as it is when the summary stays invalid after the
  retry while every other answer is valid.

* The model answers one question at a time (name, phone, e-mail, need, purpose,
  day, time, summary) in one multi-turn exchange after a worked example; every
  answer is JSON constrained by a JSON schema compiled to a llama.cpp grammar
  (``LlamaGrammar.from_json_schema``). The schemas only admit values that occur
  in the policy-filtered transcript: the name, phone, e-mail, need, day and time
  answers are an ``enum`` of candidates found there (or ``null``), the purpose an
  ``enum`` of the :data:`PURPOSES` the caller's words support (cue words; "stop
  calls" only when the opt-out matcher fired), and the summary a string whose
  ``pattern`` admits one or two sentences of words of the transcript plus a fixed
  list of function words, opening with the caller ("Maria Lopez called ...", "The
  caller asked ..."), with numbers and "at" only inside a time someone said: it
  cannot name a person, number, day or action that nobody mentioned. A question
  with no candidate is not asked (the answer is ``null``).
* Dates are Python's job: the model picks the caller's words ("next Tuesday",
  "at ten"); :func:`resolve_day` and :func:`resolve_time` turn them into a date
  and a time relative to the call's date. ``slot`` is an ISO 8601 date-time
  (wall-clock time at the tenant, no offset), an ISO date when no time was given,
  and ``null`` when no day was given.
* The opt-out flag comes from the policy's phrase matcher
  (:func:`voicecore.policy.optout_requested`) and the stored call's flag, never
  from the model.
* The assembled answers are validated (:class:`PostCallReport`, checked against
  the candidates again). A report that fails is generated once more (sampling
  instead of greedy decoding); if that fails too it is stored with status
  ``failed`` and the reason, and no field is filled in.

Scheduling: the model work runs on the engine's inference thread through
:meth:`LlamaEngine.complete_json` under its own KV-cache owner
(``report:<call id>``), so live calls' cached prompts are saved and restored
around it; the prompt is evaluated in small jobs so a live call's turn is not
queued behind a whole transcript. A :class:`ReportScheduler` (owned by the
server's state, or by a CLI run) runs one report per engine at a time; the
report's KV state is dropped afterwards. Store calls run in worker threads.

Many machines: a report is a job in the database (``store.report_jobs``, enqueued when
the call is stored, holding what the report is made from, encrypted), claimed row by row
by whichever worker runs :meth:`ReportScheduler.run` (``serve``) and deleted with the
report it produced, so a worker that stops leaves its reports to another
(:mod:`voicecore.storage.report_jobs`). A CLI run claims its own call's job and drains.

The package: :mod:`~voicecore.reports.transcript` (what the transcript offers,
dates and times), :mod:`~voicecore.reports.tools` (fields from the tool records),
:mod:`~voicecore.reports.grounding` (the summary check), :mod:`~voicecore.reports.answers`
(the report, the questions and their JSON schemas), :mod:`~voicecore.reports.generate`
(asking, validating, storing, scheduling).
"""

from voicecore.reports.answers import (
    PURPOSE_QUESTION,
    QUESTIONS,
    ModelAnswers,
    PostCallReport,
    ReportAppointment,
    ReportContact,
    answer_schema,
    example_messages,
)
from voicecore.reports.generate import (
    ReportEngine,
    ReportResult,
    ReportScheduler,
    ask_model,
    build_report,
    generate_report,
    pipeline_engines,
)
from voicecore.reports.grounding import summary_problems
from voicecore.reports.tools import ToolFacts, template_summary, tool_facts
from voicecore.reports.transcript import (
    PURPOSES,
    REPORT_ACTOR,
    REPORT_FORMAT,
    Candidates,
    Purpose,
    find_candidates,
    fit_transcript,
    resolve_day,
    resolve_slot,
    resolve_time,
)

__all__ = [
    "PURPOSES",
    "PURPOSE_QUESTION",
    "QUESTIONS",
    "REPORT_ACTOR",
    "REPORT_FORMAT",
    "Candidates",
    "ModelAnswers",
    "PostCallReport",
    "Purpose",
    "ReportAppointment",
    "ReportContact",
    "ReportEngine",
    "ReportResult",
    "ReportScheduler",
    "ToolFacts",
    "answer_schema",
    "ask_model",
    "build_report",
    "example_messages",
    "find_candidates",
    "fit_transcript",
    "generate_report",
    "pipeline_engines",
    "resolve_day",
    "resolve_slot",
    "resolve_time",
    "summary_problems",
    "template_summary",
    "tool_facts",
]
