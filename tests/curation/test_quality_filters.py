"""The heuristic quality filters (gopher_quality, gopher_repetition, c4, fineweb): each rule on a
document that just passes and one that just fails, with the exact statistic; rule order; empty
text; C4's line cleaning; real prose and boilerplate; and the vectorised statistics against a
plain per-document Python reference."""

import random
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.filters.c4 import C4Quality, C4QualityConfig
from curation.filters.fineweb import FineWebQuality, FineWebQualityConfig
from curation.filters.gopher import (GopherQuality, GopherQualityConfig, GopherRepetition,
                                     GopherRepetitionConfig)
from curation.registry import build_step

# Moby-Dick, chapter 1 (Project Gutenberg #2701, public domain): two paragraphs, unwrapped.
PROSE = (
    "Call me Ishmael. Some years ago--never mind how long precisely--having little or no money in "
    "my purse, and nothing particular to interest me on shore, I thought I would sail about a "
    "little and see the watery part of the world. It is a way I have of driving off the spleen "
    "and regulating the circulation. Whenever I find myself growing grim about the mouth; "
    "whenever it is a damp, drizzly November in my soul; whenever I find myself involuntarily "
    "pausing before coffin warehouses, and bringing up the rear of every funeral I meet; and "
    "especially whenever my hypos get such an upper hand of me, that it requires a strong moral "
    "principle to prevent me from deliberately stepping into the street, and methodically "
    "knocking people's hats off--then, I account it high time to get to sea as soon as I can. "
    "This is my substitute for pistol and ball. With a philosophical flourish Cato throws "
    "himself upon his sword; I quietly take to the ship. There is nothing surprising in this. If "
    "they but knew it, almost all men in their degree, some time or other, cherish very nearly "
    "the same feelings towards the ocean with me.\n"
    "\n"
    "There now is your insular city of the Manhattoes, belted round by wharves as Indian isles by "
    "coral reefs--commerce surrounds it with her surf. Right and left, the streets take you "
    "waterward. Its extreme downtown is the battery, where that noble mole is washed by waves, "
    "and cooled by breezes, which a few hours previous were out of sight of land. Look at the "
    "crowds of water-gazers there."
)

SAMPLE_SHARD = Path(__file__).resolve().parents[2] / "data/sample/raw/shard-0000.parquet"


def make_batch(texts) -> pa.RecordBatch:
    return pa.record_batch({"id": [str(i) for i in range(len(texts))],
                            "text": pa.array(texts, pa.string())})


def decide(step, texts):
    """Per row: the rule that rejected it (None if kept), and the signal columns as lists."""
    result = step.decide(make_batch(texts))
    keep = np.asarray(result.keep)
    reasons = [None if k else r for k, r in zip(keep, result.reason.to_pylist())]
    return reasons, {name: col.to_pylist() for name, col in result.columns.items()}


def filler(n_chars: int, tag: str = "f") -> str:
    """Distinct words (``f000 f001 ...``) joined by single spaces, exactly ``n_chars`` long."""
    k = (n_chars + 1) // 5
    words = [f"{tag}{i:03d}" for i in range(k)]
    words[-1] += "x" * (n_chars - (5 * k - 1))
    text = " ".join(words)
    assert len(text) == n_chars
    return text


# ---------------------------------------------------------------------------------------------
# gopher_quality

def doc(*words) -> str:
    return " ".join(words)


BASE = ["the", "and"] + ["abcd"] * 48  # 50 words, mean length 3.96, 2 stop words: passes


def test_gopher_quality_word_count_bounds():
    reasons, cols = decide(GopherQuality(), [doc(*BASE), doc(*BASE[:49]),
                                             doc(*BASE, *["abcd"] * 99_950),
                                             doc(*BASE, *["abcd"] * 99_951)])
    assert reasons == [None, "gopher_short_doc", None, "gopher_long_doc"]
    assert cols["gopher_quality_word_count"] == [50, 49, 100_000, 100_001]


def test_gopher_quality_mean_word_length_bounds():
    at_3 = ["the", "and"] + ["abc"] * 48
    below_3 = ["the", "and", "ab"] + ["abc"] * 47  # 149 / 50 = 2.98
    at_10 = ["the", "and"] + ["abcdefghij"] * 47 + ["x" * 24]  # 500 / 50
    above_10 = ["the", "and"] + ["abcdefghij"] * 47 + ["x" * 25]  # 501 / 50
    reasons, cols = decide(GopherQuality(), [doc(*at_3), doc(*below_3), doc(*at_10),
                                             doc(*above_10)])
    assert reasons == [None, "gopher_below_avg_threshold", None, "gopher_above_avg_threshold"]
    assert cols["gopher_quality_mean_word_length"] == pytest.approx([3.0, 2.98, 10.0, 10.02])


