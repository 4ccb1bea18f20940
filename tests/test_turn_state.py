"""End-of-turn bookkeeping in audio time (no models)."""

from pipecat.audio.vad.vad_analyzer import VADState

from voicecore.config import TurnTaking
from voicecore.services.vad import TurnEvent, TurnState

SR = 16000


def ms(x: float) -> int:
    return int(x * SR / 1000)


def test_speech_pause_then_silence_ends_the_turn():
    t = TurnState(TurnTaking(end_of_turn_silence_ms=500, smart_turn=False))
    assert t.on_vad(VADState.SPEAKING, ms(300), ms(300)) == [TurnEvent.SPEECH_STARTED]
    assert t.on_vad(VADState.SPEAKING, ms(1000), ms(1000)) == []
    assert t.on_vad(VADState.QUIET, ms(1200), ms(1000)) == [TurnEvent.PAUSE]
    assert t.on_vad(VADState.QUIET, ms(1400), ms(1000)) == []
    assert t.on_vad(VADState.QUIET, ms(1500), ms(1000)) == [TurnEvent.END_OF_TURN]
    assert not t.in_turn


def test_resumed_speech_keeps_the_turn_open():
    t = TurnState(TurnTaking(end_of_turn_silence_ms=500))
    t.on_vad(VADState.SPEAKING, ms(100), ms(100))
    assert t.on_vad(VADState.QUIET, ms(400), ms(250)) == [TurnEvent.PAUSE]
    assert t.on_vad(VADState.SPEAKING, ms(600), ms(600)) == [TurnEvent.SPEECH_RESUMED]
    assert t.on_vad(VADState.QUIET, ms(900), ms(750)) == [TurnEvent.PAUSE]
    # 500 ms after the *last* voiced audio, not after the first pause
    assert t.on_vad(VADState.QUIET, ms(1200), ms(750)) == []
    assert t.on_vad(VADState.QUIET, ms(1250), ms(750)) == [TurnEvent.END_OF_TURN]


def test_smart_turn_answer_for_an_old_pause_is_ignored():
    t = TurnState(TurnTaking(smart_turn_reads_transcript=False))
    t.on_vad(VADState.SPEAKING, ms(100), ms(100))
    t.on_vad(VADState.QUIET, ms(300), ms(150))
    old_pause = t.pause_id
    t.on_vad(VADState.SPEAKING, ms(400), ms(400))
    assert t.smart_turn_says_complete(old_pause) is False
    t.on_vad(VADState.QUIET, ms(700), ms(550))
    assert t.smart_turn_says_complete(t.pause_id) is True
    assert not t.in_turn


# -- semantic end of turn: the transcript at a pause ----------------------------------------------

import pytest  # noqa: E402

from voicecore.services.vad import transcript_looks_complete  # noqa: E402


@pytest.mark.parametrize("text", [
    "What are your opening hours?",
    "Can I come in on Friday afternoon at three?",
    "Yes.",
    "Thank you very much!",
    "I need to move my appointment from Monday to Wednesday, because I have to work Monday.",
    "Can I come at 3?",
])
def test_finished_sentences_look_complete(text):
    assert transcript_looks_complete(text)


@pytest.mark.parametrize("text", [
    "",
    "I would like to book",          # no closing punctuation
    "I would like to book...",       # trailing off
    "My name is John,",
    "I'd like to come in and.",      # continuation word
    "Can you tell me the.",
    "Um.",
    "My number is 415.",             # reading out digits: the next group may follow
    "It's 4 1 5, 5 5 5.",
])
def test_unfinished_text_does_not(text):
    assert not transcript_looks_complete(text)


def _paused_turn(**params) -> TurnState:
    t = TurnState(TurnTaking(end_of_turn_silence_ms=700, semantic_silence_ms=300, **params))
    t.on_vad(VADState.SPEAKING, ms(100), ms(100))
    assert t.on_vad(VADState.QUIET, ms(1140), ms(1000)) == [TurnEvent.PAUSE]
    return t


def test_a_finished_sentence_ends_the_turn_after_the_shorter_silence():
    t = _paused_turn()
    assert t.transcript_at_pause(t.pause_id, "What are your opening hours?", ms(1200)) == []
    assert t.on_vad(VADState.QUIET, ms(1280), ms(1000)) == []
    assert t.on_vad(VADState.QUIET, ms(1300), ms(1000)) == [TurnEvent.END_OF_TURN]
    assert t.end_reason == "semantic"


