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
    t = TurnState(TurnTaking())
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
