"""
LeRobot v3 datasets as labelling sources, read with pyarrow + PyAV (no torch, no lerobot).

Layout read (LeRobot ``CODEBASE_VERSION`` v3.0): ``meta/info.json`` (``fps``, ``features``,
``video_path`` template), ``meta/episodes/chunk-*/file-*.parquet`` (one row per episode:
``episode_index``, ``tasks``, ``length``, ``dataset_from_index``, and per video key
``videos/<key>/{chunk_index,file_index,from_timestamp}``). Episodes share mp4 files; an episode
starts at ``from_timestamp`` in its file, frame ``i`` at ``from_timestamp + i / fps``.

Writing a dataset with added ``progress``/``reward`` features goes through LeRobot's own
``dataset_tools.add_features`` and so needs the ``lerobot`` package.
"""

from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
from typing import Any

from procvlm_ros.core.errors import ProcVlmError
from procvlm_ros.label.sources import EpisodeError, EpisodeSpec


def resolve_root(root_or_repo: str | Path) -> Path:
    """A local dataset root, or a hub repo id downloaded (metadata and videos) to the cache."""
    path = Path(root_or_repo).expanduser()
    if path.exists():
        return path.resolve()
    if str(root_or_repo).count('/') != 1:
        raise ProcVlmError(f'LeRobot dataset {root_or_repo!r}: no such folder, and not a hub '
                           'repo id (owner/name)')
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(root_or_repo), repo_type='dataset',
                                      allow_patterns=['meta/**', 'videos/**']))
    except Exception as exc:  # offline, unknown repo, no permission
        raise ProcVlmError(f'cannot fetch LeRobot dataset {root_or_repo!r} from the hub: '
                           f'{exc}') from exc


def load_info(root: Path) -> dict[str, Any]:
    path = root / 'meta' / 'info.json'
    if not path.is_file():
        raise ProcVlmError(f'{root} is not a LeRobot dataset (no meta/info.json)')
    info = json.loads(path.read_text(encoding='utf-8'))
    version = str(info.get('codebase_version', ''))
    if not version.startswith('v3'):
        raise ProcVlmError(f'{root}: LeRobot codebase_version {version!r}; only v3.x datasets '
                           'are read (convert older ones with LeRobot first)')
    return info


def video_keys(info: dict[str, Any]) -> list[str]:
    return sorted(k for k, f in info.get('features', {}).items() if f.get('dtype') == 'video')


def load_episodes(root: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    files = sorted((root / 'meta' / 'episodes').glob('chunk-*/file-*.parquet'))
    rows: list[dict[str, Any]] = []
    for file in files:
        rows += pq.read_table(file).to_pylist()
    return sorted(rows, key=lambda r: int(r['episode_index']))


def discover_lerobot(root_or_repo: str | Path, *, camera_key: str | None = None,
                     task: str | None = None) -> list[EpisodeSpec]:
    """One spec per episode; dataset-level problems (no such camera) raise ProcVlmError."""
    root = resolve_root(root_or_repo)
    info = load_info(root)
    keys = video_keys(info)
    if camera_key is None:
        if len(keys) != 1:
            raise ProcVlmError(f'{root} has video keys {keys}; pass --camera-key')
        camera_key = keys[0]
    elif camera_key not in keys:
        raise ProcVlmError(f'camera key {camera_key!r} is not a video feature of {root}; '
                           f'video keys: {keys}')
    fps = float(info['fps'])
    specs = []
    for row in load_episodes(root):
        index = int(row['episode_index'])
        tasks = [t for t in (row.get('tasks') or []) if isinstance(t, str) and t.strip()]
        extra = {'camera_key': camera_key, 'fps': fps, 'length': int(row['length']),
                 'dataset_from_index': int(row['dataset_from_index']),
                 'chunk_index': row.get(f'videos/{camera_key}/chunk_index'),
                 'file_index': row.get(f'videos/{camera_key}/file_index'),
                 'from_timestamp': row.get(f'videos/{camera_key}/from_timestamp'),
                 'video_path': info.get('video_path')}
        specs.append(EpisodeSpec(f'episode_{index:06d}', 'lerobot', str(root),
                                 task or (tasks[0] if tasks else None), None, index, extra))
    return specs


def open_lerobot_episode(spec: EpisodeSpec) -> Any:
    """An ``offline.Source`` over this episode's frames of its (shared) video file."""
    from procvlm_ros.media import video
    from procvlm_ros.offline import Source

    x = spec.extra
    if None in (x.get('chunk_index'), x.get('file_index'), x.get('from_timestamp'),
                x.get('video_path')):
        raise EpisodeError(f"{spec.episode_id}: no video for camera {x.get('camera_key')!r} "
                           'in the episode metadata')
    path = Path(spec.path) / x['video_path'].format(
        video_key=x['camera_key'], chunk_index=int(x['chunk_index']),
        file_index=int(x['file_index']))
    if not path.is_file():
        raise EpisodeError(f'{spec.episode_id}: video file missing: {path}')
    fps, length = float(x['fps']), int(x['length'])
    offset = round(float(x['from_timestamp']) * fps)
    try:
        available = video.probe_video(path).frame_count - offset
    except Exception as exc:
        raise EpisodeError(f'{spec.episode_id}: cannot open {path}: {exc}') from exc
    if length <= 0 or available < length:
        raise EpisodeError(f'{spec.episode_id}: {path} holds {max(available, 0)} frames from '
                           f'{offset}, the episode needs {length}')

    def read(indices: list[int]):
        for frame in video.read_video_frames(path, [offset + i for i in indices]):
            local = frame.index - offset
            yield replace(frame, index=local, stamp_ns=round(local * 1e9 / fps))

    return Source(path, length, fps, None, read)


def write_dataset_with_features(root_or_repo: str | Path, results: list[dict[str, Any]],
                                output_dir: Path) -> Path:
    """
    A copy of the dataset with ``progress`` and ``reward`` (float32, shape [1]) per frame, made
    by LeRobot's ``dataset_tools.add_features``.
    """
    try:
        from lerobot.datasets.dataset_tools import add_features
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        import numpy as np
    except ImportError as exc:
        raise ProcVlmError('--write-dataset needs the lerobot package (and its torchvision), '
                           'e.g. in .venv-lerobot (make venv-lerobot); cannot import it: '
                           f'{exc}') from exc
    root = resolve_root(root_or_repo)
    dataset = LeRobotDataset(repo_id=root.name, root=root)
    total = int(dataset.meta.total_frames)
    progress = np.full(total, np.nan, dtype=np.float32)
    reward = np.full(total, np.nan, dtype=np.float32)
    for r in results:
        start = int(r['dataset_from_index'])
        n = len(r['frames']['progress'])
        progress[start:start + n] = r['frames']['progress']
        reward[start:start + n] = r['frames']['reward']
    if np.isnan(progress).any():
        raise ProcVlmError('not every frame of the dataset was labelled (use no --max-frames '
                           'and label every episode) before --write-dataset')
    # (1,), not [1]: LeRobot maps only the tuple to a scalar column (datasets.Value)
    info = {'dtype': 'float32', 'shape': (1,), 'names': None}
    add_features(dataset, {'progress': (progress.reshape(-1, 1), info),
                           'reward': (reward.reshape(-1, 1), info)},
                 output_dir=output_dir, repo_id=f'{root.name}_progress')
    return output_dir