def test_a_transcript_arriving_after_the_silence_ends_the_turn_at_once():
    t = _paused_turn()
    t.on_vad(VADState.QUIET, ms(1400), ms(1000))
    assert t.transcript_at_pause(t.pause_id, "Yes, please.", ms(1400)) == [TurnEvent.END_OF_TURN]
    assert not t.in_turn


def test_an_unfinished_sentence_waits_for_the_full_silence():
    t = _paused_turn()
    assert t.transcript_at_pause(t.pause_id, "I would like to book a", ms(1200)) == []
    assert t.on_vad(VADState.QUIET, ms(1500), ms(1000)) == []
    assert t.on_vad(VADState.QUIET, ms(1700), ms(1000)) == [TurnEvent.END_OF_TURN]
    assert t.end_reason == "silence"


def test_a_transcript_for_an_old_pause_is_ignored():
    t = _paused_turn()
    old = t.pause_id
    t.on_vad(VADState.SPEAKING, ms(1200), ms(1200))
    assert t.transcript_at_pause(old, "What are your opening hours?", ms(1250)) == []
    t.on_vad(VADState.QUIET, ms(1500), ms(1360))
    # the new pause has no finished transcript yet: the full silence applies
    assert t.on_vad(VADState.QUIET, ms(1700), ms(1360)) == []
    assert t.on_vad(VADState.QUIET, ms(2060), ms(1360)) == [TurnEvent.END_OF_TURN]


def test_semantic_cue_can_be_switched_off():
    t = _paused_turn(semantic_end_of_turn=False)
    assert t.transcript_at_pause(t.pause_id, "What are your opening hours?", ms(1400)) == []
    assert t.on_vad(VADState.QUIET, ms(1500), ms(1000)) == []


# -- speech trailing off: the STT starts before the pause ----------------------------------------


def test_trailing_off_comes_before_the_pause_and_speech_again_takes_it_back():
    t = TurnState(TurnTaking(early_transcript_ms=80, pause_ms=140, end_of_turn_silence_ms=700))
    assert t.on_vad(VADState.SPEAKING, ms(300), ms(300)) == [TurnEvent.SPEECH_STARTED]
    assert t.on_vad(VADState.SPEAKING, ms(360), ms(300)) == []  # 60 ms without voice: not yet
    assert t.on_vad(VADState.SPEAKING, ms(380), ms(300)) == [TurnEvent.TRAILING]
    assert t.on_vad(VADState.SPEAKING, ms(400), ms(300)) == []  # once per stretch of silence
    assert t.on_vad(VADState.SPEAKING, ms(420), ms(420)) == [TurnEvent.TRAILING_RESUMED]
    assert t.on_vad(VADState.SPEAKING, ms(500), ms(420)) == [TurnEvent.TRAILING]
    assert t.on_vad(VADState.QUIET, ms(560), ms(420)) == [TurnEvent.PAUSE]  # the pause keeps that work
    assert t.on_vad(VADState.QUIET, ms(1120), ms(420)) == [TurnEvent.END_OF_TURN]


def test_no_trailing_off_when_switched_off_or_when_the_pause_comes_first():
    t = TurnState(TurnTaking(early_transcript_ms=None))
    t.on_vad(VADState.SPEAKING, ms(300), ms(300))
    assert t.on_vad(VADState.SPEAKING, ms(420), ms(300)) == []
    t = TurnState(TurnTaking(early_transcript_ms=200, pause_ms=140))
    t.on_vad(VADState.SPEAKING, ms(300), ms(300))
    assert t.on_vad(VADState.QUIET, ms(440), ms(300)) == [TurnEvent.PAUSE]
    assert t.on_vad(VADState.QUIET, ms(600), ms(300)) == []


# -- smart-turn reads the pause transcript ---------------------------------------------------------

from voicecore.services.vad import transcript_looks_unfinished  # noqa: E402