def test_gopher_quality_words_lose_edge_punctuation_and_symbols_are_not_words():
    punctuated = ["the", "and"] + ["(abcd)."] * 48
    with_dashes = BASE + ["-", "|", "--"]
    reasons, cols = decide(GopherQuality(), [doc(*punctuated), doc(*with_dashes)])
    assert reasons == [None, None]
    assert cols["gopher_quality_mean_word_length"] == pytest.approx([3.96, 3.96])
    assert cols["gopher_quality_word_count"] == [50, 50]


def test_gopher_quality_hash_and_ellipsis_per_word():
    def with_marked(n, mark):
        return doc(*(["the", "and"] + [mark] * n + ["abcd"] * (48 - n)))

    texts = [with_marked(5, "#abcd"), with_marked(6, "#abcd"), with_marked(5, "ab..."),
             doc(*(["the", "and", "ab…"] + ["ab..."] * 5 + ["abcd"] * 42))]
    reasons, cols = decide(GopherQuality(), texts)
    assert reasons == [None, "gopher_too_many_hashes", None, "gopher_too_many_ellipsis"]
    assert cols["gopher_quality_hash_ratio"] == pytest.approx([0.10, 0.12, 0.0, 0.0])
    assert cols["gopher_quality_ellipsis_ratio"] == pytest.approx([0.0, 0.0, 0.10, 0.12])


def test_gopher_quality_bullet_lines():
    line = "the abcd abcd abcd abcd"
    nine = "\n".join(["- " + line] * 5 + ["  • " + line] * 4 + [line])
    ten = "\n".join(["- " + line] * 6 + ["• " + line] * 4)
    reasons, cols = decide(GopherQuality(), [nine, ten])
    assert reasons == [None, "gopher_too_many_bullets"]
    assert cols["gopher_quality_bullet_line_frac"] == pytest.approx([0.9, 1.0])


def test_gopher_quality_lines_ending_with_ellipsis():
    line = "the abcd abcd abcd abcd abcd"
    three = "\n".join([line + "..."] * 2 + [line + "…  "] + [line] * 7) + "\n"
    four = "\n".join([line + "..."] * 4 + [line] * 6)
    reasons, cols = decide(GopherQuality(), [three, four])
    assert reasons == [None, "gopher_too_many_end_ellipsis"]
    # The final newline closes the last line rather than opening an 11th (str.splitlines).
    assert cols["gopher_quality_ellipsis_line_frac"] == pytest.approx([0.3, 0.4])


def test_gopher_quality_words_with_a_letter():
    reasons, cols = decide(GopherQuality(), [
        doc(*(["the", "and"] + ["abcd"] * 38 + ["1234"] * 10)),
        doc(*(["the", "and"] + ["abcd"] * 37 + ["1234"] * 11)),
    ])
    assert reasons == [None, "gopher_below_alpha_threshold"]
    assert cols["gopher_quality_alpha_word_frac"] == pytest.approx([0.8, 0.78])


def test_gopher_quality_stop_words_are_counted_case_sensitively_without_punctuation():
    reasons, cols = decide(GopherQuality(), [
        doc(*(["the,", "(with)"] + ["abcd"] * 48)),
        doc(*(["the", "The", "AND"] + ["abcd"] * 47)),
    ])
    assert reasons == [None, "gopher_enough_stop_words"]
    assert cols["gopher_quality_stop_word_count"] == [2, 1]


def test_gopher_quality_first_failing_rule_wins():
    reasons, _ = decide(GopherQuality(), [
        doc(*["ab"] * 10),  # short, below average length, no stop words
        doc(*["ab"] * 50),  # below average length, no stop words
        doc(*(["#abc"] * 50)),  # hashes, no stop words
    ])
    assert reasons == ["gopher_short_doc", "gopher_below_avg_threshold", "gopher_too_many_hashes"]


def test_gopher_quality_rules_can_be_turned_off():
    step = GopherQuality(GopherQualityConfig(min_doc_words=None, min_stop_words=None))
    reasons, _ = decide(step, [doc("abcd", "abcd")])
    assert reasons == [None]


