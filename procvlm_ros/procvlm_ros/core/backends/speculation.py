"""
Temporal speculative decoding: the previous window's answer as the draft (issue 11).

Consecutive windows share all but one frame and their answers barely change (the same list of
remaining actions, a new number). Instead of generating an answer token by token, a backend
feeds the model its last token plus a *draft* of the next few tokens in one decoder pass, and
keeps the longest prefix of the draft that equals the model's own greedy choice at each
position, plus the model's next token. The output is therefore exactly the greedy output,
whatever the draft; a good draft only means fewer sequential passes.

Drafting (:func:`propose`) is suffix matching: find the longest suffix of the tokens generated
so far that occurs in the draft source and propose what followed it there. After a mismatch at
the changed number the next tokens match the source again, so the rest of the answer is found.

Pure functions, no numpy/torch: shared by every backend and tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Longest suffix compared against the source: enough to place the match in a ~100-token answer.
MAX_MATCH = 8
# Default draft tokens per pass (BackendConfig.speculation_max_draft); docs/export.md has the
# measured passes and wall times behind it.
DEFAULT_MAX_DRAFT = 16


def propose(source: Sequence[int], generated: Sequence[int], max_draft: int,
            stop_ids: Sequence[int] = ()) -> list[int]:
    """
    The continuation of ``source`` after the longest suffix of ``generated`` found in it.

    Among several occurrences of that suffix the one nearest to the same position in the
    source is taken (answers keep their layout from window to window). Without any match the
    source is continued at the same position (a changed digit is a substitution). The draft
    ends after the first stop id it contains (nothing after eos can be accepted).

    :param source: The draft source, e.g. the previous window's generated ids.
    :param generated: Ids generated so far in this window (at least the prefill's token).
    :param max_draft: At most this many ids are proposed.
    :param stop_ids: eos ids.
    :returns: Up to ``max_draft`` ids (empty when the source has nothing left to offer).
    """
    n, m = len(source), len(generated)
    if max_draft <= 0 or n == 0 or m == 0:
        return []
    end = m  # no suffix found: assume a substitution and continue at the same position
    for length in range(min(MAX_MATCH, m, n - 1), 0, -1):
        suffix = list(generated[m - length:])
        # End positions e (exclusive) of the suffix in source, with something after them.
        ends = [e for e in range(length, n) if list(source[e - length:e]) == suffix]
        if ends:
            end = min(ends, key=lambda e: (abs(e - m), e))
            break
    draft = list(source[end:end + max_draft])
    for i, token in enumerate(draft):
        if token in stop_ids:
            return draft[:i + 1]
    return draft


def verify(draft: Sequence[int], predict: Callable[[int], int]) -> tuple[int, int]:
    """
    Greedy acceptance of one verify pass.

    :param draft: The ``k`` draft ids fed after the last generated token.
    :param predict: ``predict(i)`` is the model's greedy id at chunk position ``i`` (after the
        last token and ``draft[:i]``), valid while ``draft[:i]`` was accepted.
    :returns: ``(accepted, next_id)``: the first ``accepted`` draft ids equal the model's own
        choices; ``next_id`` is the model's id after them.
    """
    for i, token in enumerate(draft):
        pred = predict(i)
        if pred != token:
            return i, pred
    return len(draft), predict(len(draft))


@dataclass
class DraftLength:
    """
    Draft length per pass: halved after a pass that accepted nothing, doubled after one that
    accepted everything (within ``1..max_draft``), so a useless draft source costs little.
    """

    max_draft: int
    current: int = 0

    def __post_init__(self) -> None:
        self.current = self.max_draft

    def update(self, proposed: int, accepted: int) -> None:
        if proposed == 0:
            return
        if accepted == 0:
            self.current = max(1, self.current // 2)
        elif accepted == proposed:
            self.current = min(self.max_draft, self.current * 2)


def budget(max_draft: int, generated: int, max_new_tokens: int) -> int:
    """Draft ids worth feeding: a full accept must not pass ``max_new_tokens``."""
    return max(0, min(max_draft, max_new_tokens - generated - 1))


@dataclass
class SpeculationStats:
    """What one window's decoding cost: passes after the prefill and accepted draft ids."""

    decoder_passes: int = 0
    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0


def speculative_greedy(first: int, source: Sequence[int] | None, max_draft: int,
                       max_new_tokens: int, is_stop: Callable[[int], bool],
                       run_pass: Callable[[list[int], list[int]], Callable[[int], int]],
                       commit: Callable[[int], None] | None = None,
                       stop_ids: Sequence[int] = (),
                       room: int | None = None) -> tuple[list[int], SpeculationStats]:
    """
    The backend-independent greedy loop with drafts (plain greedy when ``source`` is empty).

    :param first: The id chosen from the prefill's last position.
    :param source: Draft source ids (None or empty: one token per pass).
    :param max_draft: Most draft ids per pass.
    :param max_new_tokens: Token budget (the first id included).
    :param is_stop: Whether an id ends generation (eos; always False to ignore eos).
    :param run_pass: ``run_pass(tokens, draft)`` runs the decoder on ``[tokens[-1]] + draft``
        at the next cache slots and returns ``predict`` for :func:`verify`.
    :param commit: ``commit(kept)``: the pass's first ``kept`` positions (the last token and the
        accepted draft ids) are now part of the sequence; later positions are stale.
    :param room: Generated ids the KV cache can hold (drafts never need more than that).
    :returns: ``(generated ids, stats)``.
    """
    tokens = [int(first)]
    stats = SpeculationStats()
    length = DraftLength(max(0, int(max_draft)))
    src = list(source or ())
    while len(tokens) < max_new_tokens and not is_stop(tokens[-1]):
        k = budget(length.current, len(tokens), max_new_tokens)
        if room is not None:
            k = max(0, min(k, room - len(tokens)))
        draft = propose(src, tokens, k, stop_ids) if src and k else []
        predict = run_pass(tokens, draft)
        accepted, nxt = verify(draft, predict)
        stats.decoder_passes += 1
        stats.draft_tokens_proposed += len(draft)
        length.update(len(draft), accepted)
        appended = 0
        for token in draft[:accepted] + [nxt]:  # the stop rules of plain greedy, one by one
            if len(tokens) >= max_new_tokens or is_stop(tokens[-1]):
                break
            tokens.append(int(token))
            appended += 1
        from_draft = min(accepted, appended)
        stats.draft_tokens_accepted += from_draft
        if commit is not None:  # the fed last token and the accepted draft ids have K/V
            commit(1 + from_draft)
    return tokens, stats
