"""Reading tokenized SFT and preference examples; the loss-mask checks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.examples import check_sft_example, read_preferences, read_sft


def test_real_examples_train_every_reply_through_its_end_of_turn(sft_dir, chat_info):
    from curation.tokens.chat import ChatTokens

    sft = read_sft(sft_dir)
    tokens = ChatTokens.of(chat_info)
    end, header = tokens.end, 1 + len(tokens.newline)
    assert len(sft) == 48 and sft.end_id == end
    for ids, mask in zip(sft.input_ids, sft.loss_mask):
        assert mask[0] == 0 and mask[1:].sum() > 0
        trained = np.flatnonzero(mask)
        # one assistant reply: a single contiguous span whose last token is <|end|>
        assert (np.diff(trained) == 1).all()
        assert ids[trained[-1]] == end
        # the span starts right after the "<|assistant|>\n" header, which is not trained
        assert ids[trained[0] - header] == tokens.roles["assistant"]


def test_mask_checks_name_the_example_and_the_fix():
    ids = np.array([1, 5, 6, 7, 9])
    check_sft_example(ids, np.array([0, 0, 1, 1, 1]), 9, "x")
    with pytest.raises(ValueError, match="x: the loss mask has no trained token"):
        check_sft_example(ids, np.zeros(5, np.uint8), 9, "x")
    with pytest.raises(ValueError, match="ending at token 3 does not end on the end-of-turn id 9"):
        check_sft_example(ids, np.array([0, 0, 1, 1, 0]), 9, "x")
    with pytest.raises(ValueError, match="BOS"):
        check_sft_example(ids, np.array([1, 0, 1, 1, 1]), 9, "x")
    with pytest.raises(ValueError, match="5 ids but 4"):
        check_sft_example(ids, np.array([0, 1, 1, 1]), 9, "x")


def test_a_shard_with_an_untrained_example_is_refused(sft_dir, tmp_path):
    table = pq.read_table(sft_dir / "gsm8k.parquet")
    masks = table.column("loss_mask").to_pylist()
    masks[3] = [0] * len(masks[3])
    bad = table.set_column(table.schema.get_field_index("loss_mask"), "loss_mask",
                           pa.array(masks, pa.list_(pa.uint8())))
    (tmp_path / "manifest.json").write_bytes((sft_dir / "manifest.json").read_bytes())
    pq.write_table(bad, tmp_path / "gsm8k.parquet")
    with pytest.raises(ValueError, match="example 3: the loss mask has no trained token"):
        read_sft(tmp_path)


def test_kind_mismatch_and_missing_data_are_explained(sft_dir, pref_dir, tmp_path):
    with pytest.raises(ValueError, match="'sft' examples, not 'preference'"):
        read_preferences(sft_dir)
    with pytest.raises(FileNotFoundError, match="crucible tokenize --kind sft"):
        read_sft(tmp_path)


def test_preference_pairs_end_replies_on_end_of_turn(pref_dir, chat_info):
    from curation.tokens.chat import ChatTokens

    pairs = read_preferences(pref_dir)
    tokens = ChatTokens.of(chat_info)
    assert len(pairs) > 10 and pairs.margin is None
    for p, c, r in zip(pairs.prompt_ids, pairs.chosen_ids, pairs.rejected_ids):
        assert p[0] == tokens.bos and c[-1] == tokens.end and r[-1] == tokens.end
    sub = pairs.subset([2, 0])
    assert np.array_equal(sub.chosen_ids[1], pairs.chosen_ids[0])
