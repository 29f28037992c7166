"""Perplexity filtering: our modified Kneser-Ney estimator against a plain-Python reference and
KenLM, normalisation of every conditional distribution, CCNet perplexity of real English against
shuffled and foreign text, buckets, per-language routing, errors and empty documents.

Trains on a slice of the bundled sample corpus (data/sample/raw): English books, encyclopedia
articles and speeches; the lingua-langid rows give the foreign-language documents.
"""

import math
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.filters.perplexity import Perplexity, PerplexityConfig
from curation.lm import kneser_ney
from curation.lm.model import line_words, load_lm, train_lm
from curation.lm.tokenize import document_lines, normalize_line
from curation.registry import build_step

kenlm = pytest.importorskip("kenlm")
pytest.importorskip("sentencepiece")

RAW = Path(__file__).resolve().parents[2] / "data" / "sample" / "raw"
ORDER = 4


def _rows() -> list[dict]:
    return pa.concat_tables([pq.read_table(p, columns=["text", "source", "source_lang", "dup_of"])
                             for p in sorted(RAW.glob("*.parquet"))]).to_pylist()


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    """English training and held-out documents, and foreign documents, from the sample (labelled
    duplicates left out, so that no held-out document is a copy of a training one)."""
    rows = [r for r in _rows() if r["dup_of"] is None]
    english = [r["text"] for r in rows if r["source"] in ("gutenberg", "wiki-demo", "state-union")]
    foreign = {lang: [r["text"] for r in rows
                      if r["source"] == "lingua-langid" and r["source_lang"] == lang]
               for lang in ("de", "fr")}
    return {"train": english[:50], "held_out": english[-15:], **foreign}


@pytest.fixture(scope="module")
def en_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "en"
    train_lm(corpus["train"], out, order=ORDER, vocab_size=2000)
    return out


@pytest.fixture(scope="module")
def en(en_dir):
    return load_lm(en_dir)


@pytest.fixture(scope="module")
def sentences(corpus, en) -> list[list[str]]:
    """The training lines as the LM saw them (pieces)."""
    lines = [line for text in corpus["train"] for line in document_lines(text)]
    return line_words(en.sp, lines)


@pytest.fixture(scope="module")
def estimated(sentences):
    return kneser_ney.estimate(sentences, order=ORDER)


class ReferenceKN:
    """Interpolated modified Kneser-Ney from Python counters, straight from Chen & Goodman."""

    def __init__(self, sentences, order):
        self.order = order
        raw = [Counter() for _ in range(order)]
        for s in sentences:
            padded = ["<s>", *s, "</s>"]
            for k in range(1, order + 1):
                for i in range(len(padded) - k + 1):
                    raw[k - 1][tuple(padded[i:i + k])] += 1
        counts = [None] * order
        counts[order - 1] = dict(raw[order - 1])
        for k in range(order - 1, 0, -1):
            left = Counter(g[1:] for g in raw[k])
            counts[k - 1] = {g: c if g[0] == "<s>" else left[g] for g, c in raw[k - 1].items()}
        counts[0][("<s>",)] = 0
        self.counts = counts
        self.discounts = [self._discounts(c) for c in counts]
        self.vocab = {g[0] for g in counts[0]} - {"<s>"} | {"<unk>"}
        self.den, self.gamma = [{} for _ in range(order)], [{} for _ in range(order)]
        for k in range(1, order + 1):
            for g, c in counts[k - 1].items():
                h = g[:-1]
                self.den[k - 1][h] = self.den[k - 1].get(h, 0) + c
                self.gamma[k - 1][h] = self.gamma[k - 1].get(h, 0) + self._d(k, c)
        for k in range(order):
            self.gamma[k] = {h: m / self.den[k][h] for h, m in self.gamma[k].items()}

    @staticmethod
    def _discounts(counts):
        t = Counter(c for c in counts.values() if c > 0)
        if any(t[i] == 0 for i in (1, 2, 3, 4)):
            return (0.5, 1.0, 1.5)
        y = t[1] / (t[1] + 2 * t[2])
        d = tuple(i - (i + 1) * y * t[i + 1] / t[i] for i in (1, 2, 3))
        return d if all(0 < d[i - 1] <= i for i in (1, 2, 3)) else (0.5, 1.0, 1.5)

    def _d(self, k, c):
        return 0.0 if c == 0 else self.discounts[k - 1][min(c, 3) - 1]

    def prob(self, word, history) -> float:
        h = tuple(history)[-(self.order - 1):]
        k = len(h) + 1
        lower = (1 / len(self.vocab)) if not h else self.prob(word, h[1:])
        if h not in self.den[k - 1]:
            return lower
        c = self.counts[k - 1].get((*h, word), 0)
        return (c - self._d(k, c)) / self.den[k - 1][h] + self.gamma[k - 1][h] * lower

    def sentence_log10(self, words) -> float:
        words = [w if w in self.vocab else "<unk>" for w in words]
        history, total = ["<s>"], 0.0
        for w in [*words, "</s>"]:
            total += math.log10(self.prob(w, history))
            history.append(w)
        return total


