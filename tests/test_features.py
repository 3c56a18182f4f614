"""Tokenisation rules, the feature cache, length-grouped batches and dynamic padding."""

import numpy as np
import pytest

from transfer.data.examples import Example
from transfer.training.features import build_features, load_split
from transfer.training.batches import collate, make_batches, sample_examples
from transfer.training.kinds import IGNORE_INDEX
from transfer.data.tasks import locate_tasks


def test_pairs_are_packed_and_truncated_longest_first(tokenizer, table):
    task = table.task("mednli")
    ex = Example("u1", "one two three four five six seven eight", text_b="alpha beta", label="entailment")
    feats = build_features([ex], task, tokenizer, max_length=9)
    tokens = tokenizer.convert_ids_to_tokens(feats.input_ids[0].tolist())
    # 9 = [CLS] + 5 of a + [SEP] + 2 of b + [SEP]: the longer member lost words first.
    assert tokens == ["[CLS]", "one", "two", "three", "four", "[SEP]", "alpha", "beta", "[SEP]"]
    assert feats.token_type_ids[0].tolist() == [0] * 6 + [1] * 3
    assert feats.targets == [task.labels.index("entailment")]


def test_tagging_labels_sit_on_first_wordpiece_only(tokenizer, table):
    task = table.task("bc5cdr-chemical")
    ex = Example("d.0", ("Naloxone", "reverses", "clonidine"), label=("B", "O", "B"))
    feats = build_features([ex], task, tokenizer, max_length=32)
    tokens = tokenizer.convert_ids_to_tokens(feats.input_ids[0].tolist())
    target = feats.targets[0]
    labelled = [(tok, int(t)) for tok, t in zip(tokens, target) if t != IGNORE_INDEX]
    # one label per word (B=0, O=2) on its first piece; continuation pieces and specials are ignored
    assert labelled == [("na", 0), ("reverse", 2), ("cl", 0)]
    assert [tokens[p] for p in feats.word_starts[0]] == [tok for tok, _ in labelled]


def test_long_sentences_are_split_after_an_outside_word(tokenizer, table):
    task = table.task("bc5cdr-chemical")
    words = tuple(f"w{i}" for i in range(70))
    tags = ["O"] * 70
    tags[29], tags[30], tags[31] = "B", "I", "I"  # an entity across the 30-word mark must not be cut
    feats = build_features([Example("d.0", words, label=tuple(tags))], task, tokenizer, max_length=128)
    assert len(feats) == 3
    assert feats.example_index.tolist() == [0, 0, 0]
    assert feats.word_offset.tolist()[0] == 0
    assert feats.word_offset.tolist()[1] == 29  # cut before the entity starts, after the O word 28
    assert all(len(s) <= 32 for s in feats.word_starts)


def test_feature_cache_is_hit_on_second_load(tokenizer, table, tiny_data_dir):
    task = table.task("chemprot")
    path = locate_tasks(table, ["chemprot"], data_dir=tiny_data_dir)["chemprot"]["train"]
    examples, feats, hit = load_split(task, "train", path, tokenizer, max_length=64)
    assert not hit
    examples2, feats2, hit2 = load_split(task, "train", path, tokenizer, max_length=64)
    assert hit2 and examples2 == examples
    assert all((a == b).all() for a, b in zip(feats.input_ids, feats2.input_ids))
    _, _, hit3 = load_split(task, "train", path, tokenizer, max_length=48)
    assert not hit3  # max_length is part of the key


def test_fixed_sample_is_independent_of_the_run():
    assert sample_examples(10, None).tolist() == list(range(10))
    a, b = sample_examples(1000, 50), sample_examples(1000, 50)
    assert (a == b).all() and len(set(a.tolist())) == 50 and (np.diff(a) > 0).all()


def test_length_grouped_batches_cover_every_row_once_and_reduce_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=1000)
    grouped = make_batches(lengths, 32, np.random.default_rng(1), group_by_length=True)
    plain = make_batches(lengths, 32, np.random.default_rng(1), group_by_length=False)
    assert sorted(np.concatenate(grouped).tolist()) == list(range(1000))
    pad = lambda batches: sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches)  # noqa: E731
    assert pad(grouped) < 0.3 * pad(plain)


def test_collate_pads_to_the_longest_row(tokenizer, table):
    task = table.task("chemprot")
    exs = [Example("a", "short", label="false"), Example("b", "a much longer sentence than the first one", label="CPR:3")]
    feats = build_features(exs, task, tokenizer, max_length=64)
    batch = collate(feats, np.array([0, 1]), tokenizer.pad_token_id)
    width = max(len(x) for x in feats.input_ids)
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"].sum(1).tolist() == [len(x) for x in feats.input_ids]
    assert batch["targets"].tolist() == [5, 0]


PIECELESS = ["\u200b", "\u00ad", "\u0301", ""]  # zero-width space, soft hyphen, lone combining mark, empty token


@pytest.mark.parametrize("odd", PIECELESS)
def test_word_without_pieces_does_not_shift_later_words(tokenizer, table, odd, caplog):
    """A perfect model (it predicts every first piece's gold tag) scores perfectly around a word with no pieces."""
    import logging

    from transfer.scoring import metrics
    from transfer.training.features import SplitData
    from transfer.training.loop import _assemble

    task = table.task("bc5cdr-chemical")
    assert tokenizer.tokenize(odd) == []
    short = (("Aspirin", odd, "helps", "a", "Aspirin"), ("B", "O", "O", "O", "B"))
    # a long sentence cut into sub-sentences, with the odd word in the second one
    words = tuple(f"w{i}" for i in range(40)) + (odd, "Aspirin", "x", "Aspirin", "y")
    tags = ("O",) * 40 + ("O", "B", "O", "B", "O")
    examples = [Example("d.0", short[0], label=short[1]), Example("d.9", words, label=tags)]
    with caplog.at_level(logging.WARNING, logger="transfer.training.features"):
        feats = build_features(examples, task, tokenizer, max_length=128)
    assert len(feats) == 3 and feats.pieceless_words == 2 and feats.truncated_words == 0
    assert "no word pieces" in caplog.text and "beyond max_length" not in caplog.text
    perfect = {r: np.where(feats.targets[r] == IGNORE_INDEX, 0, feats.targets[r]) for r in range(len(feats))}
    split = SplitData(task, "test", examples, feats, np.arange(len(feats)))
    assembled = _assemble(split, perfect)
    assert assembled == {0: short[1], 1: tags}
    gold = [e.label for e in examples]
    assert metrics.score_task(task, gold, [assembled[0], assembled[1]], None)["entity_f1"] == 1.0


def test_words_beyond_max_length_are_named_as_such(tokenizer, table, caplog):
    import logging

    task = table.task("bc5cdr-chemical")
    ex = Example("d.0", tuple(f"word{i}" for i in range(20)), label=("O",) * 20)
    with caplog.at_level(logging.WARNING, logger="transfer.training.features"):
        feats = build_features([ex], task, tokenizer, max_length=10)
    assert feats.truncated_words > 0 and feats.pieceless_words == 0
    assert "beyond max_length=10" in caplog.text and "no word pieces" not in caplog.text