# ---------------------------------------------------------------------------------------------
# gopher_repetition

NO_REPETITION_RULES = dict(dup_para_frac=None, dup_para_char_frac=None, dup_line_frac=None,
                           dup_line_char_frac=None, top_n_grams={}, dup_n_grams={})


def repetition_only(**rule) -> GopherRepetition:
    """A gopher_repetition step with every rule off except ``rule``."""
    return GopherRepetition(GopherRepetitionConfig(**{**NO_REPETITION_RULES, **rule}))


def test_gopher_repetition_duplicate_paragraph_fraction():
    unique = [filler(60, tag=t) for t in "abcdef"]
    passes = "\n\n".join(unique + ["same"] * 4)  # 3 repeats of 10 paragraphs
    fails = "\n\n\n".join(unique + ["same"] * 5)  # 4 of 11; runs of 3 newlines split too
    reasons, cols = decide(repetition_only(dup_para_frac=0.3), [passes, fails])
    assert reasons == [None, "gopher_dup_para_frac"]
    assert cols["gopher_repetition_dup_para_frac"] == pytest.approx([0.3, 4 / 11])


def test_gopher_repetition_duplicate_paragraph_characters():
    # 1 repeat of 4 paragraphs; the repeated one holds len(R) of 5 len(R) characters.
    passes = "\n\n".join([filler(150, "a"), filler(144, "b"), filler(100, "r"), filler(100, "r")])
    fails = "\n\n".join([filler(150, "a"), filler(144, "b"), filler(101, "r"), filler(101, "r")])
    assert len(passes) == 500
    reasons, cols = decide(repetition_only(dup_para_frac=0.3, dup_para_char_frac=0.2),
                           [passes, fails])
    assert reasons == [None, "gopher_dup_para_char_frac"]
    assert cols["gopher_repetition_dup_para_frac"] == pytest.approx([0.25, 0.25])
    assert cols["gopher_repetition_dup_para_char_frac"] == pytest.approx([0.2, 101 / 502])


def test_gopher_repetition_duplicate_line_fraction_and_characters():
    unique = [filler(60, tag=t) for t in "abcdef"]
    lines_pass = "\n".join(unique + ["same"] * 4)
    lines_fail = "\n\n".join(unique[:3]) + "\n" + "\n".join(unique[3:] + ["same"] * 5)
    chars_pass = "\n".join([filler(150, "a"), filler(147, "b"), filler(100, "r"),
                            filler(100, "r")])
    chars_fail = "\n".join([filler(150, "a"), filler(147, "b"), filler(101, "r"),
                            filler(101, "r")])
    assert len(chars_pass) == 500
    step = repetition_only(dup_line_frac=0.3, dup_line_char_frac=0.2)
    reasons, cols = decide(step, [lines_pass, lines_fail, chars_pass, chars_fail])
    assert reasons == [None, "gopher_dup_line_frac", None, "gopher_dup_line_char_frac"]
    # Lines split on \n+: the blank lines in lines_fail are no lines at all.
    assert cols["gopher_repetition_dup_line_frac"] == pytest.approx([0.3, 4 / 11, 0.25, 0.25])
    assert cols["gopher_repetition_dup_line_char_frac"][2:] == pytest.approx([0.2, 101 / 502])


@pytest.mark.parametrize("n,limit", [(2, 0.20), (3, 0.18), (4, 0.16)])
def test_gopher_repetition_top_ngram(n, limit):
    phrase = " ".join(["aa", "bb", "cc", "dd"][:n])  # 3n - 1 characters, 4 times
    covered = 4 * len(phrase)
    just_fits = int(np.ceil(covered / limit))  # smallest text length that keeps the fraction
    texts = [" ".join([phrase] * 4 + [filler(length - 4 * len(phrase) - 4)])
             for length in (just_fits, just_fits - 1)]
    assert [len(t) for t in texts] == [just_fits, just_fits - 1]
    reasons, cols = decide(repetition_only(top_n_grams={n: limit}), texts)
    assert reasons == [None, f"gopher_top_{n}_gram"]
    assert cols[f"gopher_repetition_top_{n}gram_char_frac"] == pytest.approx(
        [covered / just_fits, covered / (just_fits - 1)])


