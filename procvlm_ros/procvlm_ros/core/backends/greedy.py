"""
Greedy decoding rules shared by the exported backends, identical to ``generate(do_sample=False)``.

Stop rules of the reference (``procvlm-reference.md`` 1.7): stop after an eos id from
``generation_config.json`` (the eos token is kept in the returned ids and dropped by
``skip_special_tokens`` when decoding) or after ``max_new_tokens``. The only logits processor
that can change a greedy argmax and is supported here is ``repetition_penalty``; any other
setting in ``generation_config.json`` that would change greedy output is refused at load, never
silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from procvlm_ros.core.errors import BackendUnavailableError

# generation_config fields whose non-default value changes greedy output in transformers.
_UNSUPPORTED = ('no_repeat_ngram_size', 'bad_words_ids', 'min_length', 'min_new_tokens',
                'forced_bos_token_id', 'forced_eos_token_id', 'suppress_tokens',
                'begin_suppress_tokens', 'sequence_bias', 'exponential_decay_length_penalty',
                'stop_strings', 'encoder_no_repeat_ngram_size')
# Fields kept in the manifest: enough to check the above and to apply the supported ones.
GENERATION_FIELDS = ('eos_token_id', 'pad_token_id', 'repetition_penalty') + _UNSUPPORTED


def _active(value: Any) -> bool:
    return value not in (None, 0, [], {}, '', False)


@dataclass(frozen=True)
class GreedySettings:
    """Stop ids, token budget and repetition penalty of one backend."""

    eos_token_ids: tuple[int, ...]
    max_new_tokens: int
    repetition_penalty: float = 1.0

    @classmethod
    def from_manifest(cls, generation: Mapping[str, Any], eos_token_ids: Sequence[int],
                      max_new_tokens: int, temperature: float) -> GreedySettings:
        """
        Build the settings; refuse sampling and unsupported logits processors.

        :param generation: The manifest's copy of ``generation_config.json`` fields.
        :param eos_token_ids: Stop ids recorded by the exporter.
        :param max_new_tokens: Token budget from the backend config.
        :param temperature: Must be 0 (greedy).
        :raises BackendUnavailableError: On sampling or an unsupported generation setting.
        """
        if temperature > 0:
            raise BackendUnavailableError(
                f'temperature={temperature}: the exported backends decode greedily only '
                '(official default temperature 0); use the transformers backend to sample')
        active = [k for k in _UNSUPPORTED if _active(generation.get(k))]
        if active:
            raise BackendUnavailableError(
                'generation_config.json sets ' + ', '.join(f'{k}={generation[k]!r}'
                                                           for k in active)
                + ', which changes greedy output and is not implemented by the exported '
                'backends; use the transformers backend')
        if not eos_token_ids:
            raise BackendUnavailableError('the export records no eos token id')
        penalty = float(generation.get('repetition_penalty') or 1.0)
        return cls(tuple(int(i) for i in eos_token_ids), int(max_new_tokens), penalty)

    @property
    def needs_logits(self) -> bool:
        """Whether the host must see the logits (otherwise the graph's argmax is used)."""
        return self.repetition_penalty != 1.0

    def is_stop(self, token: int) -> bool:
        return token in self.eos_token_ids


def penalised_argmax(logits: npt.NDArray[np.float32], seen: Sequence[int],
                     penalty: float) -> int:
    """
    Argmax after transformers' ``RepetitionPenaltyLogitsProcessor`` (in place on ``logits``).

    :param logits: ``(V,)`` float32 logits of the last position.
    :param seen: Every id of the prompt and of the tokens generated so far.
    :param penalty: Divides positive and multiplies negative logits of seen ids.
    """
    ids = np.unique(np.asarray(seen, dtype=np.int64))
    scores = logits[ids]
    logits[ids] = np.where(scores < 0, scores * penalty, scores / penalty)
    return int(np.argmax(logits))
