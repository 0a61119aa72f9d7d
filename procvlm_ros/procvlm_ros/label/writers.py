"""
Output formats besides the per-episode results: the LeRobot ``lerobot.frame_signals`` sidecar
and an MCAP of ``procvlm_msgs/Progress`` on ``/progress`` next to each bag.

The sidecar reproduces the layout LeRobot's reward scoring writes (parquet; reserved int64
columns ``index``, ``episode_index``, ``frame_index``; one column per signal; schema metadata
``lerobot.reward_scoring.{format,schema_version,provenance,descriptors,episode_indices}``;
per-episode parts in ``.<name>.parts/episode-NNNNNN.parquet`` with a manifest, then one file
with one row group per episode). No released ``lerobot`` has the reader yet, so this module
depends only on pyarrow.
"""

from __future__ import annotations

from collections.abc import Sequence
import inspect
import json
from pathlib import Path
import shutil
from typing import Any

import numpy as np

from procvlm_ros.label.store import atomic_path

SCORING_FORMAT = 'lerobot.frame_signals'
SCORING_SCHEMA_VERSION = 1
RESERVED_COLUMNS = ('index', 'episode_index', 'frame_index')
_PREFIX = 'lerobot.reward_scoring.'
PROGRESS_TOPIC = '/progress'
PROGRESS_MSGTYPE = 'procvlm_msgs/msg/Progress'


def _descriptor(description: str, direction: str, bounds: tuple[float, float] | None,
                scope: str = 'task') -> dict[str, Any]:
    return {'description': description, 'unit': None, 'direction': direction,
            'comparison_scope': scope, 'missing_values': 'forbidden',
            'bounds': None if bounds is None else list(bounds)}


DESCRIPTORS = {
    'progress': _descriptor('ProcVLM task progress in [0, 1]; scored frames, linear in between.',
                            'higher', (0.0, 1.0)),
    'reward': _descriptor('Dense reward: clipped progress delta plus terminal bonus.',
                          'higher', None),
    'advantage': _descriptor('Sum of rewards over the next horizon steps.', 'higher', None),
    'done': _descriptor('Task judged complete (supervisor replay, latched).', 'none', None,
                        'episode'),
    'scored': _descriptor('This frame was scored by the model (else interpolated).', 'none',
                          None, 'none'),
}


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(',', ':'), allow_nan=False).encode()


def _metadata(provenance: dict[str, Any], episode_indices: Sequence[int]) -> dict[bytes, bytes]:
    return {(_PREFIX + 'format').encode(): SCORING_FORMAT.encode(),
            (_PREFIX + 'schema_version').encode(): str(SCORING_SCHEMA_VERSION).encode(),
            (_PREFIX + 'provenance').encode(): _canonical(provenance),
            (_PREFIX + 'descriptors').encode(): _canonical(DESCRIPTORS),
            (_PREFIX + 'episode_indices').encode(): _canonical(sorted(episode_indices))}


def episode_table(result: dict[str, Any], episode_index: int, start: int) -> Any:
    import pyarrow as pa

    frames = result['frames']
    n = len(frames['progress'])
    frame_index = np.arange(n, dtype=np.int64)
    scored = np.zeros(n, dtype=bool)
    scored[np.asarray(result['sampled']['frame_index'], dtype=np.int64)] = True
    signals = {'advantage': np.asarray(frames['advantage'], dtype=np.float64),
               'done': np.asarray(frames['done'], dtype=bool),
               'progress': np.clip(np.asarray(frames['progress'], dtype=np.float64), 0, 1),
               'reward': np.asarray(frames['reward'], dtype=np.float64),
               'scored': scored}
    return pa.table({'index': start + frame_index,
                     'episode_index': np.full(n, episode_index, dtype=np.int64),
                     'frame_index': frame_index, **dict(sorted(signals.items()))})