def test_gopher_repetition_top_ngram_ties_and_unrepeated_text_follow_datatrove():
    # "bb cc" and "cc dd" both occur twice; Counter.most_common picks the one seen first.
    tie = "aa bb cc dd ee bb cc dd"
    # No 2-gram repeats: the first one, "one two", counts (as datatrove's find_top_duplicate).
    unrepeated = "one two three four"
    _, cols = decide(repetition_only(top_n_grams={2: 1.0}), [tie, unrepeated, "single"])
    assert cols["gopher_repetition_top_2gram_char_frac"] == pytest.approx(
        [2 * len("bb cc") / len(tie), len("one two") / len(unrepeated), 0.0])


def test_gopher_repetition_duplicated_ngrams_count_every_occurrence_once():
    # "a01 .. a05" twice: 10 words of 3 characters are covered, first occurrence included.
    five = " ".join(f"a{i:02d}" for i in range(1, 6))
    passes = " ".join([five, five, filler(200 - 2 * len(five) - 2)])
    fails = " ".join([five, five, filler(199 - 2 * len(five) - 2)])
    # "b01 .. b06" twice: two overlapping repeated 5-grams cover 6 words per copy, not 10.
    six = " ".join(f"b{i:02d}" for i in range(1, 7))
    overlapping = " ".join([six, six, filler(300)])
    reasons, cols = decide(repetition_only(dup_n_grams={5: 0.15}), [passes, fails, overlapping])
    assert reasons == [None, "gopher_duplicated_5_n_grams", None]
    assert cols["gopher_repetition_dup_5gram_char_frac"] == pytest.approx(
        [30 / 200, 30 / 199, 36 / len(overlapping)])


def test_gopher_repetition_n_gram_sizes_in_any_order():
    step = GopherRepetition(GopherRepetitionConfig(top_n_grams={6: 1.0, 1: 1.0},
                                                   dup_n_grams={3: 1.0}))
    words = "aa bb cc aa bb cc dd"
    _, cols = decide(step, [words])
    assert cols["gopher_repetition_top_1gram_char_frac"] == pytest.approx([4 / len(words)])
    assert cols["gopher_repetition_top_6gram_char_frac"] == pytest.approx([17 / len(words)])
    assert cols["gopher_repetition_dup_3gram_char_frac"] == pytest.approx([12 / len(words)])
    assert [k for k in cols if "gram" in k] == [
        "gopher_repetition_top_1gram_char_frac", "gopher_repetition_top_6gram_char_frac",
        "gopher_repetition_dup_3gram_char_frac"]


def test_gopher_repetition_counts_repeats_within_a_document_only():
    text = "\n".join(filler(40, t) for t in "abc")
    _, cols = decide(GopherRepetition(), [text, text])
    assert cols["gopher_repetition_dup_line_frac"] == [0.0, 0.0]
    assert cols["gopher_repetition_dup_5gram_char_frac"] == [0.0, 0.0]


def test_gopher_repetition_rule_order_follows_datatrove():
    para = filler(80)
    reasons, _ = decide(GopherRepetition(), [
        "\n\n".join([para] * 4),  # every paragraph, line and n-gram repeats
        "\n".join([para] * 4),  # one paragraph; its lines repeat
        " ".join(["spam", "eggs"] * 40),  # one line; a 2-gram dominates
        " ".join([filler(100, "a"), filler(100, "a"), filler(300, "b")]),  # repeated 5-grams
    ])
    assert reasons == ["gopher_dup_para_frac", "gopher_dup_line_frac", "gopher_top_2_gram",
                       "gopher_duplicated_5_n_grams"]


# ---------------------------------------------------------------------------------------------
# c4

def c4_doc(*lines) -> str:
    return "\n".join(lines)


def test_c4_cleans_lines_to_the_exact_expected_text():
    text = c4_doc(
        "Welcome to our site",  # no end mark
        "This is the first real sentence of the page.",
        "Please enable JavaScript to view the comments.",  # javascript
        "Read our Privacy Policy for more details.",  # policy phrase
        "Too short.",  # two words
        "  The second line has a citation[1] and an edit mark[edit].  ",
        "Wait for it...",  # ellipsis
        "Look at " + "x" * 1001 + " here.",  # a word over 1000 characters
        'She said "hello there."',
        "It's the third sentence! And a fourth one? Yes, a fifth.",
    )
    step = C4Quality()
    kept = list(step(iter([make_batch([text])])))
    assert len(kept) == 1
    assert kept[0].column("text").to_pylist() == [
        "This is the first real sentence of the page.\n"
        "The second line has a citation and an edit mark.\n"
        'She said "hello there."\n'
        "It's the third sentence! And a fourth one? Yes, a fifth."]
    assert kept[0].column("c4_kept_lines").to_pylist() == [4]
    assert kept[0].column("c4_removed_lines").to_pylist() == [6]
    assert kept[0].column("c4_sentences").to_pylist() == [6]


