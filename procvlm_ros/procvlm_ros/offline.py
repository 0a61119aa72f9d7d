"""
Offline scoring of a video file or a rosbag2 image topic, with official ProcVLM records.

Matches ``evqa/inference.py`` ``infer_progress_from_video``: uniform sampling of at most
``max_sampled_frames`` frames, causal windows padded with the first sampled frame, JPEG q95 round
trip, the same JSONL keys and the carry-forward fallback from 0.0. Differences, all deliberate:
frames are decoded with PyAV and round-tripped in memory (no frame directory on disk); windows are
run one at a time (the official code batches them; fp32 results are identical, see the notes);
a rosbag2 topic can be scored too, with ``timestamp_sec`` taken from header stamps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
import json
import logging
import math
from pathlib import Path
from typing import Any

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.backends.base import Backend
from procvlm_ros.core.config import BackendConfig, ProfileConfig, WindowConfig
from procvlm_ros.core.errors import ConfigError, ProcVlmError
from procvlm_ros.core.estimator import ProgressEstimator
from procvlm_ros.core.monitor import Admission, Monitor, QueryOutput
from procvlm_ros.core.profiles import profile_from_config, TaskProfile
from procvlm_ros.core.profiles.results import CriticStep, NavigationDecision
from procvlm_ros.core.prompt import validate_task
from procvlm_ros.core.sampling import build_uniform_indices
from procvlm_ros.core.types import Frame, ProgressEstimate, Status

_LOG = logging.getLogger(__name__)
# Official --torch_dtype spellings mapped onto BackendConfig.dtype.
_DTYPES = {'bf16': 'bf16', 'bfloat16': 'bf16', 'fp16': 'fp16', 'float16': 'fp16',
           'half': 'fp16', 'fp32': 'fp32', 'float32': 'fp32', 'float': 'fp32', 'auto': 'auto'}


@dataclass(frozen=True)
class Source:
    """A video file or a bag topic: how many frames, and how to read a subset of them."""

    path: Path
    total_frames: int
    fps: float | None
    topic: str | None
    read: Callable[[list[int]], Iterator[Frame]]


def is_rosbag(path: Path) -> bool:
    """Whether ``path`` is a rosbag2 directory or a single ``.mcap``/``.db3`` file."""
    if path.is_dir():
        return (path / 'metadata.yaml').exists() or any(path.glob('*.mcap')) or any(
            path.glob('*.db3'))
    return path.suffix in ('.mcap', '.db3')


def open_source(path: str | Path, image_topic: str | None = None) -> Source:
    """Probe a video or rosbag2 input; raise FileNotFoundError or a ProcVlmError."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f'video or rosbag not found: {path}')
    if is_rosbag(path):
        from procvlm_ros.media import rosbag

        topic = image_topic or _single_image_topic(path)
        count = rosbag.probe_image_topic(path, topic)
        return Source(path, count, None, topic,
                      lambda idx: rosbag.read_bag_frames(path, topic, idx))
    from procvlm_ros.media import video

    info = video.probe_video(path)
    return Source(path, info.frame_count, info.fps, None,
                  lambda idx: video.read_video_frames(path, idx))


def _single_image_topic(path: Path) -> str:
    from procvlm_ros.media import rosbag

    topics = rosbag.list_image_topics(path)
    if len(topics) != 1:
        raise ProcVlmError(
            f'{path} has {len(topics)} image topics {sorted(topics)}; pass --image_topic')
    return next(iter(topics))


def make_output_record(*, source: Source, task: str, sample_index: int, frame: Frame,
                       first_stamp_ns: int, window_frame_indices: list[int],
                       estimate: ProgressEstimate) -> dict[str, Any]:
    """One JSONL row with the official keys (``image_topic`` is added for rosbag input)."""
    record: dict[str, Any] = {
        **_where(source, task, sample_index, frame, first_stamp_ns),
        'window_frame_indices': window_frame_indices,
        'progress': estimate.percent,
        'parsed_progress': estimate.parsed_percent,
        'progress_source': estimate.progress_source,
        'reasoning': estimate.reasoning,
        'model_output': estimate.model_output,
        # Beside the official keys: the cost of this window's decoding.
        'decoder_passes': estimate.decoder_passes,
        'draft_tokens_accepted': estimate.draft_tokens_accepted,
    }
    if source.topic is not None:
        record['image_topic'] = source.topic
    return record


