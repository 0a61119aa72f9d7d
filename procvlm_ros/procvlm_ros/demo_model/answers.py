"""
Training targets in the ProcVLM answer format (``procvlm-reference.md`` section 5.1).

Unfinished: ``The following actions are required: \\n1. ...\\n2. ...\\nTherefore, the estimated
progress is <progress>{p*100:.2f}%</progress>.`` Finished: ``Image shows the final result.\\n
Therefore, the estimated progress is <progress>100%</progress>.``

The demo model's targets round progress to whole percent (``37.00%``): the decimals of the
official format are kept, but the tiny model only has to choose among 100 values. An
unfinished state never rounds up to 100 (it is capped at 99) so that "100%" means done.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

FINISHED = ('Image shows the final result.\n'
            'Therefore, the estimated progress is <progress>100%</progress>.')
UNFINISHED_HEAD = 'The following actions are required: \n'
UNFINISHED_TAIL = 'Therefore, the estimated progress is <progress>{percent:.2f}%</progress>.'


def target_percent(progress: float) -> int:
    """Whole-percent training target for a ground-truth progress in [0, 1] (unfinished: <= 99)."""
    if not math.isfinite(progress):
        raise ValueError(f'progress must be finite, got {progress!r}')
    if progress >= 1.0:
        return 100
    return int(min(99, max(0, math.floor(progress * 100 + 0.5))))


def format_answer(remaining_actions: Sequence[str], progress: float) -> str:
    """
    The answer the model is trained to give for a state.

    :param remaining_actions: Actions still to do, in order; empty when the task is done.
    :param progress: Ground-truth progress in [0, 1].
    """
    if progress >= 1.0 or not remaining_actions:
        return FINISHED
    lines = ''.join(f'{i}. {action}\n' for i, action in enumerate(remaining_actions, 1))
    return UNFINISHED_HEAD + lines + UNFINISHED_TAIL.format(percent=target_percent(progress))
