"""What the agent knows and does: the business's facts (answered from data, checked in every
reply) and, later, its tools."""

from voicecore.agent.facts import FactAnswer, FactBook, FactGuard

__all__ = ["FactAnswer", "FactBook", "FactGuard"]
