"""Drafting and the exact greedy loop with drafts, on a deterministic next-token rule."""

import random

import pytest

from procvlm_ros.core.backends.speculation import (
    DraftLength,
    propose,
    speculative_greedy,
    verify,
)

EOS = 0


def answer(count):
    """A ProcVLM-like answer: fixed list of actions, then a number that changes per window."""
    return [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 20 + count, 21, 22, 23, EOS]


class Model:
    """Greedy 'model' continuing a fixed answer; counts passes and fed positions."""

    def __init__(self, target):
        self.target = target
        self.passes = 0
        self.fed = 0
        self.cache = 0  # positions with committed K/V

    def next_id(self, generated):
        i = len(generated)
        return self.target[i] if i < len(self.target) else 99

    def run_pass(self, tokens, draft):
        self.passes += 1
        self.fed += 1 + len(draft)
        assert self.cache == len(tokens) - 1, 'stale K/V kept or committed K/V lost'

        def predict(i):
            return self.next_id(tokens + list(draft[:i]))
        return predict

    def commit(self, kept):
        self.cache += kept


def greedy(model, max_new, stop=True):
    tokens = [model.next_id([])]
    while len(tokens) < max_new and not (stop and tokens[-1] == EOS):
        tokens.append(model.next_id(tokens))
    return tokens


def run(target, source, max_draft=8, max_new=64, stop=True):
    model = Model(target)
    first = model.next_id([])
    model.cache = 0
    tokens, stats = speculative_greedy(
        first, source, max_draft, max_new, (lambda t: t == EOS) if stop else (lambda t: False),
        model.run_pass, model.commit, stop_ids=(EOS,))
    assert stats.decoder_passes == model.passes
    return tokens, stats, model


def test_propose_continues_after_the_longest_suffix_match():
    src = [1, 2, 3, 4, 1, 2, 9, 9]
    assert propose(src, [3, 4, 1, 2], 3) == [9, 9]  # longest suffix wins over [1, 2] at 0
    assert propose(src, [7, 1, 2], 2) == [3, 4]  # nearest occurrence to position 3
    assert propose(src, [8], 4) == [2, 3, 4, 1]  # no match: same position
    assert propose(src, [8] * 8, 4) == []
    assert propose([], [1], 4) == [] and propose(src, [1], 0) == []
    assert propose([5, EOS, 6, 7], [5], 3, stop_ids=(EOS,)) == [EOS]  # nothing after eos


def test_propose_finds_the_rest_of_the_answer_after_the_changed_number():
    prev, cur = answer(3), answer(4)
    number = cur.index(24)
    assert propose(prev, cur[:number + 1], 8) == [21, 22, 23, EOS]


def test_verify_accepts_the_matching_prefix_and_adds_the_model_token():
    assert verify([4, 5, 6], lambda i: [4, 5, 7, 8][i]) == (2, 7)
    assert verify([4, 5], lambda i: [4, 5, 3][i]) == (2, 3)
    assert verify([], lambda i: [3][i]) == (0, 3)


def test_draft_length_adapts():
    length = DraftLength(16)
    length.update(16, 0)
    assert length.current == 8
    length.update(8, 0)
    length.update(4, 0)
    length.update(2, 0)
    length.update(1, 0)
    assert length.current == 1
    length.update(1, 1)
    assert length.current == 2
    length.update(0, 0)
    assert length.current == 2


@pytest.mark.parametrize('source', [
    None, [], answer(3), answer(4), [77] * 40, list(range(100, 140)),
    answer(3) + answer(3) + answer(3), answer(3)[:4], [EOS] + answer(3)])
@pytest.mark.parametrize('max_draft', [1, 4, 16])
def test_output_is_plain_greedy_whatever_the_draft(source, max_draft):
    target = answer(4)
    want = greedy(Model(target), 64)
    tokens, stats, model = run(target, source, max_draft)
    assert tokens == want
    assert stats.draft_tokens_accepted <= stats.draft_tokens_proposed
    # Each pass adds its accepted ids and its own id, except a last pass cut by eos.
    assert len(want) - 1 <= stats.decoder_passes + stats.draft_tokens_accepted <= len(want)


def test_previous_answer_cuts_the_passes():
    tokens, stats, _ = run(answer(4), answer(3), max_draft=16)
    assert tokens == answer(4)
    assert stats.decoder_passes <= 3 < len(tokens) - 1  # two mismatches at most, no eos pass
    _, plain, _ = run(answer(4), None)
    assert plain.decoder_passes == len(answer(4)) - 1 and plain.draft_tokens_accepted == 0


def test_max_new_tokens_inside_an_accepted_draft_and_eos_ignored():
    for max_new in range(1, 20):
        want = greedy(Model(answer(4)), max_new)
        tokens, stats, model = run(answer(4), answer(4), 16, max_new)
        assert tokens == want, max_new
        # Without eos (benchmark mode) generation runs on past eos to the budget.
        want = greedy(Model(answer(4)), max_new, stop=False)
        assert run(answer(4), answer(4), 16, max_new, stop=False)[0] == want


def test_random_drafts_never_change_the_output():
    rng = random.Random(3)
    for _ in range(200):
        target = [rng.randrange(1, 6) for _ in range(rng.randrange(1, 30))] + [EOS]
        source = [rng.randrange(0, 6) for _ in range(rng.randrange(0, 40))]
        max_new = rng.randrange(1, 40)
        assert run(target, source, rng.randrange(1, 20), max_new)[0] == greedy(
            Model(target), max_new)
