"""Plots of an evaluation: predicted vs ground-truth progress per episode, and a summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from procvlm_ros.evaluation.report import EpisodeResult

_PRED, _GT = '#2e7d32', '#424242'
_KIND_COLOURS = {'success': '#2e7d32', 'fail': '#c62828', 'stall': '#ef6c00',
                 'regress': '#6a1b9a'}


def _figure(width_px: int, height_px: int, dpi: int = 100) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def plot_episode(result: EpisodeResult, path: str | Path, *,
                 done_threshold: float = 95.0) -> Path:
    """Predicted and true progress over time; stall (orange) and undo (purple) spans shaded."""
    from matplotlib.ticker import PercentFormatter

    fig = _figure(900, 420)
    ax = fig.add_subplot()
    t = result.times
    for iv in result.stall_intervals:
        ax.axvspan(iv['start_s'], iv['end_s'], color='#ffcc80', alpha=0.5, lw=0,
                   label=f'stall ({iv["cause"]})')
    for iv in result.regress_intervals:
        ax.axvspan(iv['start_s'], iv['end_s'], color='#e1bee7', alpha=0.6, lw=0, label='undo')
    ax.plot(t, result.gt * 100, color=_GT, lw=2.0, ls='--', label='ground truth')
    ax.plot(t, result.pred * 100, color=_PRED, lw=1.6, marker='o', ms=3, label='predicted')
    missed = ~result.parsed
    if missed.any():
        ax.scatter(t[missed], result.pred[missed] * 100, marker='s', facecolors='white',
                   edgecolors='#ef6c00', zorder=4, label='carried forward')
    ax.axhline(done_threshold, color='#9e9e9e', lw=0.8, ls=':')
    ax.set_ylim(-2, 102)
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.set_xlabel('time [s]')
    ax.set_ylabel('progress')
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc='upper left', fontsize=8)
    from procvlm_ros.core import metrics
    ax.set_title(f'{result.episode_id} [{result.kind}] {result.task}\n'
                 f'VOC {metrics.voc(result.pred, result.gt):.3f}   '
                 f'MAE {metrics.mae(result.pred, result.gt):.3f}', fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format='png')
    return out


def plot_summary(results: Sequence[EpisodeResult], report: dict[str, Any],
                 path: str | Path) -> Path:
    """Left: predicted vs true progress of every frame; right: per-episode VOC and MAE."""
    fig = _figure(1200, 480)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={'width_ratios': [1, 1.6]})
    for kind, colour in _KIND_COLOURS.items():
        group = [r for r in results if r.kind == kind]
        if group:
            ax1.scatter(np.concatenate([r.gt for r in group]) * 100,
                        np.concatenate([r.pred for r in group]) * 100, s=6, alpha=0.5,
                        color=colour, label=kind)
    ax1.plot([0, 100], [0, 100], color='#9e9e9e', lw=0.8)
    ax1.set_xlabel('ground-truth progress [%]')
    ax1.set_ylabel('predicted progress [%]')
    ax1.set_xlim(-2, 102)
    ax1.set_ylim(-2, 102)
    ax1.legend(loc='upper left', fontsize=8)
    ax1.set_title(f'MAE {report["mae_mean"]:.3f}   done F1 {report["done_f1"]:.3f}', fontsize=10)
    rows = report['rows']
    x = np.arange(len(rows))
    ax2.bar(x - 0.2, [r['voc'] for r in rows], width=0.4, label='VOC',
            color=[_KIND_COLOURS.get(r['kind'], '#757575') for r in rows])
    ax2.bar(x + 0.2, [r['mae'] for r in rows], width=0.4, label='MAE', color='#90a4ae')
    ax2.set_xticks(x, [r['episode_id'].replace('episode_', '') for r in rows], rotation=90,
                   fontsize=7)
    ax2.axhline(0.9, color='#9e9e9e', lw=0.8, ls=':')
    ax2.set_ylim(min(0.0, min((r['voc'] for r in rows), default=0.0)) - 0.05, 1.05)
    ax2.set_title(f'per episode (VOC coloured by kind, MAE grey); '
                  f'VOC mean on success episodes {report["voc_mean"]:.3f}', fontsize=10)
    ax2.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format='png')
    return out
