"""One-task batches: subsamples, shuffled and length-grouped batches, the pooled order of several tasks."""

import numpy as np

from transfer.training.batches import make_batches, sample_examples
from transfer.training.streams import TaskStreams


def test_sample_is_fixed_by_default_and_follows_a_given_generator():
    fixed = sample_examples(100, 10)
    assert fixed.tolist() == sample_examples(100, 10).tolist() and fixed.tolist() == sorted(fixed.tolist())
    drawn = sample_examples(100, 10, np.random.default_rng(5))
    assert drawn.tolist() != fixed.tolist() and len(set(drawn.tolist())) == 10
    assert sample_examples(5, 10).tolist() == list(range(5)) and sample_examples(5, None).tolist() == list(range(5))


def test_batches_cover_every_row_once_and_grouping_shortens_padding():
    lengths = np.random.default_rng(0).integers(5, 120, size=400)
    for group in (False, True):
        batches = make_batches(lengths, 16, np.random.default_rng(1), group)
        assert sorted(np.concatenate(batches).tolist()) == list(range(400))
    padding = {group: sum(int(lengths[b].max() * len(b) - lengths[b].sum())
                          for b in make_batches(lengths, 16, np.random.default_rng(1), group)) for group in (False, True)}
    assert padding[True] < padding[False] / 2


def test_the_grouping_window_trades_padding_for_random_batches():
    lengths = np.random.default_rng(0).integers(5, 120, size=63 * 32)  # whole batches: windows align with them

    def batches(group, window=50):
        return make_batches(lengths, 32, np.random.default_rng(1), group, group_window=window)

    def padding(found):
        return sum(int(lengths[b].max() * len(b) - lengths[b].sum()) for b in found)

    # a one-batch window sorts inside each random batch only: the batches are the ungrouped ones
    assert [sorted(b.tolist()) for b in batches(True, 1)] == [sorted(b.tolist()) for b in batches(False)]
    assert padding(batches(True, 50)) < padding(batches(True, 4)) < padding(batches(True, 1))
    # a window of every batch sorts the task whole: batch k holds the k-th longest rows
    whole = batches(True, 63)
    assert all(np.ptp(lengths[b]) <= 3 for b in whole)
    assert batches(True).__len__() == len(whole) == 63  # the default is 50 batches, as stored runs had


def test_shared_scheme_permutes_the_pool_as_before():
    streams = TaskStreams(7, ("a", "b"), shared=True)
    order = streams.interleave([2, 3])
    pool = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert order == [pool[j] for j in np.random.default_rng(7).permutation(5)]