@pytest.mark.parametrize("text,unfinished", [
    ("Yes,", True),
    ("No, that is all", False),
    ("No,", True),
    ("I would like to book a", True),
    ("My number is 415 555", True),
    ("I'd like to come in and...", True),
    ("Hello", False),  # unpunctuated short answer: smart-turn may end it
    ("Yes, please.", False),
    ("What are your opening hours?", False),
    ("", False),
])  # fmt: skip
def test_what_reads_as_mid_thought(text, unfinished):
    assert transcript_looks_unfinished(text) is unfinished


def paused(params: TurnTaking) -> TurnState:
    t = TurnState(params)
    t.on_vad(VADState.SPEAKING, ms(100), ms(100))
    assert t.on_vad(VADState.QUIET, ms(700), ms(560)) == [TurnEvent.PAUSE]
    return t


def test_smart_turn_waits_for_the_pause_transcript_then_ends_the_turn():
    t = paused(TurnTaking())
    assert t.smart_turn_says_complete(t.pause_id) is False  # no transcript yet: the verdict waits
    assert t.in_turn
    assert t.transcript_at_pause(t.pause_id, "Hello there", ms(760)) == [TurnEvent.END_OF_TURN]
    assert not t.in_turn and t.end_reason == "smart-turn"


def test_smart_turn_ends_at_once_when_the_transcript_came_first():
    t = paused(TurnTaking())
    assert t.transcript_at_pause(t.pause_id, "Hello there", ms(720)) == []  # unpunctuated: no semantic end
    assert t.smart_turn_says_complete(t.pause_id) is True
    assert not t.in_turn and t.end_reason == "smart-turn"


@pytest.mark.parametrize("order", ["smart-turn first", "transcript first"])
def test_a_comma_at_the_pause_overrules_smart_turn(order):
    """espeak's "Yes, ‖ please.": smart-turn calls "Yes," finished; the comma says the caller goes on."""
    t = paused(TurnTaking(end_of_turn_silence_ms=700))
    if order == "smart-turn first":
        assert t.smart_turn_says_complete(t.pause_id) is False
        assert t.transcript_at_pause(t.pause_id, "Yes,", ms(760)) == []
    else:
        assert t.transcript_at_pause(t.pause_id, "Yes,", ms(720)) == []
        assert t.smart_turn_says_complete(t.pause_id) is False
    assert t.in_turn
    # the caller goes on: the same turn
    assert t.on_vad(VADState.SPEAKING, ms(900), ms(900)) == [TurnEvent.SPEECH_RESUMED]
    assert t.on_vad(VADState.QUIET, ms(1300), ms(1150)) == [TurnEvent.PAUSE]
    assert t.transcript_at_pause(t.pause_id, "Yes, please.", ms(1320)) == []
    assert t.smart_turn_says_complete(t.pause_id) is True


def test_a_comma_with_nothing_after_it_ends_on_silence():
    t = paused(TurnTaking(end_of_turn_silence_ms=700))
    t.transcript_at_pause(t.pause_id, "Yes,", ms(720))
    assert t.smart_turn_says_complete(t.pause_id) is False
    assert t.on_vad(VADState.QUIET, ms(1200), ms(560)) == []
    assert t.on_vad(VADState.QUIET, ms(1260), ms(560)) == [TurnEvent.END_OF_TURN]
    assert t.end_reason == "silence"


def test_a_transcript_for_an_older_pause_ends_nothing():
    t = paused(TurnTaking())
    old = t.pause_id
    assert t.smart_turn_says_complete(old) is False
    t.on_vad(VADState.SPEAKING, ms(800), ms(800))
    assert t.transcript_at_pause(old, "Hello.", ms(820)) == []
    assert t.in_turn


def test_without_reading_the_transcript_smart_turn_alone_decides():
    t = paused(TurnTaking(smart_turn_reads_transcript=False))
    assert t.smart_turn_says_complete(t.pause_id) is True
    t = paused(TurnTaking(smart_turn_reads_transcript=False))
    t.transcript_at_pause(t.pause_id, "Yes,", ms(720))
    assert t.smart_turn_says_complete(t.pause_id) is True