def test_normalisation_follows_ccnet():
    assert normalize_line("  Ünïcode «Quotes» — 1984’s\x07 \u2026 ") == \
        'ünïcode "quotes"  -  0000\'s ...'
    assert document_lines("A\n\n  \nB 2") == ["a", "b 0"]
    assert document_lines(None) == [] and document_lines("") == []


def test_discounts_and_counts_match_the_reference(sentences, estimated):
    ref = ReferenceKN(sentences, ORDER)
    np.testing.assert_allclose(estimated.discounts, np.array(ref.discounts), rtol=1e-12)
    assert estimated.num_grams() == [len(ref.counts[0]) + 1, *map(len, ref.counts[1:])]


def test_conditional_distributions_sum_to_one(sentences, estimated, en_dir):
    rng = np.random.default_rng(0)
    picks = rng.choice(len(sentences), 4, replace=False)
    histories = [["<s>", *sentences[i]][: rng.integers(1, ORDER)] for i in picks]
    histories.append(["<s>", "never-seen", sentences[0][0]])
    for h in histories:
        total = sum(10 ** estimated.log10_conditional(h, w) for w in estimated.vocab)
        assert total == pytest.approx(1.0, abs=1e-4), h
    # The same through KenLM on the written ARPA: p(w | h) = 10 ** (score(h w) - score(h)).
    model = kenlm.Model(str(en_dir / "lm.arpa"))
    for h in histories[:2]:
        text = " ".join(h[1:])
        base = model.score(text, bos=True, eos=False)
        words = [w for w in estimated.vocab if w not in ("<s>", "</s>")]
        total = sum(10 ** (model.score(f"{text} {w}".strip(), bos=True, eos=False) - base)
                    for w in words) + 10 ** (model.score(text, bos=True, eos=True) - base)
        assert total == pytest.approx(1.0, abs=1e-4), h


def test_pruning_drops_rare_ngrams_and_keeps_distributions_normalised(sentences, estimated,
                                                                       tmp_path):
    pruned = kneser_ney.estimate(sentences, order=ORDER, prune=[0, 0, 1, 1])
    full, small = estimated.num_grams(), pruned.num_grams()
    assert small[:2] == full[:2] and small[2] < full[2] / 2 and small[3] < full[3] / 2
    h = ["<s>", *sentences[3][:2]]
    total = sum(10 ** pruned.log10_conditional(h, w) for w in pruned.vocab)
    assert total == pytest.approx(1.0, abs=1e-4)
    kneser_ney.write_arpa(pruned, tmp_path / "pruned.arpa")
    model = kenlm.Model(str(tmp_path / "pruned.arpa"))
    s = sentences[3]
    ours = sum(pruned.log10_conditional(["<s>", *s[:i]], w) for i, w in enumerate([*s, "</s>"]))
    assert model.score(" ".join(s)) == pytest.approx(ours, rel=1e-5)