def test_c4_min_sentences():
    five = c4_doc("One sentence is here. Two sentences are here.",
                  "Three is a number! Is four one too? Five is the last.")
    four = c4_doc("One sentence is here. Two sentences are here.",
                  "Three is a number! Four 3.5 stays one.")
    reasons, cols = decide(C4Quality(), [five, four])
    assert reasons == [None, "c4_too_few_sentences"]
    assert cols["c4_sentences"] == [5, 4]


def test_c4_page_rejects_come_from_kept_lines_and_the_first_one_wins():
    body = "This line is fine. It has two sentences.\nAnd three more here. Four. Five and six."
    reasons, _ = decide(C4Quality(), [
        body + "\nLorem ipsum dolor sit amet.",
        body + "\nThe object is {a: 1} here.",
        body + "\nLorem ipsum without an end mark",  # the line is dropped first: page kept
        body + "\nEnable javascript: {x} to continue.",  # dropped as javascript before the {
        body + "\nThe { comes first here.\nThen lorem ipsum dolor sit.",
        body + "\nLorem ipsum comes first here.\nThen the { bracket.",
    ])
    assert reasons == ["c4_lorem_ipsum", "c4_curly_bracket", None, None, "c4_curly_bracket",
                       "c4_lorem_ipsum"]


def test_c4_rules_can_be_turned_off():
    body = "This line is fine. It has two sentences.\nAnd three more here. Four. Five and six."
    text = body + "\nSee the note[2] for JavaScript and lorem ipsum {x}.\nShort one"
    step = C4Quality(C4QualityConfig(
        remove_citations=False, filter_no_terminal_punct=False, filter_javascript=False,
        filter_lorem_ipsum=False, filter_curly_bracket=False, min_words_per_line=None))
    reasons, cols = decide(step, [text])
    assert reasons == [None]
    assert cols["text"] == [text]


def test_c4_empty_input_and_empty_output():
    no_sentences = C4Quality(C4QualityConfig(min_num_sentences=None))
    reasons, _ = decide(no_sentences, ["", None, " \n ", "Menu\nHome\nContact us"])
    assert reasons == ["c4_empty_doc"] * 3 + ["c4_empty_after_cleaning"]


def test_c4_rejected_rows_keep_their_original_text():
    short = "Only one sentence here."
    step = C4Quality()
    kept = list(step(iter([make_batch([PROSE, short])])))
    rejected = step.sink.table()
    assert kept[0].column("id").to_pylist() == ["0"]
    assert rejected.column("text").to_pylist() == [short]
    assert rejected.column("reason").to_pylist() == ["c4:c4_too_few_sentences"]


# ---------------------------------------------------------------------------------------------
# fineweb

def test_fineweb_line_punctuation_ratio():
    punct = "This long enough line ends with a stop."
    bare = "This long enough line has no final stop"
    at_limit = "\n".join([punct] * 3 + [bare] * 22)  # 3 / 25 = 0.12
    under = "\n".join([punct] * 5 + [bare] * 37)  # 5 / 42
    step = FineWebQuality(FineWebQualityConfig(char_duplicates_ratio=None))
    reasons, cols = decide(step, [at_limit, under])
    assert reasons == [None, "fineweb_line_punct_ratio"]
    assert cols["fineweb_line_punct_ratio"] == pytest.approx([0.12, 5 / 42])
    zero = FineWebQuality(FineWebQualityConfig(char_duplicates_ratio=None,
                                               line_punct_exclude_zero=True))
    assert decide(zero, ["\n".join([bare] * 5)])[0] == [None]


def test_fineweb_short_lines():
    long_lines = [filler(40, t) + "." for t in "abcdefghij"]
    short_30 = [filler(29, t) + "." for t in "klmnopqrst"]  # 30 characters: still short
    two_thirds = "\n".join(short_30[:6] + long_lines[:3])  # 6 / 9
    seven_tenths = "\n".join(short_30[:7] + long_lines[:3])
    reasons, cols = decide(FineWebQuality(), [two_thirds, seven_tenths])
    assert reasons == [None, "fineweb_short_line_ratio"]
    assert cols["fineweb_short_line_ratio"] == pytest.approx([6 / 9, 0.7])


