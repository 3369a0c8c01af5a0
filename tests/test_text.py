import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from mixdata.text import (
    char_repetition,
    clean_text,
    dedup_text,
    special_char_ratio,
    stopword_ratio,
    word_count,
    word_repetition,
    words,
)

texts = st.text(max_size=300)
word_lists = st.lists(st.from_regex(r"[a-z]{1,8}", fullmatch=True), min_size=1, max_size=40)


def test_clean_text_repairs_mojibake_and_entities():
    assert clean_text("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.") == \
        "The Mona Lisa doesn’t have eyebrows."
    assert clean_text("caf&eacute; &amp; bar") == "café & bar"


def test_clean_text_normalises_whitespace_and_keeps_paragraphs():
    raw = "  one\u00a0 two\tthree \r\n\n\n\n  four\u3000five  \n"
    assert clean_text(raw) == "one two three\n\nfour five"


def test_clean_text_keeps_typography_and_cjk_punctuation():
    assert clean_text("“quoted” don’t") == "“quoted” don’t"
    assert clean_text("你好，世界。（测试）") == "你好，世界。（测试）"


def test_clean_text_is_stable_when_tidying_exposes_mojibake():
    # Hypothesis found it: one pass gave 'À†', which a second pass repairs to 'ˠ'
    assert clean_text("\xa0À\x86") == clean_text(clean_text("\xa0À\x86")) == "ˠ"


def test_clean_text_composes_to_nfc_and_drops_control_characters():
    assert clean_text("cafe\u0301") == "café"
    assert clean_text("a\x00b\x07c") == "abc"


@settings(max_examples=200, deadline=None)
@given(texts)
def test_clean_text_output_is_tidy_nfc_and_stable(raw):
    out = clean_text(raw)
    assert out == out.strip()
    assert "  " not in out and "\t" not in out and "\r" not in out and "\n\n\n" not in out
    assert unicodedata.is_normalized("NFC", out)
    assert clean_text(out) == out


def test_words_keep_inner_apostrophes():
    assert words("Don't stop, l'eau 42!") == ["Don't", "stop", "l'eau", "42"]


@given(word_lists, word_lists)
def test_word_count_adds_over_concatenation(a, b):
    assert word_count(" ".join(a) + " " + " ".join(b)) == len(a) + len(b)


def test_char_repetition_examples():
    assert char_repetition("abcdefghij" * 2) == 1.0
    assert char_repetition("abcdefghijklmnopqrstuvwxyz") == 0.0
    assert char_repetition("short") == 0.0
    # "0123456789" twice (20 of 25 characters covered), separated by five unique letters.
    assert char_repetition("0123456789vwxyz0123456789") == 20 / 25


def test_word_repetition_examples():
    # words 0-2 and 3-5 form the repeated 3-gram "the cat sat"; "on" and "mat" are not covered.
    assert word_repetition("The cat sat the cat sat on mat") == 6 / 8
    assert word_repetition("one two three four five") == 0.0


@given(texts)
def test_ratios_stay_between_zero_and_one(text):
    for measure in (char_repetition, word_repetition, special_char_ratio, stopword_ratio):
        assert 0.0 <= measure(text) <= 1.0


@given(st.text(min_size=10, max_size=40), st.integers(min_value=2, max_value=4))
def test_a_text_repeated_is_fully_repetitive(chunk, times):
    assert char_repetition(chunk * times) == 1.0


@given(word_lists.filter(lambda w: len(w) >= 3), st.integers(min_value=2, max_value=3))
def test_repeated_word_sequences_are_fully_repetitive(seq, times):
    assert word_repetition(" ".join(seq * times)) == 1.0


@given(st.text(alphabet=st.characters(categories=["Lu", "Ll", "Nd", "Zs"])))
def test_alphanumeric_text_has_no_special_characters(text):
    assert special_char_ratio(text) == 0.0


def test_special_and_stopword_ratios():
    assert special_char_ratio("a!b c") == 1 / 4
    assert stopword_ratio("The cat and the dog") == 3 / 5
    assert stopword_ratio("") == 0.0


def test_dedup_text_ignores_case_and_spacing_only():
    assert dedup_text("Hello   World\n") == dedup_text("hello world")
    assert dedup_text("hello world") != dedup_text("hello, world")