def test_kenlm_perplexity_equals_the_reference_computation(corpus, sentences, en):
    ref = ReferenceKN(sentences, ORDER)
    docs = corpus["held_out"][:5] + corpus["de"][:2]
    expected = []
    for text in docs:
        words = line_words(en.sp, document_lines(text))
        log10 = sum(ref.sentence_log10(w) for w in words)
        expected.append(10 ** (-log10 / sum(len(w) + 1 for w in words)))
    np.testing.assert_allclose(en.perplexity(docs), expected, rtol=1e-4)


def test_english_scores_lower_than_shuffled_and_foreign_text(corpus, en):
    held = en.perplexity(corpus["held_out"])
    rng = np.random.default_rng(1)
    shuffled = [" ".join(rng.permutation(t.split())) for t in corpus["held_out"]]
    median = np.median(held)
    assert median < np.median(en.perplexity(shuffled)) / 2
    assert median < np.median(en.perplexity(corpus["de"])) / 2
    assert np.all(held < 200)
    assert median < np.median(en.perplexity(corpus["fr"])) / 1.5  # shares much Latin vocabulary


def test_config_records_the_model(en):
    config = en.config
    assert config["order"] == ORDER and config["vocab_size"] <= 2000
    assert len(config["ngram_counts"]) == ORDER and config["training"]["documents"] == 50
    low, high = config["bucket_cutoffs"]
    assert 0 < low < high
    assert {"sentencepiece", "kenlm", "numpy"} <= set(config["versions"])


def test_buckets_split_at_the_reference_percentiles(en):
    low, high = en.config["bucket_cutoffs"]
    ppl = np.array([low * 0.9, low, (low + high) / 2, high * 1.1, np.nan])
    assert en.buckets(ppl).tolist() == ["head", "head", "middle", "tail", None]


def batch(texts, langs) -> pa.RecordBatch:
    return pa.record_batch({"id": [str(i) for i in range(len(texts))],
                            "text": pa.array(texts, pa.string()),
                            "lang": pa.array(langs, pa.string())})


def test_step_routes_by_language_and_filters_by_bucket(corpus, en_dir, en, tmp_path):
    fr_dir = tmp_path / "fr"
    train_lm(corpus["fr"][:-1], fr_dir, order=3, vocab_size=500)
    step = build_step({"step": "perplexity", "models": {"en": str(en_dir), "fr": str(fr_dir)},
                       "keep_buckets": ["head", "middle"]}, "pipeline[0]")
    step = pickle.loads(pickle.dumps(step))  # picklable before setup
    # The two training documents of lowest perplexity (head) and two held-out ones (tail).
    lowest = np.argsort(en.perplexity(corpus["train"]))[:2]
    texts = [*(corpus["train"][i] for i in lowest), *corpus["held_out"][:2], corpus["fr"][-1],
             corpus["de"][0], "", "\n \n", "x"]
    langs = ["en"] * 4 + ["fr", "de", "en", "en", None]
    out = pa.Table.from_batches(list(step(iter([batch(texts, langs)]))))
    rejected = step.sink.table()
    both = pa.concat_tables([out, rejected.drop(["reason"])]) if rejected else out
    by_id = {r["id"]: r for r in both.to_pylist()}
    ppl = [by_id[str(i)]["ppl"] for i in range(len(texts))]
    np.testing.assert_allclose(ppl[:4], en.perplexity(texts[:4]), rtol=1e-6)
    assert ppl[4] == pytest.approx(load_lm(fr_dir).perplexity([texts[4]])[0], rel=1e-6)
    assert ppl[5:] == [None] * 4  # no German model, empty, blank, no language
    assert both.schema.field("ppl").type == pa.float32()
    buckets = [by_id[str(i)]["ppl_bucket"] for i in range(len(texts))]
    assert buckets[5:] == [None] * 4
    assert buckets[:4] == list(en.buckets(np.array(ppl[:4])))
    assert buckets[:4] == ["head", "head", "tail", "tail"]
    tails = [str(i) for i, b in enumerate(buckets) if b == "tail"]
    assert step.counts.rejected == {"perplexity:high_perplexity": len(tails)}
    assert rejected.column("id").to_pylist() == tails
    assert sorted(out.column("id").to_pylist()) == sorted(set(by_id) - set(tails))