def _where(source: Source, task: str, sample_index: int, frame: Frame,
           first_stamp_ns: int) -> dict[str, Any]:
    # The official leading keys: which file, task and frame a row is about.
    if source.fps is not None:
        timestamp = frame.index / max(float(source.fps), 1e-6)
    else:
        timestamp = (frame.stamp_ns - first_stamp_ns) / 1e9
    return {'video_path': str(source.path), 'task': task, 'sample_index': sample_index,
            'frame_index': frame.index, 'timestamp_sec': timestamp}


def critic_fields(step: CriticStep) -> dict[str, Any]:
    """What a ``pairwise_critic`` row adds to the official keys (``progress`` is the value)."""
    return {'delta': step.delta, 'done': step.done, 'done_score': step.done_score}


def navigation_record(*, source: Source, task: str, sample_index: int, frame: Frame,
                      first_stamp_ns: int, estimate: ProgressEstimate) -> dict[str, Any]:
    """One ``navigation_action`` row: the action ('' when none was read) and the step index."""
    decision = estimate.result
    action = decision.action if isinstance(decision, NavigationDecision) else ''
    step = decision.step if isinstance(decision, NavigationDecision) else None
    record = {**_where(source, task, sample_index, frame, first_stamp_ns),
              'window_frame_indices': list(estimate.frame_indices), 'action': action,
              'step': step, 'status_message': estimate.status_message,
              'model_output': estimate.model_output}
    if source.topic is not None:
        record['image_topic'] = source.topic
    return record


def query_record(*, source: Source, task: str, sample_index: int, frame: Frame,
                 first_stamp_ns: int, query: QueryOutput) -> dict[str, Any]:
    """One ``grounded_query`` row: the answer about this frame and its points (frame pixels)."""
    answer = query.answer.result
    record = {**_where(source, task, sample_index, frame, first_stamp_ns),
              'question': query.question, 'answer': answer.answer if query.answer.ok else None,
              'points': [[p.x, p.y, p.label] for p in answer.points],
              'zoomed': answer.zoomed,
              'zoom_point': [answer.zoom_point.x, answer.zoom_point.y] if answer.zoom_point
              else None,
              'model_size': list(answer.model_size), 'frame_size': list(answer.frame_size),
              'notes': list(query.answer.notes), 'model_output': query.answer.text}
    if source.topic is not None:
        record['image_topic'] = source.topic
    return record


def file_monitor(backend: Backend, task: str, *, window_size: int = 8,
                 jpeg_roundtrip: bool = True, pre_resize_patch_size: int = 14,
                 speculation: bool = False, estimator: ProgressEstimator | None = None,
                 profile: TaskProfile | None = None) -> Monitor:
    """
    The core Monitor set up for a file: every sampled frame, order as given, 0.0 start.

    :param profile: The task profile (default: the official ProcVLM query). Profiles that
        publish no progress start from None instead of 0.0 (there is nothing to carry).
    """
    estimator = estimator or ProgressEstimator(
        backend, task, jpeg_roundtrip=jpeg_roundtrip,
        pre_resize_patch_size=pre_resize_patch_size, cache_size=2 * max(1, window_size),
        profile=profile)
    progress = estimator.profile.publishes == 'progress'
    return Monitor(backend, window=WindowConfig(window_size=max(1, int(window_size)),
                                                sample_period_s=0.0,
                                                jpeg_roundtrip=jpeg_roundtrip),
                   task=task, stale_after_s=math.inf,
                   initial_percent=0.0 if progress else None, live=False,
                   speculation=speculation, estimator=estimator)