def write_frame_signals(results: Sequence[dict[str, Any]], output: Path,
                        provenance: dict[str, Any]) -> Path:
    """
    Write per-episode parts, then publish them as one sidecar at ``output`` and drop the parts.

    ``results`` carry ``index`` (episode index) and, for LeRobot sources, ``dataset_from_index``
    in ``extra``; otherwise global indices follow the episodes in order.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(results, key=lambda r: r['index'])
    indices = [int(r['index']) for r in ordered]
    if len(set(indices)) != len(indices):
        raise ValueError(f'duplicate episode indices in {indices}')
    parts = output.with_name(f'.{output.name}.parts')
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    with atomic_path(parts / 'manifest.json') as tmp:
        tmp.write_text(json.dumps({'format': SCORING_FORMAT, 'schema_version':
                                   SCORING_SCHEMA_VERSION, 'score_name': output.stem,
                                   'provenance': provenance, 'episodes': indices}))
    meta = _metadata(provenance, indices)
    tables, start = [], 0
    for r in ordered:
        first = r.get('dataset_from_index')
        start = int(first) if first is not None else start
        table = episode_table(r, int(r['index']), start).replace_schema_metadata(meta)
        start += table.num_rows
        with atomic_path(parts / f"episode-{int(r['index']):06d}.parquet") as tmp:
            pq.write_table(table, tmp, compression='snappy')
        tables.append(table)
    combined = pa.concat_tables(tables).replace_schema_metadata(meta)
    with atomic_path(output) as tmp, pq.ParquetWriter(tmp, combined.schema,
                                                      compression='snappy') as writer:
        for table in tables:  # one row group per episode, as LeRobot publishes
            writer.write_table(table.replace_schema_metadata(meta))
    shutil.rmtree(parts, ignore_errors=True)
    return output


RABC_COLUMN = 'progress_dense'


def write_rabc_progress(sidecar: Path, output: Path) -> Path:
    """
    The sidecar's progress as the file LeRobot's RA-BC weighting reads.

    ``lerobot.utils.rabc.RABCWeights`` (reward-aligned behaviour cloning; lerobot 0.4.4) takes a
    parquet with ``index``, ``episode_index`` and ``progress_sparse``/``progress_dense`` per frame
    (its SARM tool's two heads). ProcVLM progress is dense per frame, so it is written as
    ``progress_dense``: train with ``head_mode='dense'``.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(sidecar, columns=['index', 'episode_index', 'frame_index', 'progress'])
    table = table.rename_columns(['index', 'episode_index', 'frame_index', RABC_COLUMN])
    with atomic_path(output) as tmp:
        pq.write_table(table.replace_schema_metadata(None), tmp, compression='snappy')
    return output


def read_frame_signals(path: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The table, its descriptors and provenance; raises ValueError on another format."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if meta.get((_PREFIX + 'format').encode()) != SCORING_FORMAT.encode():
        raise ValueError(f'{path} is not a {SCORING_FORMAT} file')
    return (table, json.loads(meta[(_PREFIX + 'descriptors').encode()]),
            json.loads(meta[(_PREFIX + 'provenance').encode()]))


def progress_typestore() -> Any:
    """The Kilted typestore plus procvlm_msgs/Progress from this repository's .msg file."""
    from rosbags.typesys import get_types_from_msg

    from procvlm_ros.media.rosbag import _typestore

    store = _typestore()
    if PROGRESS_MSGTYPE not in store.types:
        store.register(get_types_from_msg(_progress_msg_text(), PROGRESS_MSGTYPE))
    return store


def _progress_msg_text() -> str:
    here = Path(__file__).resolve()
    candidates = [here.parents[3] / 'procvlm_msgs' / 'msg' / 'Progress.msg']  # source tree
    try:  # an installed ROS workspace
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory('procvlm_msgs')) / 'msg' /
                          'Progress.msg')
    except Exception:  # no ament index / package not installed: only the source tree
        pass
    for msg in candidates:
        if msg.is_file():
            return msg.read_text(encoding='utf-8')
    raise FileNotFoundError(f'procvlm_msgs/msg/Progress.msg not found (looked in '
                            f'{[str(c) for c in candidates]})')


def mcap_path_for(bag_path: str | Path) -> Path:
    """``<bag>.progress.mcap`` beside the bag directory or file."""
    bag = Path(bag_path)
    return bag.with_name(f'{bag.stem if bag.is_file() else bag.name}.progress.mcap')


def write_progress_mcap(result: dict[str, Any], output: Path, backend: str = '') -> Path:
    """
    One ``procvlm_msgs/Progress`` per scored frame on ``/progress``, header (and log time) =
    that camera frame's stamp, so players line it up with the bag's image topic.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = progress_typestore()
    Progress = store.types[PROGRESS_MSGTYPE]
    Header = store.types['std_msgs/msg/Header']
    Time = store.types['builtin_interfaces/msg/Time']
    sampled = result['sampled']
    stamp_of = dict(zip(sampled['frame_index'], sampled['stamp_ns']))
    if any(s is None for s in stamp_of.values()):
        raise ValueError(f"{result['episode_id']}: frame stamps unknown; cannot write MCAP")
    done = result['frames']['done']
    stalls = result['summary']['stall_intervals']

    def stamp(ns: int) -> Any:
        return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))

    # Zero/empty for every field, so fields added to Progress.msg later stay valid.
    defaults = {name: _zero(p.annotation) for name, p in
                inspect.signature(Progress).parameters.items() if p.default is p.empty}
    tmp_dir = output.with_name(f'.{output.name}.tmpbag')
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        with Writer(tmp_dir, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
            conn = writer.add_connection(PROGRESS_TOPIC, PROGRESS_MSGTYPE, typestore=store)
            for record in result['records']:
                ns = int(stamp_of[record['frame_index']])
                t = float(record['timestamp_sec'])
                stalled = any(a <= t <= b for a, b in stalls)
                carried = record['progress_source'] != 'model'
                fields = dict(defaults,
                    header=Header(stamp=stamp(ns), frame_id=''), task=result['task'],
                    value=record['progress'] / 100.0, raw_value=record['progress'] / 100.0,
                    done=bool(done[record['frame_index']]), stalled=stalled,
                    episode_time_s=t, status=1 if carried else 0,
                    reasoning=record.get('reasoning') or '',
                    model_output=record.get('model_output') or '',
                    frame_stamps=[stamp(int(stamp_of[i]))
                                  for i in record['window_frame_indices']],
                    backend=backend)
                msg = Progress(**{k: v for k, v in fields.items() if k in defaults})
                writer.write(conn, ns, store.serialize_cdr(msg, PROGRESS_MSGTYPE))
        produced = next(tmp_dir.glob('*.mcap'))
        with atomic_path(output) as tmp:
            shutil.copyfile(produced, tmp)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return output


def _zero(annotation: Any) -> Any:
    text = str(annotation)
    if text.startswith('list') or 'ndarray' in text:
        return []
    return {'str': '', 'bool': False, 'int': 0, 'float': 0.0}.get(text)