def test_fineweb_duplicate_line_characters():
    def text(repeated_len):
        repeated = filler(repeated_len - 1, "r") + "."
        unique_len = 1000 - 2 * repeated_len
        uniques = [filler(unique_len // 4 - 1, t) + "." for t in "abcd"]
        uniques[-1] = filler(unique_len - 3 * (unique_len // 4) - 1, "d") + "."
        return "\n".join(uniques[:2] + [repeated] + uniques[2:] + [repeated])

    at_limit, over = text(10), text(11)
    assert len(at_limit.replace("\n", "")) == 1000
    reasons, cols = decide(FineWebQuality(), [at_limit, over])
    assert reasons == [None, "fineweb_char_dup_ratio"]
    assert cols["fineweb_char_dup_ratio"] == pytest.approx([0.01, 0.011])


def test_fineweb_newlines_per_word():
    lines = [f"Supercalifragilistic{t} extraordinarily magnificent." for t in "abcdefghij"]
    at_limit = "\n".join(lines)  # 9 newlines, 30 words
    over = "\n".join(lines[:-1] + ["Supercalifragilistic extraordinarily-magnificent."])
    reasons, cols = decide(FineWebQuality(), [at_limit, over])
    assert reasons == [None, "fineweb_list_ratio"]
    assert cols["fineweb_newline_ratio"] == pytest.approx([0.3, 9 / 29])


def test_fineweb_rule_order_and_empty_text():
    reasons, _ = decide(FineWebQuality(), [
        "", None, "\n \n\t\n",
        "short\nlines\nwithout\nstops",  # punctuation and short lines both fail
        "A.\nB.\nC.\nD.",  # short lines
    ])
    assert reasons == ["fineweb_empty_doc"] * 3 + ["fineweb_line_punct_ratio",
                                                   "fineweb_short_line_ratio"]


# ---------------------------------------------------------------------------------------------
# all four filters

ALL_FILTERS = [GopherQuality, GopherRepetition, C4Quality, FineWebQuality]


@pytest.mark.parametrize("cls", ALL_FILTERS, ids=lambda c: c.name)
def test_real_prose_passes_and_empty_text_is_rejected(cls):
    step = cls()
    out = list(step(iter([make_batch([PROSE, None, ""])])))
    assert out[0].column("id").to_pylist() == ["0"]
    if cls is C4Quality:  # every line of the prose is kept as it was
        assert out[0].column("text").to_pylist() == [PROSE.replace("\n\n", "\n")]
    rejected = step.sink.table()
    prefix = cls.name.split("_")[0]
    assert rejected.column("reason").to_pylist() == [f"{cls.name}:{prefix}_empty_doc"] * 2
    signals = [n for n in out[0].schema.names if n.startswith(f"{cls.name}_")]
    assert signals and all(n in rejected.schema.names for n in signals)
    assert {str(out[0].schema.field(n).type) for n in signals} <= {"int32", "float"}


@pytest.mark.parametrize("text_type", [pa.string(), pa.large_string(), pa.string_view()])
def test_any_arrow_string_type_is_read_and_c4_writes_it_back(text_type):
    batch = pa.record_batch({"id": ["0", "1"],
                             "text": pa.array([PROSE, None], pa.string()).cast(text_type)})
    for cls in ALL_FILTERS:
        assert np.asarray(cls().decide(batch).keep).tolist() == [True, False]
    cleaned = C4Quality().decide(batch).columns["text"]
    assert cleaned.type == text_type
    assert cleaned.to_pylist() == [PROSE.replace("\n\n", "\n"), None]


BOILERPLATE = "\n".join(["Home", "About us", "Products", "Contact", "Login", "Sign up"] * 3)
SPAM = " ".join(["buy cheap pills online now"] * 30)


@pytest.mark.parametrize("cls,boilerplate,spam", [
    (GopherQuality, "gopher_short_doc", "gopher_enough_stop_words"),
    (GopherRepetition, "gopher_dup_line_frac", "gopher_top_2_gram"),
    (C4Quality, "c4_too_few_sentences", "c4_too_few_sentences"),
    (FineWebQuality, "fineweb_line_punct_ratio", "fineweb_line_punct_ratio"),
], ids=lambda x: x.name if isinstance(x, type) else None)
def test_boilerplate_and_spam_are_rejected(cls, boilerplate, spam):
    reasons, _ = decide(cls(), [BOILERPLATE, SPAM])
    assert reasons == [boilerplate, spam]


def test_steps_build_from_config_mappings_and_check_their_options():
    step = build_step({"step": "gopher_repetition", "top_n_grams": {2: 0.5}, "dup_n_grams": {}},
                      "pipeline[0]")
    assert step.config.top_n_grams == {2: 0.5}
    assert {build_step({"step": name}, "p").name for name in
            ("gopher_quality", "gopher_repetition", "c4", "fineweb")} == {
        "gopher_quality", "gopher_repetition", "c4", "fineweb"}
    with pytest.raises(ValueError, match="dup_line_frac must be in"):
        GopherRepetitionConfig(dup_line_frac=1.5)
    with pytest.raises(ValueError, match="n-gram sizes must be integers >= 1"):
        GopherRepetitionConfig(top_n_grams={0: 0.2})
    with pytest.raises(ValueError, match="min_doc_words .* must not exceed max_doc_words"):
        GopherQualityConfig(min_doc_words=10, max_doc_words=5)
    with pytest.raises(ValueError, match="min_num_sentences must be >= 0"):
        C4QualityConfig(min_num_sentences=-1)
    with pytest.raises(ValueError, match="short_line_thr must be in"):
        FineWebQualityConfig(short_line_thr=2.0)
    with pytest.raises(ValueError, match="no 'text' column"):
        GopherQuality().decide(pa.record_batch({"id": ["a"], "body": ["x"]}))


# ---------------------------------------------------------------------------------------------
# The vectorised statistics against a plain per-document reference.

def _strip_edge_punctuation(word: str) -> str:
    def punct(c):
        return unicodedata.category(c)[0] in "PS"

    start, end = 0, len(word)
    while start < end and punct(word[start]):
        start += 1
    while end > start and punct(word[end - 1]):
        end -= 1
    return word[start:end]


def _repeats(pieces):
    seen, count, chars = set(), 0, 0
    for piece in pieces:
        if piece in seen:
            count, chars = count + 1, chars + len(piece)
        seen.add(piece)
    return count, chars


def _ratio(a, b):
    return a / b if b else 0.0


def reference_gopher_quality(text: str) -> dict:
    tokens = text.split()
    words = [t for t in tokens if any(unicodedata.category(c)[0] not in "PS" for c in t)]
    lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []
    return {
        "word_count": len(words),
        "mean_word_length": _ratio(sum(len(_strip_edge_punctuation(w)) for w in words),
                                   len(words)),
        "hash_ratio": _ratio(text.count("#"), len(tokens)),
        "ellipsis_ratio": _ratio(text.count("...") + text.count("…"), len(tokens)),
        "bullet_line_frac": _ratio(sum(ln.lstrip().startswith(("•", "-")) for ln in lines),
                                   len(lines)),
        "ellipsis_line_frac": _ratio(sum(ln.rstrip().endswith(("...", "…")) for ln in lines),
                                     len(lines)),
        "alpha_word_frac": _ratio(sum(any(c.isalpha() for c in t) for t in tokens), len(tokens)),
        "stop_word_count": sum(_strip_edge_punctuation(t) in
                               {"the", "be", "to", "of", "and", "that", "have", "with"}
                               for t in tokens),
    }


def reference_gopher_repetition(text: str) -> dict:
    n_chars = len(text)
    paragraphs = re.split(r"\n{2,}", text.strip())
    lines = [ln for ln in re.split(r"\n+", text) if ln]
    words = text.split()
    out = {
        "dup_para_frac": _ratio(_repeats(paragraphs)[0], len(paragraphs)),
        "dup_para_char_frac": _ratio(_repeats(paragraphs)[1], n_chars),
        "dup_line_frac": _ratio(_repeats(lines)[0], len(lines)),
        "dup_line_char_frac": _ratio(_repeats(lines)[1], n_chars),
    }
    for n in (2, 3, 4):
        grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
        top, count = Counter(grams).most_common(1)[0] if grams else ("", 0)
        out[f"top_{n}gram_char_frac"] = _ratio(len(top) * count, n_chars)
    for n in range(5, 11):
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        counts = Counter(grams)
        covered = set()
        for i, gram in enumerate(grams):
            if counts[gram] > 1:
                covered.update(range(i, i + n))
        out[f"dup_{n}gram_char_frac"] = _ratio(sum(len(words[i]) for i in covered), n_chars)
    return out


def reference_fineweb(text: str) -> dict:
    lines = [ln for ln in text.split("\n") if ln.strip()]
    return {
        "line_punct_ratio": _ratio(sum(ln.endswith(tuple(".'\"!?")) for ln in lines), len(lines)),
        "short_line_ratio": _ratio(sum(len(ln) <= 30 for ln in lines), len(lines)),
        "char_dup_ratio": _ratio(_repeats(lines)[1], len(text.replace("\n", ""))),
        "newline_ratio": _ratio(text.count("\n"), len(text.split())),
    }


def random_documents(n_docs: int, seed: int = 0) -> list[str]:
    """Documents from a small vocabulary, so words, n-grams, lines and paragraphs repeat."""
    rng = random.Random(seed)
    vocab = ["the", "The", "and", "of", "cat", "sat", "mat", "end.", "(see)", "#tag", "wait...",
             "so…", "-", "•", "42", "café", "naïve", "日本語", "don't", "a", "x" * 12]
    separators = [" "] * 12 + ["  ", "\t", "\n", "\n", "\n\n", "\n\n\n", " \n", "\r\n"]
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(1, 120)):
            parts += [rng.choice(vocab), rng.choice(separators)]
        text = "".join(parts)
        if rng.random() < 0.3:  # a repeated block of lines
            text += "\n" + "\n".join([text[: rng.randint(1, 60)]] * rng.randint(2, 4))
        docs.append(text if rng.random() < 0.9 else " " + text + "\n")
    return docs


def reference_corpus() -> list[str]:
    docs = random_documents(60) + [PROSE, BOILERPLATE, SPAM, "", "   ", "word", "a\n\nb\n"]
    if SAMPLE_SHARD.exists():  # real text of every kind: web, books, 15 languages, edge cases
        docs += pq.read_table(SAMPLE_SHARD, columns=["text"]).column("text").to_pylist()[:80]
    return docs


@pytest.mark.parametrize("cls,reference", [
    (GopherQuality, reference_gopher_quality),
    (GopherRepetition, reference_gopher_repetition),
    (FineWebQuality, reference_fineweb),
], ids=["gopher_quality", "gopher_repetition", "fineweb"])
def test_statistics_match_a_per_document_reference(cls, reference):
    docs = reference_corpus()
    _, cols = decide(cls(), docs)
    for name in reference(docs[0]):
        expected = [reference(text)[name] for text in docs]
        assert cols[f"{cls.name}_{name}"] == pytest.approx(expected, rel=1e-6, abs=1e-6), name


def reference_c4(text: str) -> tuple[str | None, str]:
    """TFDS's ``clean_page`` with datatrove's defaults and our sentence count."""
    kept, sentences = [], 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if any(len(w) > 1000 for w in words):
            continue
        line = re.sub(r"\[\d*\]|\[edit\]|\[citation needed\]", "", line)
        if not line.endswith((".", "?", "!", '"', "'")) or line.endswith("..."):
            continue
        if len(words) < 3:
            continue
        lower = line.lower()
        if "lorem ipsum" in lower:
            return "c4_lorem_ipsum", text
        if "javascript" in lower:
            continue
        if "{" in line:
            return "c4_curly_bracket", text
        if any(p in lower for p in ("terms of use", "privacy policy", "cookie policy",
                                    "uses cookies", "use of cookies", "use cookies")):
            continue
        sentences += max(1, len(re.findall(r"[.!?]+[\"'”’)\]]*(?:\s|$)", line)))
        kept.append(line)
    if sentences < 5:
        return "c4_too_few_sentences", text
    return None, "\n".join(kept).strip()


def test_c4_matches_a_per_document_reference():
    docs = [d for d in reference_corpus() if d.strip() and "\r" not in d]
    docs += [PROSE + "\nNow {brace} here.", PROSE + "\nA lorem ipsum line.",
             "Enable JavaScript now. {x}\n" + PROSE]
    reasons, cols = decide(C4Quality(), docs)
    expected = [reference_c4(text) for text in docs]
    assert reasons == [reason for reason, _ in expected]
    assert cols["text"] == [text for _, text in expected]
