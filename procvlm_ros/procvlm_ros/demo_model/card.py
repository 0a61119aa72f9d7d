"""``DATA_CARD.md`` of a trained demo checkpoint: what it is, how it was made, how good it is."""

from __future__ import annotations

from typing import Any

_HEAD = """\
# procvlm_ros demo model (synthetic table-top task) — NOT ProcVLM-2B

A tiny `Qwen3VLForConditionalGeneration` (the real Qwen3-VL architecture, {params:.2f} M
parameters) trained from scratch on CPU to answer in the ProcVLM format on **synthetic episodes
only**. It exists so that tests and the live demo exercise the whole pipeline (windows, prompt,
chat template, generation, parsing, remaining actions, progress values) and get *right* answers.
It is **not** ProcVLM-2B, not derived from it, and knows nothing about real images: on anything
other than `procvlm_ros.synth` frames its answers are meaningless.

## Inputs it was trained for

- 160x120 RGB frames rendered by `procvlm_ros.synth` (stack blocks, push a block onto a target,
  put balls into a bin) at 2 fps;
- windows of 8 consecutive frames, causal, the first frame repeated at the start
  (`core.sampling.window_positions`), exactly as `offline.infer_progress_from_video` builds them
  for an episode video and as the live node builds them when it keeps every frame of a 2 fps
  camera (`sample_period_s` below 0.5 s, e.g. 0.4);
- every frame through a JPEG q95 round trip and the qwen-vl-utils pre-resize (factor 28), then
  the checkpoint processor (`preprocessor_config.json`: 4,096-32,768 pixels, so a frame becomes
  160x128 = 20 visual tokens); a fraction {mp4_fraction} of the training episodes also went
  through the H.264 (crf 18) round trip of the exported episode videos;
- the official prompt (`procedural_c`) with the episode's task sentence, images first, rendered
  with `chat_template.jinja`.

## Answers

Unfinished: `The following actions are required: \\n1. ...\\nTherefore, the estimated progress
is <progress>37.00%</progress>.`; done: `Image shows the final result.\\nTherefore, the
estimated progress is <progress>100%</progress>.` Training targets round the ground-truth
progress to whole percent (an unfinished state is capped at 99 %). The ground truth comes from
the procedure: completed atomic actions plus the fraction of the current action's path already
travelled, divided by the number of actions (never from time).

## Training

- data: `procvlm_ros.synth` data seed {data_seed}, {episodes} episodes (success, fail, stall and
  regress in equal numbers, the three task kinds in turn), {windows} windows (one per frame);
- tokenizer: byte-level BPE (GPT-2 style word pre-tokenisation) trained from scratch on the
  task's prompts and answers, {vocab} tokens, the Qwen-VL special tokens at ids 0-6, every whole
  percentage one token;
- model seed {seed}; AdamW (betas 0.9/0.98, weight decay {weight_decay}), peak learning rate
  {lr}, {warmup} warm-up steps, then cosine decay to {min_lr_ratio} x; {steps} steps, each of
  {batch_episodes} runs of up to {run_length} consecutive windows (frames shared within a run);
  loss: next-token cross-entropy on the answer tokens, the progress-number token weighted
  x{number_weight} and the tokens of the first remaining action (where the images decide which
  action is under way) x{action_weight};
- two training-only auxiliaries, not in the checkpoint: a small head reading the scene state
  (progress, action fraction, gripper position, holding) from each frame's visual tokens
  (weight {state_weight}), without which the tiny model learned the text prior and ignored its
  images, and {text_batch} text-only samples per step (the prompt without images answered with
  the task's full action list, weight {text_weight}) that teach it to read the task sentence;
- CPU, {threads} threads: {train_min:.1f} min of training + {data_min:.1f} min of data
  preparation; torch {torch};
- reproduce: `python -m procvlm_ros.demo_model.train --out DIR --seed {seed} --episodes
  {episodes} --steps {steps}{eval_args}`. Training is deterministic: the same seed, arguments,
  thread count and library versions give byte-identical weights.
"""

