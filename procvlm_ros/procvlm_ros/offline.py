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
from procvlm_ros.core.config import BackendConfig, WindowConfig
from procvlm_ros.core.errors import ProcVlmError
from procvlm_ros.core.estimator import ProgressEstimator
from procvlm_ros.core.monitor import Admission, Monitor
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
    if source.fps is not None:
        timestamp = frame.index / max(float(source.fps), 1e-6)
    else:
        timestamp = (frame.stamp_ns - first_stamp_ns) / 1e9
    record: dict[str, Any] = {
        'video_path': str(source.path),
        'task': task,
        'sample_index': sample_index,
        'frame_index': frame.index,
        'timestamp_sec': timestamp,
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


def file_monitor(backend: Backend, task: str, *, window_size: int = 8,
                 jpeg_roundtrip: bool = True, pre_resize_patch_size: int = 14,
                 speculation: bool = False,
                 estimator: ProgressEstimator | None = None) -> Monitor:
    """The core Monitor set up for a file: every sampled frame, order as given, 0.0 start."""
    estimator = estimator or ProgressEstimator(
        backend, task, jpeg_roundtrip=jpeg_roundtrip,
        pre_resize_patch_size=pre_resize_patch_size, cache_size=2 * max(1, window_size))
    return Monitor(backend, window=WindowConfig(window_size=max(1, int(window_size)),
                                                sample_period_s=0.0,
                                                jpeg_roundtrip=jpeg_roundtrip),
                   task=task, stale_after_s=math.inf, initial_percent=0.0, live=False,
                   speculation=speculation, estimator=estimator)


def score_source(source: Source, scorer: Monitor | ProgressEstimator, *, window_size: int = 8,
                 max_frames: int | None = None, max_sampled_frames: int = 512,
                 output_path: Path | None = None,
                 show_progress: bool = True) -> list[dict[str, Any]]:
    """
    Evaluate every sampled frame's window; write JSONL rows as they are produced.

    ``scorer`` is a :class:`Monitor` made by :func:`file_monitor` (or, for older callers, a
    :class:`ProgressEstimator`, wrapped in one). Its backend must be loadable; the caller closes
    it.
    """
    from tqdm import tqdm

    monitor = scorer if isinstance(scorer, Monitor) else file_monitor(
        scorer.backend, scorer.task, window_size=window_size, estimator=scorer)
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
            estimate = _score_frame(monitor, frame, sample_index)
            record = make_output_record(
                source=source, task=monitor.task, sample_index=sample_index, frame=frame,
                first_stamp_ns=first_stamp, window_frame_indices=list(estimate.frame_indices),
                estimate=estimate)
            records.append(record)
            if out is not None:
                out.write(json.dumps(record, ensure_ascii=False) + '\n')
                out.flush()
            bar.set_postfix(progress=f'{estimate.percent:.1f}%')
            bar.update(1)
        bar.close()
    finally:
        if out is not None:
            out.close()
    if len(records) != len(indices):
        raise ProcVlmError(f'{source.path}: decoded {len(records)} of {len(indices)} '
                           'selected frames; the file may be truncated')
    return records


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
                              show_progress: bool = True,
                              **backend_options: Any) -> list[dict[str, Any]]:
    """
    Score a video or rosbag2 topic; return (and optionally write) the per-frame records.

    Keyword-only like the official function. ``backend`` is a kind name or an already
    constructed :class:`Backend`; ``backend_options`` are further ``BackendConfig`` fields
    (``device``, ``attn_implementation``, ``prompt_layout``, ``value_head_calibration``, ...).
    Also writes ``<output>.png`` with the progress curve when ``plot`` and ``output_path``.
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
    with runner:
        monitor = file_monitor(runner, task, window_size=window_size, jpeg_roundtrip=jpeg,
                               pre_resize_patch_size=patch, speculation=speculation)
        records = score_source(source, monitor, window_size=window_size,
                               max_frames=max_frames, max_sampled_frames=max_sampled_frames,
                               output_path=out, show_progress=show_progress)
    if plot and out is not None:
        from procvlm_ros.media.plot import plot_progress

        plot_progress(records, out.with_suffix('.png'), title=task)
    return records
