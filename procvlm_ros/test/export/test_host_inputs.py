"""Host-side pieces of the exported backends: geometry, M-RoPE, greedy rules, vision cache."""

import functools
from types import SimpleNamespace

import numpy as np
import pytest

from procvlm_ros.core.backends import qwen3vl_inputs as qin
from procvlm_ros.core.backends.device_arrays import HostArrays
from procvlm_ros.core.backends.greedy import GreedySettings, penalised_argmax
from procvlm_ros.core.backends.vision_cache import VisionCache
from procvlm_ros.core.errors import BackendError, BackendUnavailableError

IMG = 151655


@pytest.mark.parametrize(('grid_h', 'grid_w'), [(4, 4), (6, 8), (30, 40), (8, 4), (44, 80)])
def test_vision_geometry_is_bit_identical_to_transformers(grid_h, grid_w):
    torch = pytest.importorskip('torch')
    from transformers import vision_utils as vu

    grid = torch.tensor([[1, grid_h, grid_w]])
    idx, weights = vu.get_vision_interpolation_indices_and_weights(
        grid, num_grid_per_side=48, mode='bilinear', align_corners=True, spatial_merge_size=2)
    pos = vu.get_vision_position_ids(grid, 2)
    got_idx, got_w, got_pos = qin.vision_geometry(grid_h, grid_w, 48, 2)
    assert np.array_equal(got_idx, idx.numpy())
    assert np.array_equal(got_w, weights.numpy()) and got_w.dtype == np.float32
    assert np.array_equal(got_pos, pos.numpy())


def _layout(grids, text=(3, 5, 2)):
    """input_ids like the processor's: text runs around each image's token run."""
    ids = [7] * text[0]
    for t, h, w in grids:
        ids += [151652] + [IMG] * (t * h * w // 4) + [151653] + [9] * text[1]
    return np.array(ids + [11] * text[2], np.int64)


@pytest.mark.parametrize('grids', [[(1, 4, 4)], [(1, 6, 8)] * 3, [(1, 4, 8), (1, 8, 4)]])
def test_rope_index_matches_transformers_get_rope_index(grids):
    torch = pytest.importorskip('torch')
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    ids = _layout(grids)
    fake = SimpleNamespace(config=SimpleNamespace(
        vision_config=SimpleNamespace(spatial_merge_size=2)))
    fake.get_vision_position_ids = functools.partial(Qwen3VLModel.get_vision_position_ids, fake)
    ref_pos, ref_delta = Qwen3VLModel.get_rope_index(
        fake, torch.from_numpy(ids)[None], torch.from_numpy((ids == IMG).astype(np.int64))[None],
        image_grid_thw=torch.tensor(grids))
    pos, delta = qin.rope_index(ids, IMG, grids, 2)
    assert np.array_equal(pos, ref_pos[:, 0].numpy())
    assert delta == int(ref_delta)


def test_rope_index_rejects_grids_that_do_not_fit_the_prompt():
    ids = _layout([(1, 4, 4)])
    with pytest.raises(BackendError, match='does not match grid'):
        qin.rope_index(ids, IMG, [(1, 8, 8)], 2)
    with pytest.raises(BackendError, match='more image grids'):
        qin.rope_index(ids, IMG, [(1, 4, 4), (1, 4, 4)], 2)


def test_placeholders_expand_in_order_and_mismatch_is_an_error():
    text = 'a<|image_pad|>b<|image_pad|>c'
    assert qin.expand_image_placeholders(text, '<|image_pad|>', [2, 1]) == (
        'a<|image_pad|><|image_pad|>b<|image_pad|>c')
    with pytest.raises(BackendError, match='2 image placeholders for 3 images'):
        qin.expand_image_placeholders(text, '<|image_pad|>', [1, 1, 1])


def test_visual_index_points_each_image_token_at_its_bank_rows():
    ids = _layout([(1, 4, 4), (1, 4, 4)])
    index = qin.visual_index(ids, IMG, [9, 1], [4, 4])
    assert index[ids != IMG].tolist() == [0] * int((ids != IMG).sum())
    assert index[ids == IMG].tolist() == [9, 10, 11, 12, 1, 2, 3, 4]
    with pytest.raises(BackendError, match='8 image tokens in the prompt but 4'):
        qin.visual_index(ids, IMG, [1], [4])


def test_repetition_penalty_matches_transformers():
    torch = pytest.importorskip('torch')
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, 50).astype(np.float32)
    seen = [3, 3, 7, 10, int(np.argmax(logits))]
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([seen]),
                                                torch.from_numpy(logits.copy())[None])
    got = logits.copy()
    assert penalised_argmax(got, seen, 1.3) == int(ref.argmax())
    assert np.allclose(got, ref[0].numpy())


def test_greedy_settings_refuse_sampling_and_unsupported_processors():
    g = GreedySettings.from_manifest({'repetition_penalty': 1.0}, [151645, 151643], 12, 0.0)
    assert g.is_stop(151643) and not g.is_stop(5) and not g.needs_logits
    assert GreedySettings.from_manifest({'repetition_penalty': 1.05}, [1], 3, 0).needs_logits
    with pytest.raises(BackendUnavailableError, match='greedily only'):
        GreedySettings.from_manifest({}, [1], 12, 0.7)
    with pytest.raises(BackendUnavailableError, match='no_repeat_ngram_size=3.*min_new_tokens'):
        GreedySettings.from_manifest({'no_repeat_ngram_size': 3, 'min_new_tokens': 2}, [1], 5, 0)
    with pytest.raises(BackendUnavailableError, match='no eos'):
        GreedySettings.from_manifest({}, [], 5, 0)


def test_vision_cache_lru_eviction_spares_the_current_window():
    cache = VisionCache(slots=3, rows_per_slot=4)
    assert cache.bank_rows == 13 and cache.first_row(2) == 9
    a = cache.put('a', (1, 4, 4), 4, pinned=set())
    b = cache.put('b', (1, 4, 4), 4, pinned=set())
    c = cache.put('c', (1, 4, 4), 4, pinned=set())
    assert cache.get('a') is a  # touch: 'b' is now least recently used
    d = cache.put('d', (1, 4, 4), 4, pinned={a.slot, c.slot})
    assert d.slot == b.slot and cache.get('b') is None and cache.evictions == 1
    with pytest.raises(ValueError, match='all 3 cache slots'):
        cache.put('e', (1, 4, 4), 4, pinned={a.slot, c.slot, d.slot})
    with pytest.raises(ValueError, match='5 visual tokens > 4'):
        cache.put('f', (1, 4, 5), 5, pinned=set())
    cache.discard('a')
    assert cache.put('g', (1, 4, 4), 4, pinned=set()).slot == a.slot
    cache.count(7, 1)
    assert cache.stats()['hit_rate'] == pytest.approx(7 / 8)


def test_host_arrays_views_share_memory_with_the_flat_buffer():
    a = HostArrays()
    flat = a.zeros(2 * 3 * 5, 'float32')
    view = a.view(flat, (2, 3, 4))
    view[1, 2, 3] = 5.0
    assert flat[1 * 12 + 2 * 4 + 3] == 5.0 and a.ptr(view) == a.ptr(flat)
    staged = a.staged(4, 'int64')
    staged.host[0] = 9
    a.push(staged, 1)
    assert a.item(staged.dev) == 9 and a.element_type(view) is np.float32
