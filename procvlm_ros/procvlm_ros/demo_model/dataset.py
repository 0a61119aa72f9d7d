"""
Training windows built exactly as the estimator and the node build model inputs.

Every episode frame goes through the inference path: (optionally an H.264 mp4 round trip, as
when an episode video is scored offline) -> JPEG q95 round trip -> qwen-vl-utils pre-resize
(factor 28) -> the checkpoint's own image processor. Window ``i`` of an episode holds the frames
at ``window_positions(i, 8)`` (causal, first frame repeated at the start), i.e. consecutive
frames at the episode frame rate: what ``offline.infer_progress_from_video`` feeds for an episode
video, and what the live node feeds when it keeps every camera frame (``sample_period_s`` below
the camera period). The prompt is ``build_prompt`` + ``build_messages`` rendered with the
checkpoint's chat template, tokenised by the checkpoint's processor.

Each frame is processed once and stored as uint8 patches (the processor's output is
``(v / 255 - 0.5) / 0.5`` of 8-bit pixels, and the two temporal copies are identical), so a
window's ``pixel_values`` are rebuilt exactly from its frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
import logging
from pathlib import Path
import tempfile
from typing import Any

import numpy as np
from PIL import Image

from procvlm_ros.core import image as image_ops
from procvlm_ros.core.prompt import build_messages, build_prompt
from procvlm_ros.core.sampling import window_positions
from procvlm_ros.demo_model.answers import format_answer, target_percent, UNFINISHED_HEAD
from procvlm_ros.synth.episode import Episode

_LOG = logging.getLogger(__name__)

WINDOW_SIZE = 8  # official window (procvlm-reference.md 1.4)
PRE_RESIZE_PATCH = 14  # official transformers path (factor 28), the node's default
TEMPORAL = 2


@dataclass
class EpisodeWindows:
    """One episode, ready for training: frame patches, prompt ids and per-frame answer ids."""

    episode_id: str
    task: str
    patches: np.ndarray  # (frames, tokens_per_frame * 4, 3 * 16 * 16) uint8, one temporal copy
    grid: tuple[int, int, int]  # (1, grid_h, grid_w) of every frame
    prompt_ids: list[int]  # chat up to "<|im_start|>assistant\n", image pads expanded
    answer_ids: list[list[int]]  # per frame: answer tokens + <|im_end|>
    number_pos: list[int]  # per frame: index in answer_ids of the progress number token (-1)
    first_action: list[list[int]]  # per frame: indices of the first remaining action's tokens
    progress: np.ndarray  # ground truth per frame
    state: np.ndarray  # (frames, STATE_DIM) float32 scene state targets, see frame_state()

    @property
    def num_frames(self) -> int:
        return int(self.patches.shape[0])

    def window(self, index: int) -> list[int]:
        """Frame indices of window ``index`` (oldest first)."""
        return window_positions(index, WINDOW_SIZE)


def prepare_frame(rgb: np.ndarray) -> Image.Image:
    """The estimator's per-frame preprocessing: JPEG q95 round trip, then the pre-resize."""
    return image_ops.qwen_vl_pre_resize(Image.fromarray(image_ops.jpeg_roundtrip(rgb)),
                                        PRE_RESIZE_PATCH)


def mp4_roundtrip(frames: Sequence[np.ndarray], fps: float) -> list[np.ndarray]:
    """Encode frames as the synthetic exporter does (H.264 crf 18) and decode them again."""
    from procvlm_ros.media.video import read_video_frames, write_video
    from procvlm_ros.synth.export import VIDEO_OPTIONS

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'episode.mp4'
        write_video(path, frames, fps, options=VIDEO_OPTIONS)
        decoded = [f.image for f in read_video_frames(path)]
    if len(decoded) != len(frames):
        raise RuntimeError(f'mp4 round trip returned {len(decoded)} of {len(frames)} frames')
    return decoded


