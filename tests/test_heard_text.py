"""What the caller heard of a reply, from marks or the playback clock."""

from voicecore.transports.base import _Clause, heard_text


def clauses():
    return [
        _Clause("r1", 0, "Sure,", start=0, end=8000),
        _Clause("r1", 1, "we are open on Saturday", start=8000, end=24000),
        _Clause("r1", 2, "from nine to one.", start=24000, end=40000),
    ]


def test_everything_played_without_acknowledgements():
    assert heard_text(clauses(), 40000, needs_ack=False) == "Sure, we are open on Saturday from nine to one."


def test_cut_in_the_middle_of_a_clause_keeps_the_played_share_of_words():
    # half of clause 1 played: "we are" of "we are open on Saturday" (5 words -> 2)
    assert heard_text(clauses(), 16000, needs_ack=False) == "Sure, we are"


def test_with_marks_only_acknowledged_clauses_count_whole():
    cs = clauses()
    cs[0].acked = True
    # the clock says clause 1 is done, but without its mark it only counts by share
    assert heard_text(cs, 24000, needs_ack=True) == "Sure, we are open on Saturday"
    assert heard_text(cs, 12000, needs_ack=True) == "Sure, we"


def test_nothing_heard_before_playback():
    assert heard_text(clauses(), 0, needs_ack=False) == ""
