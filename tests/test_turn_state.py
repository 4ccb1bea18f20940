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