def frame_patches(processor: Any, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
    """
    Run the checkpoint's image processor on one prepared frame; return uint8 patches and grid.

    :raises ValueError: If the processor output is not an exact 8-bit image (then the compact
        storage would change the model input).
    """
    out = processor.image_processor(images=[image], return_tensors='np')
    pv = np.asarray(out['pixel_values'], dtype=np.float32)
    grid = tuple(int(v) for v in np.asarray(out['image_grid_thw'])[0])
    n, dim = pv.shape
    per_t = dim // TEMPORAL
    pv5 = pv.reshape(n, 3, TEMPORAL, per_t // 3)
    levels = (pv5[:, :, 0] + 1.0) * 127.5
    u8 = np.rint(levels)
    if np.abs(levels - u8).max() > 1e-3 or not np.array_equal(pv5[:, :, 0], pv5[:, :, 1]):
        raise ValueError('image processor output is not an 8-bit image in [-1, 1]; check '
                         'image_mean/image_std in preprocessor_config.json')
    return u8.astype(np.uint8).reshape(n, per_t), grid  # type: ignore[return-value]


def patches_to_pixel_values(patches: np.ndarray) -> np.ndarray:
    """Inverse of the compact storage: ``(n, 768)`` uint8 -> ``(n, 1536)`` float32 in [-1, 1]."""
    n, per_t = patches.shape
    values = (patches.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).reshape(
        n, 3, 1, per_t // 3)
    return np.repeat(values, TEMPORAL, axis=2).reshape(n, per_t * TEMPORAL)


def prompt_ids(processor: Any, task: str, images: Sequence[Image.Image]) -> list[int]:
    """Token ids of the chat up to the assistant turn, as the transformers backend builds them."""
    messages = build_messages(list(images), build_prompt(task), layout='images_first')
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = text[0] if isinstance(text, list) else text
    batch = processor(text=[text], images=list(images), return_tensors='np')
    return [int(i) for i in batch['input_ids'][0]]


def answer_ids(tokenizer: Any, answer: str,
               percent: int | None) -> tuple[list[int], int, list[int]]:
    """
    Tokenise an answer for training.

    :returns: Answer tokens + ``<|im_end|>``; the index of the progress number token (-1 if
        none); the indices of the tokens of the first remaining action (where the model has to
        decide from the images which action is under way).
    """
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(i) for i in enc['input_ids']]
    offsets = [tuple(o) for o in enc['offset_mapping']]
    ids.append(int(tokenizer.convert_tokens_to_ids('<|im_end|>')))
    pos = -1
    if percent is not None:
        for i, tid in enumerate(ids):
            if tokenizer.decode([tid]) == str(percent) and \
                    tokenizer.decode(ids[:i]).endswith('<progress>'):
                pos = i
                break
    first: list[int] = []
    start = answer.find('1. ')
    if answer.startswith(UNFINISHED_HEAD) and start >= 0:
        end = answer.find('\n', start)
        first = [i for i, (a, b) in enumerate(offsets) if a < end and b > start + 3]
    return ids, pos, first


def build_episode(processor: Any, episode: Episode, *, mp4: bool = False) -> EpisodeWindows:
    """Render, preprocess and tokenise one episode."""
    frames = [episode.frame(i) for i in range(episode.num_frames)]
    if mp4:
        frames = mp4_roundtrip(frames, episode.fps)
    prepared = [prepare_frame(rgb) for rgb in frames]
    results = [frame_patches(processor, img) for img in prepared]
    grids = {g for _, g in results}
    if len(grids) != 1:
        raise ValueError(f'{episode.episode_id}: frames have different grids {grids}')
    progress = episode.progress
    answers, positions, firsts = [], [], []
    for i in range(episode.num_frames):
        text = format_answer(episode.remaining_actions(i), float(progress[i]))
        ids, pos, first = answer_ids(processor.tokenizer, text,
                                     target_percent(float(progress[i])))
        answers.append(ids)
        positions.append(pos)
        firsts.append(first)
    window = [prepared[p] for p in window_positions(0, WINDOW_SIZE)]
    return EpisodeWindows(
        episode_id=episode.episode_id, task=episode.task.sentence,
        patches=np.stack([p for p, _ in results]), grid=grids.pop(),
        prompt_ids=prompt_ids(processor, episode.task.sentence, window),
        answer_ids=answers, number_pos=positions, first_action=firsts, progress=progress,
        state=np.stack([frame_state(episode, i) for i in range(episode.num_frames)]))


STATE_DIM = 5


def frame_state(episode: Episode, index: int) -> np.ndarray:
    """
    What one frame shows, as numbers in [0, 1] (training-only targets of an auxiliary head).

    ``[progress, fraction of the current action, gripper x, gripper y, holding]``.
    """
    from procvlm_ros.synth import scene

    pose = episode.poses[index]
    state = scene.state_at(episode.task, pose)
    k = episode.task.num_actions
    s = min(max(pose.s, 0.0), float(k))
    fraction = 0.0 if s >= k else s - np.floor(s)
    gx, gy = state.gripper
    return np.array([s / k, fraction, gx / scene.WIDTH, gy / scene.HEIGHT,
                     float(state.holding is not None)], dtype=np.float32)


def tokenizer_corpus(episodes: Iterable[Episode]) -> list[str]:
    """Texts the scratch tokenizer is trained on: chat pieces, prompts and answers."""
    corpus = ['user\n', 'assistant\n', '\n'] * 50
    for ep in episodes:
        corpus.append(build_prompt(ep.task.sentence))
        progress = ep.progress
        corpus.extend(format_answer(ep.remaining_actions(i), float(progress[i]))
                      for i in range(ep.num_frames))
    return corpus


@dataclass
class Batch:
    """Model inputs for a batch of windows sharing frames (vision runs once per frame)."""

    input_ids: Any  # (B, L) long, right padded
    attention_mask: Any  # (B, L)
    mm_token_type_ids: Any  # (B, L)
    labels: Any  # (B, L), -100 outside the answers
    weights: Any  # (B, L) float loss weight per label
    number_mask: Any  # (B, L) bool: label is the progress number token
    state: Any  # (U, STATE_DIM) scene state of each distinct frame
    pixel_values: Any  # (U * patches, 1536) unique frames
    unique_grid: Any  # (U, 3)
    occurrence: Any  # (B * 8,) index into the unique frames, window order
    grid: Any  # (B * 8, 3) grid of every image occurrence


def window_inputs(ep: EpisodeWindows, index: int, image_id: int = 5) -> dict[str, Any]:
    """Generation inputs of one window (prompt only), as the processor would return them."""
    import torch

    ids = torch.tensor([ep.prompt_ids])
    pv = np.concatenate([patches_to_pixel_values(ep.patches[p]) for p in ep.window(index)])
    return {'input_ids': ids, 'attention_mask': torch.ones_like(ids),
            'mm_token_type_ids': (ids == image_id).long(), 'pixel_values': torch.from_numpy(pv),
            'image_grid_thw': torch.tensor([ep.grid] * WINDOW_SIZE, dtype=torch.long)}


def collate(items: Sequence[tuple[EpisodeWindows, int]], *, number_weight: float = 1.0,
            action_weight: float = 1.0, pad_id: int = 0, image_id: int = 5) -> Batch:
    """Build a :class:`Batch` from ``(episode, frame index)`` pairs."""
    import torch

    keys: dict[tuple[int, int], int] = {}
    frames: list[np.ndarray] = []
    states: list[np.ndarray] = []
    occurrence: list[int] = []
    seqs, labels, weights = [], [], []
    for ep, index in items:
        for pos in ep.window(index):
            key = (id(ep), pos)
            if key not in keys:
                keys[key] = len(frames)
                frames.append(ep.patches[pos])
                states.append(ep.state[pos])
            occurrence.append(keys[key])
        answer = ep.answer_ids[index]
        seqs.append(ep.prompt_ids + answer)
        labels.append([-100] * len(ep.prompt_ids) + answer)
        w = [0.0] * len(ep.prompt_ids) + [1.0] * len(answer)
        for pos in ep.first_action[index]:
            w[len(ep.prompt_ids) + pos] = action_weight
        if ep.number_pos[index] >= 0:
            w[len(ep.prompt_ids) + ep.number_pos[index]] = number_weight
        weights.append(w)
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    lab = torch.full((len(seqs), length), -100, dtype=torch.long)
    wts = torch.zeros((len(seqs), length), dtype=torch.float32)
    num = torch.zeros((len(seqs), length), dtype=torch.bool)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for b, (s, lb, w) in enumerate(zip(seqs, labels, weights)):
        ids[b, :len(s)] = torch.tensor(s)
        lab[b, :len(s)] = torch.tensor(lb)
        wts[b, :len(s)] = torch.tensor(w)
        mask[b, :len(s)] = 1
        ep, index = items[b]
        if ep.number_pos[index] >= 0:
            num[b, len(ep.prompt_ids) + ep.number_pos[index]] = True
    grid = torch.tensor([items[0][0].grid] * len(occurrence), dtype=torch.long)
    pv = torch.from_numpy(np.concatenate([patches_to_pixel_values(f) for f in frames]))
    return Batch(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == image_id).long(),
                 labels=lab, weights=wts, number_mask=num,
                 state=torch.from_numpy(np.stack(states)), pixel_values=pv,
                 unique_grid=torch.tensor([items[0][0].grid] * len(frames), dtype=torch.long),
                 occurrence=torch.tensor(occurrence, dtype=torch.long), grid=grid)
