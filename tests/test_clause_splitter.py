"""Clause splitting: speech starts at the first short clause, never inside numbers."""

from voicecore.services.tts import ClauseSplitter, speakable


def feed_tokens(splitter: ClauseSplitter, text: str, step: int = 3) -> list[str]:
    out: list[str] = []
    for i in range(0, len(text), step):
        out += splitter.feed(text[i : i + step])
    return out + splitter.flush()


def test_first_clause_is_short_and_later_ones_longer():
    s = ClauseSplitter(first_min_words=1, min_words=4, max_words=18)
    clauses = feed_tokens(s, "Sure, we are open on Saturday, from nine to one. See you soon!")
    assert clauses[0] == "Sure,"
    assert clauses == ["Sure,", "we are open on Saturday,", "from nine to one.", "See you soon!"]


def test_clause_waits_for_the_character_after_the_mark():
    s = ClauseSplitter(first_min_words=1)
    assert s.feed("We open at 8:") == []  # could be 8:00
    assert s.feed("00 sharp, every day") == ["We open at 8:00 sharp,"]


def test_no_split_inside_decimal_numbers():
    s = ClauseSplitter(first_min_words=1, min_words=1)
    assert feed_tokens(s, "It costs 9.50 dollars.") == ["It costs 9.50 dollars."]


def test_too_few_words_keep_accumulating():
    s = ClauseSplitter(first_min_words=3, min_words=3)
    assert s.feed("Yes, ") == []
    assert s.feed("of course, ") == ["Yes, of course,"]


def test_long_run_without_marks_is_cut_on_a_word_boundary():
    s = ClauseSplitter(first_min_words=2, min_words=4, max_words=6, first_max_words=5)
    words = "one two three four five six seven eight nine ten eleven twelve thirteen "
    clauses = s.feed(words)
    assert clauses[0] == "one two three four five"
    assert clauses[1] == "six seven eight nine ten eleven"
    assert all(len(c.split()) <= 6 for c in clauses)


def test_flush_returns_the_rest_and_resets():
    s = ClauseSplitter()
    s.feed("Thank you for calling")
    assert s.flush() == ["Thank you for calling"]
    assert s.flush() == []


def test_markdown_and_emoji_are_not_spoken():
    assert speakable("**Sure!** We're open 😀 on `Monday`") == "Sure! We're open on Monday"
    s = ClauseSplitter(first_min_words=1)
    assert feed_tokens(s, "* * *") == []