def test_max_perplexity_threshold(corpus, en_dir, en):
    texts = corpus["held_out"][:3] + corpus["de"][:3]
    ppl = en.perplexity(texts)
    step = Perplexity(PerplexityConfig(models={"en": str(en_dir)}, max_perplexity=float(
        np.median(ppl))))
    out = pa.Table.from_batches(list(step(iter([batch(texts, ["en"] * 6)]))))
    assert out.column("id").to_pylist() == [str(i) for i in np.flatnonzero(ppl <= np.median(ppl))]
    assert step.counts.rejected == {"perplexity:high_perplexity": int(np.sum(ppl > np.median(ppl)))}


def test_missing_model_names_the_path_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sp\.model is missing.*crucible lm train"):
        load_lm(tmp_path / "nowhere")
    step = Perplexity(PerplexityConfig(models={"en": str(tmp_path / "nowhere")}))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(step(iter([batch(["text"], ["en"])])))
    with pytest.raises(ValueError, match="keep_buckets"):
        PerplexityConfig(models={"en": "x"}, keep_buckets=["best"])


def test_cli_trains_and_scores(corpus, tmp_path, capsys):
    import argparse

    from curation.lm.cli import add_lm_parser

    parser = argparse.ArgumentParser(prog="crucible")
    add_lm_parser(parser.add_subparsers(dest="command", required=True))
    inputs = []
    for i, text in enumerate(corpus["train"][:8]):
        inputs.append(tmp_path / f"doc{i}.txt")
        inputs[-1].write_text(text, encoding="utf-8")
    out = tmp_path / "model"
    args = parser.parse_args(["lm", "train", "--input", *map(str, inputs), "--output", str(out),
                              "--order", "3", "--vocab-size", "500", "--prune", "0", "0", "1",
                              "--reference", *map(str, inputs[:4])])
    assert args.func(args) == 0
    config = load_lm(out).config
    assert config["order"] == 3 and config["prune"] == [0, 0, 1]
    assert config["reference_documents"] == 4 and config["training"]["documents"] == 8
    args = parser.parse_args(["lm", "score", "--model", str(out), "--input", str(inputs[0])])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "documents: 1, scored: 1" in printed and "median" in printed
    args = parser.parse_args(["lm", "score", "--model", str(tmp_path / "none"), "--input",
                              str(inputs[0])])
    assert args.func(args) == 2
    assert "crucible lm train" in capsys.readouterr().err


@pytest.mark.parametrize("order", [3, 5])
def test_tables_match_the_reference_at_other_orders(order, corpus, sentences, en):
    lm = kneser_ney.estimate(sentences, order=order)
    ref = ReferenceKN(sentences, order)
    for words in line_words(en.sp, document_lines(corpus["held_out"][0]))[:3]:
        ours = sum(lm.log10_conditional(["<s>", *words[:i]], w)
                   for i, w in enumerate([*words, "</s>"]))
        assert ours == pytest.approx(ref.sentence_log10(words), rel=1e-9)


def test_without_models_the_step_is_disabled():
    import pyarrow as pa

    from curation.filters.perplexity import Perplexity, PerplexityConfig

    step = Perplexity(PerplexityConfig())
    batch = pa.RecordBatch.from_pydict({"id": ["a"], "text": ["hello"], "lang": ["en"]})
    out = pa.Table.from_batches(list(step(iter([batch]))))
    assert out.column_names == ["id", "text", "lang"] and out.num_rows == 1
    with pytest.raises(ValueError, match="need models"):
        PerplexityConfig(max_perplexity=100.0)