def score_source(source: Source, scorer: Monitor | ProgressEstimator, *, window_size: int = 8,
                 max_frames: int | None = None, max_sampled_frames: int = 512,
                 output_path: Path | None = None, show_progress: bool = True,
                 question: str = '') -> list[dict[str, Any]]:
    """
    Evaluate every sampled frame's window; write JSONL rows as they are produced.

    ``scorer`` is a :class:`Monitor` made by :func:`file_monitor` (or, for older callers, a
    :class:`ProgressEstimator`, wrapped in one). Its backend must be loadable; the caller closes
    it. Rows follow the monitor's profile: progress profiles write the official keys
    (``pairwise_critic`` adds ``delta``, ``done``, ``done_score``), ``navigation_action`` the
    action and step, ``grounded_query`` asks ``question`` about every sampled frame (as the
    live ``~/query`` service asks about the newest one) and writes the answer and its points.
    """
    from tqdm import tqdm

    monitor = scorer if isinstance(scorer, Monitor) else file_monitor(
        scorer.backend, scorer.task, window_size=window_size, estimator=scorer)
    if not monitor.profile.runs_windows and not question.strip():
        raise ConfigError(f'the {monitor.profile.name} profile needs a question (--question)')
    if not monitor.load():
        raise ProcVlmError(f'cannot load backend: {monitor.load_error}')
    indices = build_uniform_indices(source.total_frames, max_sampled_frames, max_frames)
    if not indices:
        raise ProcVlmError(f'no frames selected from {source.path} '
                           f'({source.total_frames} frames, max_frames={max_frames})')
    _LOG.info('frame policy: source=%d sampled=%d fps=%s', source.total_frames, len(indices),
              source.fps)
    records: list[dict[str, Any]] = []
    out = None
    if output_path is not None:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        out = output_path.open('w', encoding='utf-8')
    first_stamp = None
    try:
        bar = tqdm(total=len(indices), desc='Scoring windows', unit='win',
                   disable=not show_progress)
        for sample_index, frame in enumerate(source.read(indices)):
            first_stamp = frame.stamp_ns if first_stamp is None else first_stamp
            record = _record(monitor, source, frame, sample_index, first_stamp, question)
            records.append(record)
            if out is not None:
                out.write(json.dumps(record, ensure_ascii=False) + '\n')
                out.flush()
            if isinstance(record.get('progress'), float):
                bar.set_postfix(progress=f'{record["progress"]:.1f}%')
            bar.update(1)
        bar.close()
    finally:
        if out is not None:
            out.close()
    if len(records) != len(indices):
        raise ProcVlmError(f'{source.path}: decoded {len(records)} of {len(indices)} '
                           'selected frames; the file may be truncated')
    return records


def _record(monitor: Monitor, source: Source, frame: Frame, sample_index: int,
            first_stamp: int, question: str) -> dict[str, Any]:
    where = {'source': source, 'task': monitor.task, 'sample_index': sample_index,
             'frame': frame, 'first_stamp_ns': first_stamp}
    profile = monitor.profile
    if not profile.runs_windows:
        verdict = monitor.offer(frame, frame.stamp_ns)
        if verdict.admission is Admission.REJECTED:
            raise ProcVlmError(f'frame {frame.index} cannot be asked about: {verdict.message}')
        return query_record(**where, query=monitor.ask_latest(question, frame.stamp_ns))
    estimate = _score_frame(monitor, frame, sample_index)
    if profile.publishes == 'action':
        return navigation_record(**where, estimate=estimate)
    record = make_output_record(**where, window_frame_indices=list(estimate.frame_indices),
                                estimate=estimate)
    if isinstance(estimate.result, CriticStep):
        record.update(critic_fields(estimate.result))
    return record