@pytest.mark.parametrize("order", ["smart-turn first", "transcript first"])
def test_one_word_at_a_pause_needs_more_silence_for_smart_turn(order):
    """espeak's "Yes, ‖ please." heard as "Yeah." at the comma: smart-turn's word ends the turn only
    after one_word_silence_ms (the 270 ms comma pause is shorter), so "please" is the same turn."""
    t = paused(TurnTaking(one_word_silence_ms=320))  # pause at 700 ms, speech ended at 560 ms
    if order == "smart-turn first":
        assert t.smart_turn_says_complete(t.pause_id) is False
        assert t.transcript_at_pause(t.pause_id, "Yeah.", ms(760)) == []
    else:
        assert t.transcript_at_pause(t.pause_id, "Yeah.", ms(720)) == []
        assert t.smart_turn_says_complete(t.pause_id) is False
    assert t.on_vad(VADState.QUIET, ms(860), ms(560)) == []  # 300 ms of silence
    assert t.on_vad(VADState.QUIET, ms(880), ms(560)) == [TurnEvent.END_OF_TURN]  # 320 ms
    assert t.end_reason == "smart-turn"


def test_one_word_then_more_speech_is_one_turn():
    t = paused(TurnTaking(one_word_silence_ms=320))
    t.transcript_at_pause(t.pause_id, "Yeah.", ms(720))
    assert t.smart_turn_says_complete(t.pause_id) is False
    assert t.on_vad(VADState.SPEAKING, ms(830), ms(830)) == [TurnEvent.SPEECH_RESUMED]  # "please"
    assert t.on_vad(VADState.QUIET, ms(1200), ms(1060)) == [TurnEvent.PAUSE]
    assert t.transcript_at_pause(t.pause_id, "Yes, please.", ms(1220)) == []
    assert t.smart_turn_says_complete(t.pause_id) is True


def test_one_word_ends_at_once_when_smart_turn_answers_after_the_silence():
    t = paused(TurnTaking(one_word_silence_ms=320))
    t.transcript_at_pause(t.pause_id, "No.", ms(720))
    t.on_vad(VADState.QUIET, ms(870), ms(560))  # 310 ms: not yet
    t.on_vad(VADState.QUIET, ms(890), ms(560))  # 330 ms: smart-turn has not answered, so no end
    assert t.in_turn
    assert t.smart_turn_says_complete(t.pause_id) is True
    assert t.end_reason == "smart-turn"


def test_one_word_without_smart_turn_waits_for_the_usual_silence():
    t = paused(TurnTaking(one_word_silence_ms=320, semantic_silence_ms=500))
    t.transcript_at_pause(t.pause_id, "Yeah.", ms(720))
    assert t.on_vad(VADState.QUIET, ms(1000), ms(560)) == []  # 440 ms: smart-turn never said complete
    assert t.on_vad(VADState.QUIET, ms(1060), ms(560)) == [TurnEvent.END_OF_TURN]
    assert t.end_reason == "semantic"


def test_nothing_ends_while_speech_may_be_starting_again():
    """Onset frames being counted (the detector's STARTING) hold the end of the turn: the caller's
    "please" after "Yes," is detected as speech 120 ms after it starts, too late otherwise."""
    t = paused(TurnTaking(end_of_turn_silence_ms=700, smart_turn=False))  # speech ended at 560 ms
    assert t.on_vad(VADState.STARTING, ms(1260), ms(560)) == []  # 700 ms of silence, but speech is starting
    assert t.in_turn
    assert t.on_vad(VADState.SPEAKING, ms(1380), ms(1380)) == [TurnEvent.SPEECH_RESUMED]
    # a start that came to nothing (a click): the turn ends at the next frame
    t = paused(TurnTaking(end_of_turn_silence_ms=700, smart_turn=False))
    assert t.on_vad(VADState.STARTING, ms(1260), ms(560)) == []
    assert t.on_vad(VADState.QUIET, ms(1280), ms(560)) == [TurnEvent.END_OF_TURN]
    # smart-turn's verdict waits the same way, and stands once the start came to nothing
    t = paused(TurnTaking())
    t.transcript_at_pause(t.pause_id, "Where is your office?", ms(720))
    t.on_vad(VADState.STARTING, ms(740), ms(560))
    assert t.smart_turn_says_complete(t.pause_id) is False
    assert t.on_vad(VADState.QUIET, ms(760), ms(560)) == [TurnEvent.END_OF_TURN]
    assert t.end_reason == "smart-turn"
