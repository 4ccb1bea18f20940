"""The ``take_message``, ``transfer`` and ``end_call`` tools (issue 13, item 3): the dialogues on
scripted caller lines (no model), the transfer requests against each provider's documented shape,
and calls through the real session: a message stored as a turn, a goodbye that ends the call, a
transfer refused on a line with no provider, and a Twilio call handed over through the fake
Twilio API ("Update a Call" with ``<Dial>``, signed with the account's Basic auth)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from voicecore.agent.call_tools import (
    CallTools,
    MessageDialogue,
    ToolAction,
    wants_message,
    wants_person,
    wants_to_end,
)
from voicecore.agent.facts import DONT_KNOW
from voicecore.config import EndCallTool, TakeMessageTool, Tools, TransferTool
from voicecore.telephony.dialing import DialingError
from voicecore.telephony.transfer import (
    TransferRequest,
    build_transfer,
    parse_transfer,
    twiml_dial,
)

TARGET = "+14155550199"
ALL = Tools(take_message=TakeMessageTool(for_whom="Dr Smith"), transfer=TransferTool(to=TARGET),
            end_call=EndCallTool(goodbye="Thanks for calling. Goodbye!"))  # fmt: skip


def talk(tools: CallTools, *lines: str) -> list[Any]:
    return [tools.handle(line) for line in lines]


# --- intents -----------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["Can I leave a message?", "could you take a message for her", "Please tell him "
                                  "that the car is ready.", "I'd like to leave a message for Dr Smith"])
def test_asking_to_leave_a_message(line: str) -> None:
    assert wants_message(line) and not wants_person(line) and not wants_to_end(line)


@pytest.mark.parametrize("line", ["Can I speak to a real person please?", "transfer me", "I want to talk to someone",
                                  "can i speak with a human", "operator please", "put me through to the manager",
                                  "I want to talk to the dentist", "can I talk to a mechanic?"])
def test_asking_for_a_person(line: str) -> None:
    assert wants_person(line) and not wants_message(line)


@pytest.mark.parametrize("line", ["Thanks, that's all. Goodbye!", "bye", "ok bye bye", "you can hang up now",
                                  "no that is all, have a nice day"])
def test_saying_goodbye(line: str) -> None:
    assert wants_to_end(line)


@pytest.mark.parametrize("line", ["Do you open on Sunday?", "I'd like to book a cleaning", "please don't hang up",
                                  "yes", "my name is Anna"])
def test_other_lines_are_no_tool_turn(line: str) -> None:
    assert CallTools(ALL).handle(line) is None


# --- take_message ------------------------------------------------------------------------------


def test_a_yes_to_the_offer_is_not_the_message_itself() -> None:
    assert MessageDialogue().start("yes, a message please").text == "Of course. What would you like me to tell the team?"
    assert MessageDialogue().start("yes please, tell her I'll be late").text == "Got it. And who is the message from?"


def test_a_message_in_several_turns_is_read_back_and_taken_after_yes() -> None:
    tools = CallTools(ALL)
    replies = talk(tools, "Can I leave a message?", "The x-ray results should go to my new address.",
                   "It's Anna Lopez", "yes please")  # fmt: skip
    assert [r.text for r in replies] == [
        "Of course. What would you like me to tell Dr Smith?",
        "Got it. And who is the message from?",
        "Let me read that back. From Anna Lopez: The x-ray results should go to my new address. "
        "Shall I pass that on to Dr Smith?",
        "Thank you, I'll pass your message on to Dr Smith. Is there anything else I can help with?",
    ]
    assert [r.action for r in replies[:3]] == [None, None, None]  # nothing is taken before the yes
    assert replies[3].action == ToolAction("message", "The x-ray results should go to my new address",
                                           name="Anna Lopez")  # fmt: skip
    assert tools.handle("do you have parking?") is None  # the dialogue is over


def test_a_message_said_at_once_with_the_name_needs_only_the_confirmation() -> None:
    tools = CallTools(ALL)
    first = tools.handle("Hi, this is Ben. Please tell her that I will be ten minutes late.")
    assert first.text == ("Let me read that back. From Ben: I will be ten minutes late. "
                          "Shall I pass that on to Dr Smith?")  # fmt: skip
    no = tools.handle("no")
    assert no.text == "No problem. What should the message say?" and no.action is None
    tools.handle("I will be twenty minutes late")
    taken = tools.handle("yes")
    assert taken.action is not None and taken.action.text == "I will be twenty minutes late"


def test_the_caller_can_give_up_the_message() -> None:
    tools = CallTools(ALL)
    tools.handle("can i leave a message")
    reply = tools.handle("never mind")
    assert reply.action is None and "won't leave a message" in reply.text and not tools.busy


def test_a_dont_know_answer_offers_a_message_and_a_yes_takes_it() -> None:
    tools = CallTools(Tools(take_message=TakeMessageTool()))
    offer = tools.offer(DONT_KNOW)
    assert offer == ("I'm sorry, I don't have that information. Would you like to leave a message for the team?")
    assert tools.handle("yes please").text == "Of course. What would you like me to tell the team?"
    # an offer holds for the next turn only
    tools = CallTools(Tools(take_message=TakeMessageTool()))
    tools.offer(DONT_KNOW)
    assert tools.handle("what time do you close?") is None and tools.handle("yes") is None


@pytest.mark.parametrize("line", ["Could you tell me the address again, please?", "What time do you close, please",
                                  "Is that right?"])  # fmt: skip
def test_a_question_about_something_else_is_no_yes_to_the_offer(line: str) -> None:
    tools = CallTools(ALL)
    tools.offer(DONT_KNOW)
    assert tools.handle(line) is None  # the facts or the model answer it; no message is started
    tools.offer(DONT_KNOW)
    assert tools.handle("Yes, please.").text.startswith("Of course. What would you like me to tell")


def test_both_offered_the_caller_picks_a_person() -> None:
    tools = CallTools(ALL)
    assert "take a message, or put you through" in tools.offer(DONT_KNOW)
    reply = tools.handle("put me through please")
    assert reply.text is None and reply.action == ToolAction("transfer", ALL.transfer.announcement, target=TARGET)


# --- transfer and end_call ---------------------------------------------------------------------


def test_a_request_for_a_person_is_a_transfer_the_session_announces() -> None:
    reply = CallTools(ALL).handle("Can I speak to a real person please?")
    assert reply.text is None and reply.action is not None
    assert (reply.action.kind, reply.action.target) == ("transfer", TARGET)


def test_a_failed_transfer_offers_a_message_and_a_yes_takes_it() -> None:
    tools = CallTools(ALL)
    tools.handle("transfer me")
    assert tools.transfer_failed() == ("I'm sorry, I couldn't put you through right now. "
                                       "Would you like to leave a message instead?")  # fmt: skip
    assert tools.handle("yes").text == "Of course. What would you like me to tell Dr Smith?"
    assert "can't transfer calls on this line" in CallTools(ALL).transfer_failed(unavailable=True)


def test_without_transfer_a_request_for_a_person_gets_a_message_offer() -> None:
    tools = CallTools(Tools(take_message=TakeMessageTool()))
    reply = tools.handle("can i talk to someone")
    assert reply.action is None and "take a message" in reply.text
    assert tools.handle("sure").text == "Of course. What would you like me to tell the team?"
    assert CallTools(Tools()).handle("can i talk to someone") is None  # no tool: the model answers


def test_goodbye_ends_the_call_with_the_configured_goodbye() -> None:
    reply = CallTools(ALL).handle("Thanks, that's all. Bye!")
    assert reply.text is None and reply.action == ToolAction("end_call", "Thanks for calling. Goodbye!")
    assert CallTools(Tools(take_message=TakeMessageTool())).handle("bye") is None  # no end_call tool


@pytest.mark.parametrize("to", ["0800 123", "+0123456789", "tel:+14155550100", "sip:", "+1415555010<"])
def test_a_transfer_target_must_be_e164_or_a_sip_uri(to: str) -> None:
    with pytest.raises(ValidationError):
        TransferTool(to=to)
    assert TransferTool(to="sip:frontdesk@pbx.example.com").to.startswith("sip:")


# --- the providers' transfer requests ------------------------------------------------------------

CREDS = {
    "twilio": {"account_sid": "AC" + "ab" * 16, "auth_token": "tw-token-123456"},
    "telnyx": {"api_key": "KEY0123456789"},
    "plivo": {"auth_id": "MAXXXXXXXXXXXXXXXXXX", "auth_token": "plivo-token-123456"},
    "asterisk": {"ari_url": "http://pbx.example:8088", "ari_user": "vc", "ari_password": "ari-secret", "trunk": "out"},
}


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_twilio_update_a_call_with_dial() -> None:
    c = CREDS["twilio"]
    req = build_transfer("twilio", c, TransferRequest("twilio", "CA" + "12" * 16, TARGET))
    assert req.method == "POST"
    assert req.url == f"https://api.twilio.com/2010-04-01/Accounts/{c['account_sid']}/Calls/CA{'12' * 16}.json"
    assert req.headers["Authorization"] == _basic(c["account_sid"], c["auth_token"])
    assert parse_qs(req.body.decode()) == {"Twiml": [f"<Response><Dial>{TARGET}</Dial></Response>"]}
    assert twiml_dial("sip:desk@pbx.example.com") == "<Response><Dial><Sip>sip:desk@pbx.example.com</Sip></Dial></Response>"


def test_telnyx_transfer_action() -> None:
    req = build_transfer("telnyx", CREDS["telnyx"], TransferRequest("telnyx", "v3:abc-123_x", "sip:desk@pbx.example"))
    assert (req.method, req.url) == ("POST", "https://api.telnyx.com/v2/calls/v3%3Aabc-123_x/actions/transfer")
    assert req.headers["Authorization"] == "Bearer KEY0123456789"
    assert json.loads(req.body) == {"to": "sip:desk@pbx.example"}


def test_vonage_transfer_to_an_inline_ncco(vonage_key: dict[str, str]) -> None:
    import jwt

    req = build_transfer("vonage", vonage_key["credentials"],
                         TransferRequest("vonage", "63f61863-4a51-4f6b-86e1-46edebcf9356", TARGET), now=1_800_000_000)  # fmt: skip
    assert (req.method, req.url) == ("PUT", "https://api.nexmo.com/v1/calls/63f61863-4a51-4f6b-86e1-46edebcf9356")
    assert json.loads(req.body) == {"action": "transfer", "destination": {"type": "ncco", "ncco": [
        {"action": "connect", "endpoint": [{"type": "phone", "number": TARGET[1:]}]}]}}  # fmt: skip
    claims = jwt.decode(req.headers["Authorization"].removeprefix("Bearer "), vonage_key["public"],
                        algorithms=["RS256"], options={"verify_exp": False, "verify_iat": False})  # fmt: skip
    assert claims["application_id"] == vonage_key["credentials"]["application_id"]


def test_plivo_transfer_of_the_a_leg_needs_an_xml_url() -> None:
    c = CREDS["plivo"]
    with pytest.raises(DialingError, match="plivo_xml_url"):
        build_transfer("plivo", c, TransferRequest("plivo", "9a4c7b4e-0000", TARGET))
    req = build_transfer("plivo", c, TransferRequest("plivo", "9a4c7b4e-0000", TARGET,
                                                     plivo_xml_url="https://biz.example/dial.xml"))  # fmt: skip
    assert (req.method, req.url) == ("POST", f"https://api.plivo.com/v1/Account/{c['auth_id']}/Call/9a4c7b4e-0000/")
    assert req.headers["Authorization"] == _basic(c["auth_id"], c["auth_token"])
    assert json.loads(req.body) == {"legs": "aleg", "aleg_url": "https://biz.example/dial.xml", "aleg_method": "POST"}


def test_asterisk_redirect_of_the_channel() -> None:
    req = build_transfer("asterisk", CREDS["asterisk"], TransferRequest("asterisk", "1733.42", TARGET))
    url = urlsplit(req.url)
    assert (req.method, url.netloc, url.path) == ("POST", "pbx.example:8088", "/ari/channels/1733.42/redirect")
    assert parse_qs(url.query) == {"endpoint": [f"PJSIP/{TARGET}@out"]}
    assert req.headers["Authorization"] == _basic("vc", "ari-secret")


def test_bad_transfer_requests_are_refused_naming_the_field() -> None:
    with pytest.raises(DialingError, match="auth_token"):
        build_transfer("twilio", {"account_sid": "AC1"}, TransferRequest("twilio", "CA1", TARGET))
    with pytest.raises(DialingError, match="provider id"):
        build_transfer("twilio", CREDS["twilio"], TransferRequest("twilio", "CA1/../x", TARGET))
    with pytest.raises(DialingError, match="cannot transfer through"):
        build_transfer("exotel", {}, TransferRequest("exotel", "x", TARGET))


@pytest.mark.parametrize("provider, status, body, ok, code", [
    ("twilio", 200, b'{"sid": "CA1", "status": "in-progress"}', True, None),
    ("vonage", 204, b"", True, None),
    ("plivo", 202, b'{"message": "call transferred"}', True, None),
    ("twilio", 404, b'{"code": 20404, "message": "not found", "status": 404}', False, "20404"),
    ("telnyx", 422, b'{"errors": [{"code": "90018", "title": "Call has already ended"}]}', False, "90018"),
    ("asterisk", 409, b'{"message": "Channel not in Stasis application"}', False, "http_409"),
    ("twilio", 502, b"<html>bad gateway</html>", False, "http_502"),
])  # fmt: skip
def test_transfer_answers(provider: str, status: int, body: bytes, ok: bool, code: str | None) -> None:
    result = parse_transfer(provider, status, body)
    assert (result.ok, result.error_code) == (ok, code)
    assert ok or result.error_message


@pytest.fixture
def vonage_key() -> dict[str, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()  # fmt: skip
    return {"credentials": {"application_id": "aaaaaaaa-bbbb-cccc-dddd-0123456789ab", "private_key": pem},
            "public": public}


# --- calls through the session -------------------------------------------------------------------


def with_tools(config: Any, tools: Tools) -> Any:
    return config.model_copy(update={"tools": config.tools.model_copy(update=dict(tools))})


@pytest.mark.models
async def test_a_text_call_takes_a_message_then_ends_with_the_goodbye(tmp_path: Path, pool, receptionist,
                                                                      monkeypatch) -> None:  # fmt: skip
    """Through the session a phone call takes (in text): the message is a turn of kind ``message``
    in the stored call (encrypted with the transcript), the flags hold only a count; a goodbye is
    said and ends the call; a transfer asked on a line with no provider is refused with a message
    offered."""
    from voicecore.simulate import TextCall
    from voicecore.storage import Store

    monkeypatch.setenv("VOICECORE_DATA_DIR", str(tmp_path / "data"))
    store = Store(tmp_path / "data")
    store.tenants.create("acme", actor="test")
    call = await TextCall.open(with_tools(receptionist, ALL), pool, store=store, tenant="acme")
    await call.next_reply()  # the greeting
    no_line = (await call.say("Can I speak to a real person please?"))[0]
    assert no_line == "I'm sorry, I can't transfer calls on this line. Would you like to leave a message instead?"
    replies = [(await call.say(line))[0] for line in
               ("yes", "Please ask her to call me back about my crown.", "my name is Anna Lopez", "yes")]  # fmt: skip
    assert replies[-1] == "Thank you, I'll pass your message on to Dr Smith. Is there anything else I can help with?"
    goodbye = (await call.say("No, that's all. Goodbye!"))[0]
    assert goodbye == "Thanks for calling. Goodbye!"
    await call.session.closed.wait()  # the agent ended the call
    record = call.session.record
    assert record.end_reason == "completed" and call.ended
    assert record.flags["messages"] == 1 and record.flags["transfer"]["error"] == "unavailable"
    stored = store.calls.get("acme", record.call_id, actor="test")
    (message,) = [t for t in stored.turns if t.kind == "message"]
    assert message.role == "event" and "call me back about my crown" in message.text and "Anna Lopez" in message.text
    assert "crown" not in json.dumps(stored.flags)
    assert any(t.kind == "goodbye" and t.text == "Thanks for calling. Goodbye!" for t in stored.turns)
    store.close()


TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-auth-token-for-the-fake-0001"
FROM, CALLEE = "+14155550100", "+14155550111"


@pytest.mark.models
async def test_a_twilio_call_is_handed_over_through_update_a_call(tmp_path: Path, receptionist, monkeypatch) -> None:
    """A campaign call placed through the fake Twilio API; the callee asks for a person; the agent
    announces the transfer and Twilio gets "Update a Call" for that CallSid with ``<Dial>`` to the
    configured number, signed with the account's Basic auth; the call record shows it."""
    import asyncio
    import time

    from voicecore.server import create_app, running_server
    from voicecore.server.guard import AuthThrottle
    from voicecore.storage import Store
    from voicecore.testing.inference import free_port
    from voicecore.testing.provider_apis import FakeTwilioApi, Scenario

    config = with_tools(receptionist, ALL)
    port = free_port()
    store = Store(tmp_path / "data", allow_insecure_webhooks=True)
    app = create_app(data_dir=tmp_path / "data", store=store, pipelines={config.name: config},
                     public_url=f"http://127.0.0.1:{port}", auth_throttle=AuthThrottle(burst=10_000),
                     dialer_poll_s=0.2, preload=False)  # fmt: skip
    script = Scenario(script=("Can I speak to a real person please?",), reply_timeout_s=60)
    async with running_server(app, port=port), FakeTwilioApi(TWILIO_SID, TWILIO_TOKEN, scenario=script) as fake:
        monkeypatch.setenv("VOICECORE_TWILIO_API_BASE", fake.base_url)
        store.tenants.create("acme", actor="test")
        store.providers.set("acme", "twilio", {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN}, actor="test")
        store.contacts.import_file("acme", f"phone\n{CALLEE}\n".encode(), segment="leads", actor="test")
        store.campaigns.create("acme", "c1", pipeline=config.name, segment="leads", from_number=FROM,
                               provider="twilio", window="daily 00:00-24:00", max_concurrent=1, max_attempts=1,
                               actor="test")  # fmt: skip
        store.campaigns.start("acme", "c1", actor="test")
        app.state.vc.dialer.wake()
        (placed,) = await fake.wait_calls(1, timeout=240)
        assert placed.first_agent_audio_at is not None, placed.stream_error
        deadline = time.monotonic() + 60
        while not fake.updates and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        (update,) = fake.updates
        assert update.call_sid == placed.call_id and update.authorized and update.status == 200
        assert update.params["Twiml"] == [f"<Response><Dial>{TARGET}</Dial></Response>"]
        stored = None
        while stored is None and time.monotonic() < deadline:
            stored = next(iter(store.calls.list("acme", actor="test", end_reason="transferred")), None)
            await asyncio.sleep(0.2)
    call = store.calls.get("acme", stored.call_id, actor="test") if stored is not None else None
    assert call is not None, "the transferred call was not stored"
    assert call.flags["transfer"] == {"to": TARGET, "provider": "twilio", "ok": True, "error": None}
    assert call.end_reason == "transferred"
    assert any(t.kind == "transfer" and t.text for t in call.turns)  # the announcement was said
    store.close()