def _score_frame(monitor: Monitor, frame: Frame, sample_index: int) -> ProgressEstimate:
    verdict = monitor.offer(frame, frame.stamp_ns)
    if verdict.admission is Admission.REJECTED:
        raise ProcVlmError(f'frame {frame.index} cannot be scored: {verdict.message}')
    estimate = monitor.step(frame.stamp_ns).estimate
    if estimate is None or estimate.status is Status.ERROR:
        # Offline there is nobody to watch a status: stop rather than write rows that
        # silently carry a stale value forward.
        why = estimate.status_message if estimate is not None else 'no window was evaluated'
        raise ProcVlmError(f'window {sample_index} (frame {frame.index}) failed: {why}')
    return estimate


def infer_progress_from_video(*, video_path: str | Path, task: str, model_path: str = '',
                              output_path: str | Path | None = None, window_size: int = 8,
                              torch_dtype: str = 'bf16', max_new_tokens: int = 4096,
                              temperature: float = 0.0, max_frames: int | None = None,
                              max_sampled_frames: int = 512, enable_value_head: bool = False,
                              backend: str | Backend = 'transformers',
                              image_topic: str | None = None, plot: bool = True,
                              show_progress: bool = True, profile: ProfileConfig | None = None,
                              question: str = '',
                              **backend_options: Any) -> list[dict[str, Any]]:
    """
    Score a video or rosbag2 topic; return (and optionally write) the per-frame records.

    Keyword-only like the official function. ``backend`` is a kind name or an already
    constructed :class:`Backend`; ``backend_options`` are further ``BackendConfig`` fields
    (``device``, ``attn_implementation``, ``prompt_layout``, ``value_head_calibration``, ...).
    ``profile`` picks the task profile and its settings (default: the official ProcVLM query);
    ``question`` is what ``grounded_query`` asks about every sampled frame.
    Also writes ``<output>.png`` with the progress curve when ``plot`` and ``output_path`` (for
    profiles that publish progress).
    """
    task = validate_task(task)
    source = open_source(video_path, image_topic)
    jpeg = backend_options.pop('jpeg_roundtrip', True)
    if isinstance(backend, Backend):
        runner = backend
        patch = backend_options.get('pre_resize_patch_size', 14)
        speculation = bool(backend_options.get('speculation', False))
    else:
        dtype = _DTYPES.get(str(torch_dtype).lower())
        if dtype is None:
            raise ProcVlmError(
                f'unknown torch_dtype {torch_dtype!r}; use one of {sorted(_DTYPES)}')
        config = BackendConfig(backend=backend, model=model_path, dtype=dtype,
                               max_new_tokens=max_new_tokens, temperature=temperature,
                               enable_value_head=enable_value_head, **backend_options)
        runner, patch = create_backend(config), config.pre_resize_patch_size
        speculation = config.speculation and config.temperature == 0
    out = Path(output_path).expanduser().resolve() if output_path else None
    chosen = _profile(profile, model_path, backend_options.get('prompt_layout', 'images_first'))
    if chosen is not None and not chosen.runs_windows and not question.strip():
        raise ConfigError(f'the {chosen.name} profile needs a question (--question)')
    with runner:
        monitor = file_monitor(runner, task, window_size=window_size, jpeg_roundtrip=jpeg,
                               pre_resize_patch_size=patch, speculation=speculation,
                               profile=chosen)
        records = score_source(source, monitor, window_size=window_size,
                               max_frames=max_frames, max_sampled_frames=max_sampled_frames,
                               output_path=out, show_progress=show_progress,
                               question=question)
    if chosen is not None and chosen.publishes != 'progress':
        return records
    if plot and out is not None:
        from procvlm_ros.media.plot import plot_progress

        plot_progress(records, out.with_suffix('.png'), title=task)
    return records


def _profile(cfg: ProfileConfig | None, model: str, prompt_layout: str) -> TaskProfile | None:
    # None: the estimator's default, the official ProcVLM query (exactly as before profiles).
    if cfg is None or cfg.profile == 'procvlm_progress':
        return None
    return profile_from_config(cfg, model=model, prompt_layout=prompt_layout)
