"""The call tools a caller asks for in words: ``take_message``, ``transfer`` and ``end_call``.

Deterministic, like the booking dialogue (:mod:`voicecore.agent.booking`): the caller's turn (as
Whisper writes it) is matched against phrasings ("can I leave a message", "tell her that …",
"speak to a real person", "transfer me", "that's all, bye"); the model is never asked.

:class:`CallTools` routes one caller turn:

- a message being taken gets the next step of :class:`MessageDialogue` (what the message is, who
  it is from, read back, confirmed); a confirmed message is a :class:`ToolAction` ``message``;
- a request for a person is a ``transfer`` action (the session says the announcement and asks the
  provider to hand the call over; :meth:`CallTools.transfer_failed` is what the caller hears when
  that cannot be done, with a message offered instead);
- a goodbye is an ``end_call`` action (the session says the goodbye and hangs up);
- a "yes" right after the agent offered a message or a transfer (:meth:`CallTools.offer`, after a
  question the facts cannot answer) takes the offer.

No I/O, no event loop, no model: every method is a plain function of the turn's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from voicecore.agent.booking import GIVE_UP, NO, find_name, says_yes
from voicecore.config import TakeMessageTool, Tools

__all__ = ["CallTools", "MessageDialogue", "ToolAction", "ToolReply", "message_body", "wants_message", "wants_person",
           "wants_to_end"]  # fmt: skip

MAX_MESSAGE_CHARS = 500

MESSAGE_INTENT = re.compile(
    r"\b(leave|take|pass on|pass along|give (him|her|them)|send) (a|an|the|my)? ?message\b"
    r"|\bleave (him|her|them) a message\b|\bmessage for\b"
    r"|\b(tell|let) (him|her|them|the \w+|dr \w+|doctor \w+|mr \w+|mrs \w+|ms \w+) (that|to|know)\b"
)
PERSON_INTENT = re.compile(
    r"\b(speak|talk|chat) (to|with) (a |an |the )?(real |actual |live )?"
    r"(someone|somebody|person|human|agent|operator|receptionist|manager|owner|staff|member of staff|"
    r"front desk|people|anyone|anybody|dentist|doctor|hygienist|nurse|mechanic|mechanics|technician|workshop)\b"
    r"|\b(real|actual|live) (person|human|people)\b"
    r"|\btransfer (me|my call|the call|this call)\b|\bput me through\b|\bconnect me\b"
    r"|\b(human|operator|agent|receptionist|representative) please\b|\bget me (a|an|someone)\b"
)
END_INTENT = re.compile(
    r"\b(good ?bye|bye|bye bye|byebye|hang up|thats all|that is all|thats everything|nothing else|"
    r"thats it for (now|today)|im done|i am done|have a (good|nice|great|lovely) (day|one|evening|weekend))\b"
)
NOT_AN_END = re.compile(r"\b(dont|do not|not) (hang up|say goodbye)\b|\bbefore (you|i) (hang up|go)\b")
# what a caller puts before the message itself
MESSAGE_LEAD = re.compile(
    r"^\s*(?:(?:yes|yeah|yep|sure|ok|okay|please|so|well|um|uh)[,.!]?\s+)*"
    r"(?:(?:can|could|would|may) (?:i|you) (?:please )?(?:leave|take|pass on|give (?:him|her|them)) "
    r"(?:a |the )?message(?: for (?:(?!\bsaying\b|\bthat\b)[^,.?!])+)?(?:[,.?!]|\s*\bsaying\b|\s*\bthat\b)?\s*)?"
    r"(?:(?:i(?:'d| would) like to |i want to )?(?:leave|take) (?:a |the )?message(?: for (?:(?!\bsaying\b|\bthat\b)[^,.?!])+)?"
    r"(?:[,.?!:]|\s*\bsaying\b|\s*\bthat\b)?\s*)?"
    r"(?:(?:the|my) message is[:,]?\s*)?"
    r"(?:(?:please |can you |could you )?(?:tell|let) (?:him|her|them|the \w+|(?:dr|doctor|mr|mrs|ms)\.? \w+) "
    r"(?:know )?(?:that )?)?",
    re.IGNORECASE,
)

TELL = re.compile(r"\b(?:tell|let) (?:him|her|them|the \w+|(?:dr|doctor|mr|mrs|ms)\.? \w+) (?:know )?(?:that )?",
                  re.IGNORECASE)
SAYING = re.compile(r"\bmessage(?: for [^,.?!]+?)?(?:\s+saying|\s+that|:)\s+", re.IGNORECASE)


def _low(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower().replace("'", "")))


def wants_message(text: str) -> bool:
    """The caller asks to leave a message ("can I leave a message", "tell her that …")."""
    return bool(MESSAGE_INTENT.search(_low(text)))


def wants_person(text: str) -> bool:
    """The caller asks for a person ("speak to someone", "a real person", "transfer me")."""
    return bool(PERSON_INTENT.search(_low(text)))


def wants_to_end(text: str) -> bool:
    """The caller ends the call ("goodbye", "that's all", "hang up")."""
    low = _low(text)
    return bool(END_INTENT.search(low)) and not NOT_AN_END.search(low)


def _no(text: str) -> bool:
    words = set(_low(text).split())
    return bool(words & (NO | {"dont", "rather"})) or bool(GIVE_UP.search(_low(text)))


def message_body(text: str) -> str:
    """The message itself, without what the caller put before it ("yes, please tell him that")."""
    m = TELL.search(text) or SAYING.search(text)  # "hi, this is Ben. Please tell her that …"
    body = (text[m.end():] if m else MESSAGE_LEAD.sub("", text.strip(), count=1)).strip(" ,.:;-")
    if len(body) > MAX_MESSAGE_CHARS:
        body = body[:MAX_MESSAGE_CHARS].rsplit(" ", 1)[0]
    return body


@dataclass(frozen=True)
class ToolAction:
    """What a tool does beyond speaking: ``message`` (``text`` is the message, ``name`` who left it),
    ``transfer`` (``text`` the announcement, ``target`` the number or SIP URI) or ``end_call``
    (``text`` the goodbye)."""

    kind: str
    text: str
    target: str | None = None
    name: str | None = None

    def __repr__(self) -> str:  # the text may be the caller's message: never in a log
        return f"ToolAction({self.kind})"


@dataclass(frozen=True)
class ToolReply:
    """What the agent says this turn (None: the session speaks the action's text), and the action."""

    text: str | None
    action: ToolAction | None = None


@dataclass
class MessageDialogue:
    """Takes one message: asks for it (unless the caller already said it), for the caller's name
    (unless known), reads it back, and takes it after a yes."""

    for_whom: str = "the team"
    name: str | None = None
    body: str = ""
    state: str = "message"  # message | name | confirm | taken | dropped
    asked: int = 0

    def start(self, text: str) -> ToolReply:
        """The caller asked to leave a message; ``text`` may already hold it ("tell her that …")."""
        self.name = self.name or find_name(text, asked=False)
        body = message_body(text)
        said = set(_low(body).split()) - {"a", "an", "the", "message", "please", "yes", "yeah", "ok", "okay", "sure",
                                          "leave", "take", "for", "him", "her", "them", "team", "i", "can", "id", "like"}
        if body and not wants_message(body) and len(body.split()) >= 3 and said:  # not "yes, a message please"
            self.body = body
            return self._after_body()
        return ToolReply(f"Of course. What would you like me to tell {self.for_whom}?")

    def handle(self, text: str) -> ToolReply:
        if GIVE_UP.search(_low(text)):
            self.state = "dropped"
            return ToolReply("No problem, I won't leave a message. Is there anything else I can help with?")
        if self.state == "message":
            body = message_body(text)
            if not body or len(body.split()) < 2:
                self.asked += 1
                if self.asked >= 3:
                    self.state = "dropped"
                    return ToolReply("I'm sorry, I didn't catch a message. Is there anything else I can help with?")
                return ToolReply("Sorry, what would you like the message to say?")
            self.body = body
            return self._after_body()
        if self.state == "name":
            name = find_name(text, asked=True)
            if name is None:
                self.asked += 1
                if self.asked < 3:
                    return ToolReply("Sorry, could you tell me your name?")
                name = "the caller"
            self.name = name
            return self._read_back()
        if self.state == "confirm":
            if says_yes(text):
                self.state = "taken"
                return ToolReply(f"Thank you, I'll pass your message on to {self.for_whom}. Is there anything "
                                 "else I can help with?",
                                 ToolAction("message", self.body, name=self.name))  # fmt: skip
            if _no(text):
                self.state, self.body, self.asked = "message", "", 0
                return ToolReply("No problem. What should the message say?")
            return ToolReply("Sorry, shall I pass that message on? Please say yes or no.")
        return ToolReply(None)

    def _after_body(self) -> ToolReply:
        if self.name:
            return self._read_back()
        self.state, self.asked = "name", 0
        return ToolReply("Got it. And who is the message from?")

    def _read_back(self) -> ToolReply:
        self.state = "confirm"
        return ToolReply(f"Let me read that back. From {self.name}: {self.body.rstrip('.')}. "
                         f"Shall I pass that on to {self.for_whom}?")  # fmt: skip

    @property
    def active(self) -> bool:
        return self.state in ("message", "name", "confirm")


@dataclass
class CallTools:
    """The call's ``take_message``, ``transfer`` and ``end_call`` tools, as the pipeline declares them."""

    tools: Tools
    offered: str | None = None  # what the agent's last reply offered: "message", "transfer", "either"
    dialogue: MessageDialogue | None = None
    messages_taken: list[ToolAction] = field(default_factory=list)

    @property
    def declared(self) -> bool:
        t = self.tools
        return any(x is not None for x in (t.take_message, t.transfer, t.end_call))

    @property
    def busy(self) -> bool:
        """A message is being taken: the next turn is this tool's."""
        return self.dialogue is not None and self.dialogue.active

    def handle(self, text: str) -> ToolReply | None:
        """This turn's reply (and action) if it is a tool's turn; None otherwise."""
        offered, self.offered = self.offered, None
        if self.busy:
            assert self.dialogue is not None
            reply = self.dialogue.handle(text)
            if reply.action is not None:
                self.messages_taken.append(reply.action)
            return reply
        t = self.tools
        if t.end_call is not None and wants_to_end(text) and not wants_message(text) and not wants_person(text):
            return ToolReply(None, ToolAction("end_call", t.end_call.goodbye))
        if wants_person(text) or (offered == "transfer" and says_yes(text)):
            return self._transfer()
        if wants_message(text) or (offered in ("message", "either") and says_yes(text)):
            if t.take_message is None:
                return None if t.transfer is None else self._transfer()
            return self._message(text)
        if offered is not None and _no(text):
            return ToolReply("Alright. Is there anything else I can help with?")
        return None

    def _message(self, text: str) -> ToolReply:
        assert self.tools.take_message is not None
        known = self.dialogue.name if self.dialogue is not None else None
        self.dialogue = MessageDialogue(for_whom=self.tools.take_message.for_whom, name=known)
        reply = self.dialogue.start(text)
        return reply

    def _transfer(self) -> ToolReply | None:
        t = self.tools
        if t.transfer is not None:
            return ToolReply(None, ToolAction("transfer", t.transfer.announcement, target=t.transfer.to))
        if t.take_message is not None:
            self.offered = "message"
            return ToolReply("I'm sorry, I can't put you through to someone right now, but I can take a message. "
                             "Would you like to leave one?")  # fmt: skip
        return None

    def offer(self, dont_know: str) -> str:
        """The agent's reply to a question the facts cannot answer (``dont_know``), with the tools'
        offer: the caller's "yes" next turn takes it."""
        lead = dont_know.split(". ")[0].rstrip(".") + "."
        t = self.tools
        if t.take_message is not None and t.transfer is not None:
            self.offered = "either"
            return f"{lead} I can take a message, or put you through to someone. Which would you prefer?"
        if t.take_message is not None:
            self.offered = "message"
            return f"{lead} Would you like to leave a message for {t.take_message.for_whom}?"
        if t.transfer is not None:
            self.offered = "transfer"
            return f"{lead} Would you like me to put you through to someone?"
        return dont_know

    def after_failure(self, apology: str) -> str:
        """What the caller hears when a tool failed (the calendar is down, ...): ``apology``, then a
        message offered, which a "yes" next turn takes — also when the pipeline declares no
        ``take_message`` (a failed tool never leaves the caller with nothing to do)."""
        if self.tools.take_message is None:
            self.tools = self.tools.model_copy(update={"take_message": TakeMessageTool()})
        self.offered = "message"
        if "message" not in apology:
            apology = f"{apology} I can take a message for {self.tools.take_message.for_whom}."  # type: ignore[union-attr]
        return f"{apology} Would you like to leave one?"

    def transfer_failed(self, unavailable: bool = False) -> str:
        """What the caller hears when the call cannot be handed over (``unavailable``: this line has
        no provider to do it); a message is offered instead when the pipeline takes messages."""
        lead = ("I'm sorry, I can't transfer calls on this line." if unavailable
                else "I'm sorry, I couldn't put you through right now.")  # fmt: skip
        if self.tools.take_message is not None:
            self.offered = "message"
            return f"{lead} Would you like to leave a message instead?"
        return f"{lead} Please try calling again later. Is there anything else I can help with?"
