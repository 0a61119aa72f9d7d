"""
Train the demo model on synthetic episodes (CPU, a seed, a fixed number of steps).

``python -m procvlm_ros.demo_model.train --out DIR --seed 0`` generates the training episodes,
trains the scratch tokenizer, builds the tiny Qwen3-VL, trains it to answer in the ProcVLM
format and writes a checkpoint directory the transformers backend loads. With
``--eval-episodes N`` it then scores N held-out episodes (another data seed) with
``procvlm-eval`` and writes the figures into ``DATA_CARD.md``.

Batches share frames: a batch holds a few runs of consecutive windows from a few episodes,
the vision tower runs once per distinct frame and its outputs (and deepstack features) are
gathered into every window that shows the frame. The language model then runs exactly as
``Qwen3VLModel.forward`` would on the full inputs (``test_demo_model`` checks the equivalence).
Results are reproducible for the same seed, arguments and thread count.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
import json
import logging
import math
import os
from pathlib import Path
import sys
import time
from typing import Any

import numpy as np

from procvlm_ros import demo_model
from procvlm_ros.cli.options import add_field_options, Override
from procvlm_ros.demo_model import spec
from procvlm_ros.demo_model.card import data_card
from procvlm_ros.demo_model.dataset import (
    Batch,
    build_episode,
    collate,
    EpisodeWindows,
    STATE_DIM,
    tokenizer_corpus,
)
from procvlm_ros.synth.episode import generate_episode
from procvlm_ros.synth.export import episode_plan

_LOG = logging.getLogger('procvlm_ros.demo_model.train')

TRAIN_DATA_SEED = 1000  # episodes for training; held-out evaluation uses other seeds
EVAL_DATA_SEED = 777
VAL_INDEX = 1_000_000  # validation episodes: training data seed, episode numbers from here


@dataclass
class TrainConfig:
    out: str
    seed: int = 0
    data_seed: int = TRAIN_DATA_SEED
    episodes: int = 480
    steps: int = 1500
    batch_episodes: int = 8
    run_length: int = 4
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup: int = 150
    weight_decay: float = 0.01
    number_weight: float = 3.0
    action_weight: float = 2.0
    state_weight: float = 2.0
    text_batch: int = 24
    text_weight: float = 0.5
    val_every: int = 500
    val_windows: int = 24
    mp4_fraction: float = 0.5
    threads: int = 2
    eval_episodes: int = 0
    eval_seed: int = EVAL_DATA_SEED


def forward_shared(model: Any, batch: Batch, positions: Any = None,
                   return_vision: bool = False) -> Any:
    """
    Logits of ``model`` on ``batch``, running the vision tower once per distinct frame.

    Same computation as ``Qwen3VLForConditionalGeneration.forward`` on the expanded inputs:
    placeholder embeddings replaced by the image features, M-RoPE positions from
    ``get_rope_index``, deepstack features added in the first decoder layers.

    :param positions: Optional ``(B, L)`` bool mask; then only those positions' logits are
        computed, as an ``(N, V)`` tensor (the lm_head is the biggest matmul of a step).
    :param return_vision: Also return the merged visual tokens of each distinct frame,
        ``(U, tokens, hidden)``.
    :returns: ``(B, L, V)`` logits, or ``(N, V)`` with ``positions``.
    """
    core = model.model
    vision = core.get_image_features(batch.pixel_values, batch.unique_grid, return_dict=True)
    per_frame = vision.pooler_output[0].shape[0]
    rows = (batch.occurrence[:, None] * per_frame + _arange(per_frame)[None, :]).reshape(-1)
    image_embeds = _cat(vision.pooler_output).index_select(0, rows)
    deepstack = [features.index_select(0, rows) for features in vision.deepstack_features]
    embeds = core.get_input_embeddings()(batch.input_ids)
    image_mask = batch.input_ids == model.config.image_token_id
    embeds = embeds.masked_scatter(image_mask[..., None].expand_as(embeds),
                                   image_embeds.to(embeds.dtype))
    position_ids, _ = core.get_rope_index(
        batch.input_ids, mm_token_type_ids=batch.mm_token_type_ids,
        image_grid_thw=batch.grid, attention_mask=batch.attention_mask)
    out = core.language_model(
        input_ids=None, position_ids=position_ids, attention_mask=batch.attention_mask,
        inputs_embeds=embeds, visual_pos_masks=image_mask, deepstack_visual_embeds=deepstack)
    hidden = out.last_hidden_state
    logits = model.lm_head(hidden if positions is None else hidden[positions])
    if return_vision:
        return logits, _cat(vision.pooler_output).reshape(-1, per_frame, embeds.shape[-1])
    return logits


def make_state_head(tokens: int, hidden: int) -> Any:
    """
    Training-only head reading the scene state from one frame's merged visual tokens.

    Trained from scratch, a tiny VLM first learns the text prior and can get stuck ignoring
    its images (their features hardly differ between frames at initialisation). Asking the
    vision tower to also expose the scene state (progress, action fraction, gripper position,
    holding) through this head bootstraps features the language model then uses. The head is
    not part of the checkpoint.
    """
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(tokens * hidden, 128), nn.GELU(),
                         nn.Linear(128, STATE_DIM))


def _arange(n: int) -> Any:
    import torch
    return torch.arange(n)


def _cat(tensors: Any) -> Any:
    import torch
    return torch.cat(list(tensors), dim=0)


def batch_loss(model: Any, batch: Batch, number_ids: Any, state_head: Any = None,
               state_weight: float = 1.0) -> tuple[Any, dict[str, float]]:
    """Weighted next-token cross-entropy over the answers (+ the state head's loss)."""
    import torch
    from torch.nn import functional

    # Logits at position t predict the label at t + 1: select positions whose next label counts.
    labels = batch.labels[:, 1:]
    sel = labels != -100
    positions = torch.zeros_like(batch.labels, dtype=torch.bool)
    positions[:, :-1] = sel
    logits, visual = forward_shared(model, batch, positions, return_vision=True)
    target = labels[sel]
    w = batch.weights[:, 1:][sel]
    ce = functional.cross_entropy(logits.float(), target, reduction='none')
    loss = (ce * w).sum() / w.sum()
    stats = {'loss': float(loss.detach()),
             'token_acc': float((logits.argmax(-1) == target).float().mean())}
    if state_head is not None:
        out = state_head(visual)
        regress = functional.l1_loss(torch.sigmoid(out[:, :4]), batch.state[:, :4])
        holding = functional.binary_cross_entropy_with_logits(out[:, 4], batch.state[:, 4])
        state_loss = regress + 0.25 * holding
        stats['state_l1'] = float(regress.detach())
        loss = loss + state_weight * state_loss
    num = batch.number_mask[:, 1:][sel]
    if bool(num.any()):
        value_of = {int(t): v for v, t in enumerate(number_ids.tolist())}
        pred = logits[num].argmax(-1).tolist()
        gold = target[num].tolist()
        stats['tf_number_mae'] = float(np.mean(
            [min(abs(value_of.get(p, 1000) - value_of.get(g, 1000)), 100)
             for p, g in zip(pred, gold)]))
    return loss, stats


def text_samples(processor: Any, episodes: list[Any]) -> list[tuple[list[int], list[int]]]:
    """
    Training-only text samples: the prompt without images, answered with the task's full list.

    They teach the tiny model early to read the task sentence (which object comes when, which
    colour goes where) from many task sentences per step, at a small fraction of the cost of a
    windowed sample; real inputs always carry images.
    """
    from procvlm_ros.core.prompt import build_messages, build_prompt
    from procvlm_ros.demo_model.answers import format_answer
    from procvlm_ros.demo_model.dataset import answer_ids

    samples = []
    for ep in episodes:
        chat = processor.apply_chat_template(build_messages([], build_prompt(ep.task.sentence)),
                                             tokenize=False, add_generation_prompt=True)
        chat = chat[0] if isinstance(chat, list) else chat
        prompt = [int(i) for i in processor.tokenizer(chat, add_special_tokens=False)['input_ids']]
        answer, _, _ = answer_ids(processor.tokenizer, format_answer(ep.task.action_texts, 0.0), 0)
        samples.append((prompt, answer))
    return samples


def text_loss(model: Any, samples: list[tuple[list[int], list[int]]]) -> Any:
    """Next-token cross-entropy on the answers of text-only samples."""
    import torch
    from torch.nn import functional

    length = max(len(p) + len(a) for p, a in samples)
    ids = torch.full((len(samples), length), spec.PAD_ID, dtype=torch.long)
    labels = torch.full((len(samples), length), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    for b, (prompt, answer) in enumerate(samples):
        ids[b, :len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        labels[b, len(prompt):len(prompt) + len(answer)] = torch.tensor(answer)
        mask[b, :len(prompt) + len(answer)] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[None].expand(3, -1, -1)
    out = model.model.language_model(input_ids=ids, attention_mask=mask, position_ids=positions)
    sel = labels[:, 1:] != -100
    logits = model.lm_head(out.last_hidden_state[:, :-1][sel])
    return functional.cross_entropy(logits.float(), labels[:, 1:][sel])


def validate(model: Any, data: list[EpisodeWindows], items: list[tuple[int, int]],
             tokenizer: Any, max_new_tokens: int = 160) -> dict[str, float]:
    """Free-running (greedy) answers on held-out windows: what inference will see."""
    import torch

    from procvlm_ros.core.parsing import parse_answer
    from procvlm_ros.demo_model.dataset import window_inputs

    errors, parsed, first_ok, done_ok = [], 0, 0, 0
    model.eval()
    with torch.inference_mode():
        for e, i in items:
            ep = data[e]
            inputs = window_inputs(ep, i, spec.IMAGE_ID)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            text = tokenizer.decode(out[0, inputs['input_ids'].shape[1]:],
                                    skip_special_tokens=True)
            answer = parse_answer(text)
            target = tokenizer.decode(ep.answer_ids[i], skip_special_tokens=True)
            truth = parse_answer(target)
            if answer.percent is not None:
                parsed += 1
                errors.append(abs(answer.percent - float(ep.progress[i]) * 100))
            first_ok += answer.remaining_actions[:1] == truth.remaining_actions[:1]
            done_ok += (answer.percent == 100.0) == (truth.percent == 100.0)
    model.train()
    n = max(1, len(items))
    return {'val_mae': float(np.mean(errors)) if errors else 100.0, 'val_parse': parsed / n,
            'val_first_action': first_ok / n, 'val_done_acc': done_ok / n}


def batch_plan(episodes: list[EpisodeWindows], cfg: TrainConfig,
               rng: np.random.Generator) -> list[list[tuple[int, int]]]:
    """One epoch of batches: each batch = ``batch_episodes`` runs of consecutive windows."""
    runs = []
    for e, ep in enumerate(episodes):
        offset = int(rng.integers(0, cfg.run_length))
        starts = [0] + list(range(offset or cfg.run_length, ep.num_frames, cfg.run_length))
        for a, b in zip(starts, starts[1:] + [ep.num_frames]):
            if b > a:
                runs.append([(e, i) for i in range(a, b)])
    order = rng.permutation(len(runs))
    batches = []
    for k in range(0, len(order) - cfg.batch_episodes + 1, cfg.batch_episodes):
        batches.append([item for r in order[k:k + cfg.batch_episodes] for item in runs[r]])
    return batches


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def generate_training_episodes(cfg: TrainConfig) -> list[Any]:
    return [generate_episode(cfg.data_seed, i, kind, task_kind)
            for i, (kind, task_kind) in enumerate(episode_plan(cfg.episodes))]


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the whole recipe; return a summary (also written to ``training_log.json``)."""
    import torch
    from tqdm import tqdm

    from procvlm_ros.core.backends.hf_processor import load_processor

    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)  # denormal floats make CPU kernels many times slower
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    t0 = time.perf_counter()

    episodes = generate_training_episodes(cfg)
    tokenizer = spec.train_tokenizer(tokenizer_corpus(episodes))
    model = spec.build_model(cfg.seed, len(tokenizer))
    spec.write_checkpoint(out, model, tokenizer)  # processor files first: data uses them
    processor, _ = load_processor(out)
    _LOG.info('%d training episodes, tokenizer %d tokens, model %.2fM parameters',
              len(episodes), len(tokenizer), sum(p.numel() for p in model.parameters()) / 1e6)
    mp4 = rng.random(len(episodes)) < cfg.mp4_fraction
    data = [build_episode(processor, ep, mp4=bool(m))
            for ep, m in zip(tqdm(episodes, desc='Preparing episodes', unit='ep'), mp4)]
    frames = sum(d.num_frames for d in data)
    # Held-out windows for free-running validation: same data seed, episode numbers far beyond
    # the training ones.
    val_data: list[EpisodeWindows] = []
    val_items: list[tuple[int, int]] = []
    if cfg.val_windows > 0:
        val_eps = [generate_episode(cfg.data_seed, VAL_INDEX + i, kind, task)
                   for i, (kind, task) in enumerate(episode_plan(8))]
        val_data = [build_episode(processor, ep) for ep in val_eps]
        val_items = [(e, int(i)) for e, d in enumerate(val_data)
                     for i in rng.choice(d.num_frames, size=max(1, cfg.val_windows // 8),
                                         replace=False)]
    t_data = time.perf_counter() - t0
    _LOG.info('%d windows prepared in %.0f s', frames, t_data)

    texts = text_samples(processor, episodes)
    number_ids = torch.tensor([tokenizer.convert_tokens_to_ids(tokenizer.tokenize(str(n))[0])
                               for n in range(101)])
    tokens = (data[0].grid[1] * data[0].grid[2]) // 4
    state_head = make_state_head(tokens, model.config.text_config.hidden_size)
    named = list(model.named_parameters()) + [
        (f'state_head.{n}', p) for n, p in state_head.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and 'embed' not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and 'embed' not in n)]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': cfg.weight_decay},
                             {'params': no_decay, 'weight_decay': 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    model.train()
    plan: list[list[tuple[int, int]]] = []
    history = []
    smooth: dict[str, float] = {}
    bar = tqdm(range(cfg.steps), desc='Training', unit='step')
    for step in bar:
        if not plan:
            plan = batch_plan(data, cfg, rng)
        items = [(data[e], i) for e, i in plan.pop()]
        batch = collate(items, number_weight=cfg.number_weight,
                        action_weight=cfg.action_weight, pad_id=spec.PAD_ID,
                        image_id=spec.IMAGE_ID)
        for group in opt.param_groups:
            group['lr'] = lr_at(step, cfg)
        loss, stats = batch_loss(model, batch, number_ids, state_head, cfg.state_weight)
        if cfg.text_batch > 0:
            pick = rng.choice(len(texts), size=cfg.text_batch, replace=False)
            aux = text_loss(model, [texts[int(i)] for i in pick])
            stats['text_loss'] = float(aux.detach())
            loss = loss + cfg.text_weight * aux
        if val_items and cfg.val_every and step > 0 and (step % cfg.val_every == 0):
            stats.update(validate(model, val_data, val_items, tokenizer))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        for k, v in stats.items():
            keep = k.startswith('val_') or k not in smooth
            smooth[k] = v if keep else 0.95 * smooth[k] + 0.05 * v
        if any(k.startswith('val_') for k in stats):
            _LOG.info('step %d validation %s', step,
                      {k: round(v, 3) for k, v in stats.items() if k.startswith('val_')})
        bar.set_postfix({k: f'{v:.3f}' for k, v in smooth.items()})
        if step % 100 == 0 or step == cfg.steps - 1:
            history.append({'step': step, **{k: round(v, 4) for k, v in smooth.items()}})
            _LOG.debug('step %d %s', step, smooth)
    t_train = time.perf_counter() - t0 - t_data
    final_val = validate(model, val_data, val_items, tokenizer) if val_items else {}
    _LOG.info('final validation %s', {k: round(v, 3) for k, v in final_val.items()})
    model.eval()
    summary = {
        'config': asdict(cfg), 'parameters': sum(p.numel() for p in model.parameters()),
        'vocab_size': len(tokenizer), 'training_windows': frames,
        'data_seconds': round(t_data, 1), 'train_seconds': round(t_train, 1),
        'torch': torch.__version__, 'history': history, 'final_validation': final_val,
    }
    spec.write_checkpoint(out, model, tokenizer, {
        'training_log.json': json.dumps(summary, indent=1)})
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m procvlm_ros.demo_model.train',
                                description=__doc__.split('\n\n')[0])
    # Every TrainConfig field is an option with its type and default.
    add_field_options(p, TrainConfig, dashes=True,
                      overrides={'out': Override(help='checkpoint directory to write')})
    return p


def main(argv: list[str] | None = None) -> int:
    # On a CPU shared with other work, OpenMP threads that spin at barriers while their peer is
    # descheduled made steps 5x slower; sleeping waits cost little when the CPU is free. Only
    # effective before torch is first imported (it is imported lazily, inside train()).
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    cfg = TrainConfig(**vars(args))
    summary = train(cfg)
    _LOG.info('trained in %.0f s (+%.0f s data); checkpoint in %s', summary['train_seconds'],
              summary['data_seconds'], cfg.out)
    report = evaluate_checkpoint(cfg) if cfg.eval_episodes > 0 else None
    command = (f'procvlm-synth --out HELDOUT --episodes {cfg.eval_episodes} --seed '
               f'{cfg.eval_seed} && procvlm-eval --episodes HELDOUT --model {cfg.out} '
               f'--report report.json --done-threshold {100 * demo_model.DONE_THRESHOLD:g} '
               f'--stall-window-s {demo_model.STALL_WINDOW_S:g} '
               f'--stall-min-delta {demo_model.STALL_MIN_DELTA:g}') if report else ''
    (Path(cfg.out) / 'DATA_CARD.md').write_text(data_card(summary, report, command),
                                                encoding='utf-8')
    return 0


def evaluate_checkpoint(cfg: TrainConfig) -> dict[str, Any]:
    """Score held-out episodes (data seed ``eval_seed``); keep the summary beside the weights."""
    import tempfile

    from procvlm_ros.core.supervision import SupervisionConfig
    from procvlm_ros.evaluation.report import evaluate
    from procvlm_ros.synth.export import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        episodes = Path(tmp) / 'heldout'
        write_dataset(episodes, cfg.eval_episodes, cfg.eval_seed)
        report, _ = evaluate(episodes, model=cfg.out,
                             done_threshold=100 * demo_model.DONE_THRESHOLD,
                             supervision=SupervisionConfig(
                                 stall_window_s=demo_model.STALL_WINDOW_S,
                                 stall_min_delta=demo_model.STALL_MIN_DELTA))
    slim = {k: v for k, v in report.items() if k != 'rows'}
    slim['rows'] = [{k: v for k, v in row.items() if k != 'curve'} for row in report['rows']]
    (Path(cfg.out) / 'eval_summary.json').write_text(json.dumps(slim, indent=1),
                                                     encoding='utf-8')
    _LOG.info('held-out: VOC (success) %.3f, MAE %.3f, done F1 %.3f', report['voc_mean'],
              report['mae_mean'], report['done_f1'])
    return report


if __name__ == '__main__':
    sys.exit(main())