_EVAL = """
## Measured accuracy (held-out episodes)

`procvlm-eval` on {episodes} episodes generated with data seed {eval_seed} (not used in
training; success, fail, stall and regress episodes of all three task kinds), {windows}
windows, reference backend (transformers, CPU, fp32), every frame of each episode video scored:

| metric | value |
|---|---|
| VOC, mean over success episodes | {voc_mean} |
| VOC, mean over all episodes | {voc_mean_all} |
| progress MAE (mean over episodes) | {mae_mean} |
| done F1 (predicted >= {done_threshold:g} % vs ground-truth done) | {done_f1} |
| done precision / recall | {done_precision} / {done_recall} |
| MCC@95 (official definition) | {mcc95} |
| Kendall tau (official tau-a) | {kendall_tau_mean} |
| negative-step rate (episodes without undo) | {negative_step_rate_mean} |
| answers with a parsable progress tag | {parse_rate} |
| remaining actions exactly right | {actions_exact_rate} |
| scoring speed | {windows_per_s} windows/s |
{stall_rows}
| kind | episodes | VOC | MAE | negative-step rate |
|---|---|---|---|---|
{kinds}

Command: `{command}`
"""

_TAIL = """
## Limitations

- Synthetic task only: fixed 160x120 side view, six colours, three task kinds.
- Other frame rates or sample periods change the motion seen in a window and degrade the
  estimates; other image sizes change the visual tokens.
- Progress is read from the scene: an undone step lowers the estimate because the scene shows
  less done, and a stall shows as a flat estimate; the model has no notion of elapsed time.
- fp32 weights; numbers differ slightly between backends and dtypes.
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return 'n/a'
    if isinstance(value, float):
        return f'{value:.{digits}f}'
    return str(value)


def _stall_rows(sup: dict[str, Any] | None) -> str:
    """The node's stall logic replayed on the predictions (procvlm-eval's ``supervision``)."""
    if not sup:
        return ''
    cfg = sup['config']
    rows = ''
    if sup['stall_episodes']:
        n = sup['stall_episodes']
        rows += (f'| stall episodes flagged while the stall lasts | '
                 f'{round(sup["stall_detected_rate"] * n)}/{n} |\n'
                 f'| stall episodes flagged within the stall window ({cfg["stall_window_s"]:g} s '
                 f'+ one frame, min rise {cfg["stall_min_delta"]:g}) | '
                 f'{round(sup["stall_in_window_rate"] * n)}/{n} |\n')
    if sup['steady_episodes']:
        n = sup['steady_episodes']
        rows += (f'| success episodes without any intervention | '
                 f'{round(sup["steady_no_intervention_rate"] * n)}/{n} |\n')
    return rows


def data_card(summary: dict[str, Any], report: dict[str, Any] | None,
              eval_command: str = '') -> str:
    """Render the data card from the training summary and (optionally) an evaluation report."""
    cfg = summary['config']
    text = _HEAD.format(
        params=summary['parameters'] / 1e6, windows=summary['training_windows'],
        vocab=summary['vocab_size'], train_min=summary['train_seconds'] / 60,
        data_min=summary['data_seconds'] / 60, torch=summary['torch'],
        eval_args=(f' --eval-episodes {cfg["eval_episodes"]} --eval-seed {cfg["eval_seed"]}'
                   if cfg.get('eval_episodes') else ''), **cfg)
    if report is not None:
        kinds = '\n'.join(
            f'| {kind} | {v["episodes"]} | {_fmt(v["voc_mean"])} | {_fmt(v["mae_mean"])} | '
            f'{_fmt(v["negative_step_rate_mean"])} |' for kind, v in report['by_kind'].items())
        keys = ('voc_mean', 'voc_mean_all', 'mae_mean', 'done_f1', 'done_precision',
                'done_recall', 'mcc95', 'kendall_tau_mean', 'negative_step_rate_mean',
                'parse_rate', 'actions_exact_rate')
        text += _EVAL.format(
            episodes=report['episodes'], eval_seed=cfg['eval_seed'], windows=report['windows'],
            done_threshold=report['done_threshold_percent'],
            windows_per_s=_fmt(report['windows_per_s'], 2), kinds=kinds, command=eval_command,
            stall_rows=_stall_rows(report.get('supervision')),
            **{k: _fmt(report[k]) for k in keys})
    return text + _TAIL
