"""
``procvlm-label select``: rank labelled episodes, mark the top k % by advantage, drop failed or
stalled trajectories, and plot the reward distributions with a few example curves.

Per-frame positives (advantage-conditioned training) use one threshold over all kept frames:
the ``ceil(k * n)`` largest advantages; they are written as ``[start, end)`` frame runs.
Episodes are ranked by mean advantage; the top k % of kept episodes get ``top: true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from procvlm_ros.label import rewards as rw


def runs(mask: np.ndarray) -> list[list[int]]:
    """``[start, end)`` runs of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2])]


def select(results: list[dict[str, Any]], *, top_percent: float = 30.0, horizon: int = 50,
           keep_failed: bool = False, keep_stalled: bool = False,
           min_final_progress: float = 0.0) -> dict[str, Any]:
    """The selection document (see the module docstring)."""
    if not 0.0 <= top_percent <= 100.0:
        raise ValueError(f'top percent must be in [0, 100], got {top_percent}')
    rows, kept = [], []
    for r in results:
        s = r['summary']
        adv = rw.advantages(r['frames']['reward'], horizon)
        reason = None
        if not keep_failed and not s['done']:
            reason = 'not done'
        elif not keep_stalled and s['stalled']:
            reason = 'stalled'
        elif s['final_progress'] < min_final_progress:
            reason = f"final progress {s['final_progress']:.2f} < {min_final_progress}"
        row = {'episode_id': r['episode_id'], 'index': r['index'], 'path': r['path'],
               'task': r['task'], 'mean_advantage': float(adv.mean()),
               'final_progress': s['final_progress'], 'done': s['done'],
               'stalled': s['stalled'], 'kept': reason is None, 'excluded_because': reason,
               'top': False, 'rank': None, 'positive_frames': []}
        rows.append(row)
        if reason is None:
            kept.append((row, adv))
    fraction = top_percent / 100.0
    order = sorted(kept, key=lambda item: (-item[0]['mean_advantage'], item[0]['index']))
    top = rw.top_fraction_mask([row['mean_advantage'] for row, _ in order], fraction)
    for rank, ((row, _), is_top) in enumerate(zip(order, top), start=1):
        row['rank'], row['top'] = rank, bool(is_top)
    if kept:
        all_adv = np.concatenate([adv for _, adv in kept])
        positive = rw.top_fraction_mask(all_adv, fraction)
        offset = 0
        for row, adv in kept:
            row['positive_frames'] = runs(positive[offset:offset + adv.size])
            offset += adv.size
    return {'top_percent': top_percent, 'horizon': horizon, 'episodes': len(rows),
            'kept': len(kept), 'rows': sorted(rows, key=lambda x: (x['rank'] is None,
                                                                  x['rank'] or 0, x['index']))}


def plot(results: list[dict[str, Any]], selection: dict[str, Any], path: Path,
         examples: int = 4) -> Path:
    """Reward and advantage histograms, and progress/reward curves of a few episodes."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    by_id = {r['episode_id']: r for r in results}
    rewards = np.concatenate([r['frames']['reward'] for r in results]) if results else []
    advs = [rw.advantages(r['frames']['reward'], selection['horizon']) for r in results]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    axes[0, 0].hist(rewards, bins=50)
    axes[0, 0].set_title('dense reward per frame')
    axes[0, 1].hist(np.concatenate(advs) if advs else [], bins=50)
    axes[0, 1].set_title(f"advantage (horizon {selection['horizon']})")
    ranked = [row for row in selection['rows'] if row['rank'] is not None]
    picks = ranked[:examples // 2] + ranked[len(ranked) // 2:][-(examples - examples // 2):]
    for row in {row['episode_id']: row for row in picks}.values():
        r = by_id[row['episode_id']]
        t = r['frames']['time_s']
        axes[1, 0].plot(t, r['frames']['progress'], label=f"#{row['rank']} {r['episode_id']}")
        axes[1, 1].plot(t, np.cumsum(r['frames']['reward']), label=r['episode_id'])
    axes[1, 0].set_title('progress (best and worst ranked)')
    axes[1, 1].set_title('cumulative reward')
    for ax in axes[1]:
        ax.set_xlabel('time [s]')
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
