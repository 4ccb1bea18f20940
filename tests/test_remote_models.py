"""Models off the box (issue 12, item 4): a pipeline whose LLM is an OpenAI-compatible server.

The server is llama-cpp-python's own (``python -m llama_cpp.server``) on 127.0.0.1, serving the
default SmolLM2 GGUF, started here as a real process. Calls come over a real Twilio media stream
to a real ``serve`` app: a tenant whose policy allows EU processing talks to the agent through
it; a tenant whose policy allows local processing only is refused before any audio flows; a
server that is down gives the caller the spoken fallback and the call record names the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from voicecore.config import (
    ConfigError,
    LLMParams,
    LLMPreset,
    ModelRefs,
    PipelineConfig,
    STTPreset,
    TTSPreset,
)
from voicecore.model_pool import ModelPool, backend_info
from voicecore.policy import check_pipeline_location, load_policy_text
from voicecore.server import create_app, running_server
from voicecore.server.guard import AuthThrottle
from voicecore.services.llm_remote import RemoteLLMEngine
from voicecore.storage import Store
from voicecore.testing.callers import TwilioClient, rms, wait_stored_call
from voicecore.testing.inference import (
    LlamaCppServer,
    PiperHttpServer,
    WhisperServer,
    free_port,
)

EU_POLICY = "processing: {local_only: false, allowed_regions: [eu]}\n"


# --------------------------------------------------------------------------- configuration, no model


def test_a_remote_backend_declares_where_it_runs() -> None:
    eu = LLMPreset(endpoint="http://10.1.2.3:8080/v1", location="eu")
    assert eu.kind == "openai"
    info = backend_info("llm", eu)
    assert (info.is_local, info.region, info.endpoint) == (False, "eu", "http://10.1.2.3:8080/v1")
    # on this machine, nothing declared: local (the policy's local-only rule accepts it)
    assert backend_info("llm", LLMPreset(endpoint="http://127.0.0.1:8080/v1")).is_local
    # declared in a region, even on loopback: what it declares is what the policy checks
    assert not backend_info("llm", LLMPreset(endpoint="http://127.0.0.1:8080/v1", location="us")).is_local
    with pytest.raises(ConfigError, match="location local, but http://10.1.2.3:8080/v1 is not on this machine"):
        backend_info("llm", LLMPreset(endpoint="http://10.1.2.3:8080/v1", location="local"))


@pytest.mark.parametrize(("fields", "message"), [
    ({"location": "eu"}, "location is declared by remote backends only"),
    ({"kind": "openai"}, "kind openai needs an endpoint"),
    ({"endpoint": "ftp://host/v1"}, "endpoint"),
    ({"endpoint": "http://h/v1", "path": "/m.gguf"}, "either endpoint"),
    ({"endpoint": "http://h/v1", "kind": "llama-cpp"}, "kind openai"),
    ({"endpoint": "http://h/v1", "location": "Europe"}, "location"),
])  # fmt: skip
def test_bad_remote_backends_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipelineConfig(name="x", system_prompt="s", models={"llm": fields})


def test_the_location_rule_applies_to_remote_backends() -> None:
    cfg = PipelineConfig(name="x", system_prompt="s",
                         models={"llm": {"endpoint": "http://127.0.0.1:1/v1", "location": "eu"}})  # fmt: skip
    backends = ModelPool().backends(cfg)
    check_pipeline_location(load_policy_text(EU_POLICY), backends)  # accepted
    with pytest.raises(Exception, match="remote but the policy allows local processing only"):
        check_pipeline_location(load_policy_text("processing: {local_only: true}"), backends)
    with pytest.raises(Exception, match="runs in region 'eu'; the policy allows only us"):
        check_pipeline_location(load_policy_text("processing: {local_only: false, allowed_regions: [us]}"), backends)


def test_a_turn_request_keeps_the_prefix_cached_and_the_call_on_its_slot() -> None:
    engine = RemoteLLMEngine(LLMPreset(endpoint="http://127.0.0.1:1/v1", model="smollm2", slots=4))
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    body = engine.request("call-a", msgs, LLMParams(max_tokens=20, temperature=0.2, seed=7))
    assert body["stream"] is True and body["model"] == "smollm2" and body["messages"] == msgs
    assert body["max_tokens"] == 20 and body["seed"] == 7
    assert body["extra_body"]["cache_prompt"] is True
    slots = {engine.request(f"call-{i}", msgs, LLMParams())["extra_body"]["id_slot"] for i in range(40)}
    assert slots == {0, 1, 2, 3}  # calls spread over the slots
    assert engine.request("call-a", msgs, LLMParams())["extra_body"]["id_slot"] == body["extra_body"]["id_slot"]
    unpinned = RemoteLLMEngine(LLMPreset(endpoint="http://127.0.0.1:1/v1"))
    assert "id_slot" not in unpinned.request("call-a", msgs, LLMParams())["extra_body"]


def test_a_missing_api_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICECORE_TEST_LLM_KEY", raising=False)
    with pytest.raises(ValueError, match="VOICECORE_TEST_LLM_KEY"):
        RemoteLLMEngine(LLMPreset(endpoint="https://llm.example/v1", api_key_env="VOICECORE_TEST_LLM_KEY"))


# --------------------------------------------------------------------------- real calls


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    with LlamaCppServer(tmp_path_factory.mktemp("llama") / "llama-server.log") as server:
        yield server


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WhisperServer]:
    with WhisperServer(tmp_path_factory.mktemp("whisper") / "whisper-server.log") as server:
        yield server


@pytest.fixture(scope="module")
def piper_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PiperHttpServer]:
    with PiperHttpServer(tmp_path_factory.mktemp("piper") / "piper-server.log") as server:
        yield server


def remote_pipeline(receptionist: PipelineConfig, name: str, llm: LLMPreset | str = "default",
                    stt: STTPreset | str = "default", tts: TTSPreset | str = "default") -> PipelineConfig:  # fmt: skip
    # no facts: the questions below must reach the models on the servers (not be answered from the data)
    return receptionist.model_copy(update={"name": name, "models": ModelRefs(stt=stt, llm=llm, tts=tts), "facts": None})


@pytest.fixture
async def remote_server(pool: ModelPool, receptionist: PipelineConfig, tmp_path: Path, llama_server: LlamaCppServer,
                        whisper_server: WhisperServer, piper_server: PiperHttpServer,
                        ) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    store = Store(tmp_path / "data")
    keys = {"euro": store.tenants.create("euro", actor="test"), "homebody": store.tenants.create("homebody", actor="test")}
    store.tenants.set_policy("euro", EU_POLICY, actor="test")
    down = free_port()  # nothing listens there
    pipelines = {
        "remote": remote_pipeline(receptionist, "remote",
                                  LLMPreset(endpoint=llama_server.url, model="smollm2", location="eu")),
        "remote-down": remote_pipeline(receptionist, "remote-down",
                                       LLMPreset(endpoint=f"http://127.0.0.1:{down}/v1", timeout_s=3)),
        "all-remote": remote_pipeline(receptionist, "all-remote",
                                      stt=STTPreset(endpoint=whisper_server.url, location="eu"),
                                      llm=LLMPreset(endpoint=llama_server.url, model="smollm2", location="eu"),
                                      tts=TTSPreset(endpoint=piper_server.url, location="eu")),
        "stt-down": remote_pipeline(receptionist, "stt-down", stt=STTPreset(endpoint=f"http://127.0.0.1:{down}/v1")),
    }  # fmt: skip
    app = create_app(data_dir=tmp_path / "data", pool=pool, store=store, pipelines=pipelines, pipeline="remote",
                     preload=False, auth_throttle=AuthThrottle(burst=1000))  # fmt: skip
    async with running_server(app) as base:
        yield {"ws": base.replace("http", "ws"), "store": store, "keys": keys, "down": f"http://127.0.0.1:{down}/v1"}
    store.close()


async def ask(client: TwilioClient, audio: Any) -> float:
    """Wait out the greeting, say ``audio``; returns when the question went out."""
    assert await client.wait_media_after(0.0, 30) is not None, f"no greeting ({client.close_code} {client.close_reason})"
    assert await client.wait_agent_quiet(quiet=0.8, timeout=30)
    utt = await client.say_and_wait(audio, timeout=30)
    assert utt.speech_end_at is not None
    return utt.speech_end_at


async def ask_saturday(remote_server: dict[str, Any], say: Any, tenant: str, pipeline: str, *,
                       timeout: float = 30.0) -> tuple[Any, Any]:  # fmt: skip
    """A Twilio call of ``tenant`` on ``pipeline``: the greeting, "What time do you open on
    Saturday?", the agent's answer played out, the hang-up. Returns the agent's audio after the
    question and the stored call."""
    key = remote_server["keys"][tenant]
    client = TwilioClient(f"{remote_server['ws']}/ws/twilio", token=key,
                          custom={"token": key, "pipeline": pipeline, "from": "+14155550100"})  # fmt: skip
    try:
        assert await client.start()
        asked = await ask(client, say("What time do you open on Saturday?"))
        assert await client.wait_media_after(asked, timeout) is not None, "silence after the question"
        assert await client.wait_agent_quiet(quiet=0.8, timeout=timeout)
        heard = client.agent_audio(since=asked)
        await client.hangup()
    finally:
        await client.close()
    call = await wait_stored_call(remote_server["store"], tenant, client.ids, with_turns=True)
    assert call is not None
    return heard, call


@pytest.mark.models
async def test_a_call_is_answered_by_the_llm_on_an_inference_server(remote_server, llama_server, say) -> None:
    before = llama_server.completions()
    heard, call = await ask_saturday(remote_server, say, "euro", "remote", timeout=40)
    assert rms(heard) > 100
    assert llama_server.completions() > before, "the inference server was never asked"
    agent = [t for t in call.turns if t.role == "agent" and t.kind != "greeting"]
    assert agent and agent[0].text.strip(), "no agent reply stored"
    assert agent[0].text.strip() != remote_server_fallback(), "the fallback spoke, not the remote model"
    assert "backend_failures" not in call.flags
    timeline = agent[0].timeline or {}
    assert timeline.get("voice_to_voice_ms") is not None  # the per-turn timeline is the same as in process


def remote_server_fallback() -> str:
    return PipelineConfig.model_fields["fallback_reply"].default


@pytest.mark.models
async def test_a_local_only_policy_refuses_the_remote_pipeline_before_any_audio(remote_server, llama_server) -> None:
    before = llama_server.completions()
    client = TwilioClient(f"{remote_server['ws']}/ws/twilio", token=remote_server["keys"]["homebody"])
    try:
        assert await client.start(mic=False)
        assert await client.wait_closed(10), "the stream was not refused"
    finally:
        await client.close()
    assert client.close_code == 1008, (client.close_code, client.close_reason)
    assert "local processing only" in (client.close_reason or "") or "may not run" in (client.close_reason or "")
    assert not client.media, "audio flowed on a refused call"
    assert llama_server.completions() == before
    assert await wait_stored_call(remote_server["store"], "homebody", client.ids, timeout=1) is None


@pytest.mark.models
async def test_an_unreachable_inference_server_gives_the_spoken_fallback(remote_server, say) -> None:
    _heard, call = await ask_saturday(remote_server, say, "homebody", "remote-down")
    agent = [t for t in call.turns if t.role == "agent" and t.kind != "greeting"]
    assert agent and agent[0].text.strip() == remote_server_fallback()
    failures = call.flags.get("backend_failures")
    assert failures and failures[0]["kind"] == "llm" and failures[0]["backend"] == remote_server["down"], failures
    assert failures[0]["error"] in ("APIConnectionError", "APITimeoutError"), failures


@pytest.mark.models
async def test_every_stage_on_an_inference_server(remote_server, llama_server, whisper_server, piper_server,
                                                  say) -> None:  # fmt: skip
    """STT on faster-whisper-server, the LLM on llama_cpp.server, TTS on Piper's HTTP server: the
    caller hears the greeting and a reply, every server did its part, the record is the usual one."""
    counts = (whisper_server.transcriptions(), llama_server.completions(), piper_server.syntheses())
    heard, call = await ask_saturday(remote_server, say, "euro", "all-remote", timeout=40)
    assert rms(heard) > 100
    after = (whisper_server.transcriptions(), llama_server.completions(), piper_server.syntheses())
    assert all(a > b for a, b in zip(after, counts)), (counts, after)
    assert "backend_failures" not in call.flags, call.flags
    caller = " ".join(t.text for t in call.turns if t.role == "caller").lower()
    assert "saturday" in caller, caller
    agent = [t for t in call.turns if t.role == "agent" and t.kind != "greeting"]
    assert agent and agent[0].text.strip() != remote_server_fallback()


@pytest.mark.models
async def test_an_unreachable_transcription_server_gives_the_spoken_fallback(remote_server, say) -> None:
    _heard, call = await ask_saturday(remote_server, say, "homebody", "stt-down")
    failures = call.flags.get("backend_failures")
    assert failures and failures[0]["kind"] == "stt" and failures[0]["backend"] == remote_server["down"], failures
    spoken = [t.text.strip() for t in call.turns if t.role == "agent" and t.kind != "greeting"]
    assert remote_server_fallback() in spoken, spoken
