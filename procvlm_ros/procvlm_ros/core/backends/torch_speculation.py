"""
The transformers backend's greedy loop with drafts: its own passes over the model's forward
with the KV cache (issue 11), exactly ``generate(do_sample=False)``'s output.

- Prefill: one forward over the prompt (images included) keeping the last position's logits,
  as ``generate()`` does; the first id is its greedy choice.
- Each pass feeds the last id and a draft (:mod:`speculation`) at the next cache positions
  (M-RoPE text positions come from the prefill's ``rope_deltas`` inside the model) and takes
  the greedy id at every position; the cache is cropped back to the accepted positions, so a
  rejected position's K/V is overwritten by the next pass.
- ``repetition_penalty`` is applied per position with transformers' own processor on the
  sequence as it would be at that position (prompt, generated ids, accepted draft ids).

:func:`plain_decoding_reason` says when the backend must fall back to ``generate()`` instead.
torch and transformers are imported inside functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from procvlm_ros.core.backends import speculation as spec
from procvlm_ros.core.backends.greedy import GENERATION_FIELDS

# generation_config fields this loop applies; any other active processor means generate().
_UNSUPPORTED = tuple(f for f in GENERATION_FIELDS
                     if f not in ('eos_token_id', 'pad_token_id', 'repetition_penalty'))


def _active(value: Any) -> bool:
    return value not in (None, 0, [], {}, '', False)


def plain_decoding_reason(generation_config: Any, temperature: float) -> str:
    """Why drafts cannot be verified with this configuration ('' when they can)."""
    if temperature > 0:
        return f'temperature {temperature} samples; drafts are verified for greedy decoding only'
    active = [k for k in _UNSUPPORTED if _active(getattr(generation_config, k, None))]
    if active:
        return ('generation_config.json sets ' + ', '.join(active)
                + ', which the draft-verifying loop does not apply')
    return ''


def eos_ids(generation_config: Any) -> tuple[int, ...]:
    eos = generation_config.eos_token_id
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def speculative_generate(model: Any, inputs: dict[str, Any], source: Sequence[int] | None,
                         max_draft: int, max_new_tokens: int
                         ) -> tuple[Any, spec.SpeculationStats]:
    """
    Greedy generation verifying ``source`` as drafts; call under ``torch.inference_mode()``.

    :param model: ``Qwen3VLForConditionalGeneration`` (or a peft wrapper of it).
    :param inputs: The processor's tensors (batch 1) on the model's device.
    :param source: Draft source ids (the previous window's answer), or None.
    :returns: ``(sequences (1, P + N), stats)`` like ``generate()``'s sequences.
    """
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor
    gen = model.generation_config
    penalty = float(getattr(gen, 'repetition_penalty', None) or 1.0)
    processor = RepetitionPenaltyLogitsProcessor(penalty) if penalty != 1.0 else None
    prompt = inputs['input_ids']
    device = prompt.device
    seen: list[int] = prompt[0].tolist()

    def choose(logits: Any, ids: list[int]) -> int:
        scores = logits.to(dtype=torch.float32)[None]  # generate() processes float32 copies
        if processor is not None:
            scores = processor(torch.tensor([ids], device=device), scores.clone())
        return int(scores[0].argmax())

    out = model(**inputs, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    first = choose(out.logits[0, -1], seen)
    stops = eos_ids(gen)
    base = [0]

    def run_pass(tokens: list[int], draft: list[int]) -> Any:
        base[0] = cache.get_seq_length()
        feed = torch.tensor([[tokens[-1]] + draft], dtype=prompt.dtype, device=device)
        logits = model(input_ids=feed, past_key_values=cache, use_cache=True).logits[0]
        if processor is None:
            preds = logits.argmax(-1).tolist()
            return preds.__getitem__
        prefix = seen + tokens
        return lambda i: choose(logits[i], prefix + draft[:i])

    def commit(kept: int) -> None:
        stale = cache.get_seq_length() - (base[0] + kept)
        if stale > 0:  # negative crop: transformers 5.18 drops the positive form
            cache.crop(-stale)

    tokens, stats = spec.speculative_greedy(
        first, source, max_draft, max_new_tokens, lambda t: t in stops, run_pass, commit,
        stop_ids=stops)
    new = torch.tensor([tokens], dtype=prompt.dtype, device=device)
    return torch.cat([prompt, new], dim=1), stats
