"""Host-side pieces of the exported backends: geometry (Qwen3-VL, Qwen2.5-VL), M-RoPE, greedy
rules, vision cache."""

import functools
from types import SimpleNamespace

import numpy as np
import pytest

from procvlm_ros.core.backends import qwen3vl_inputs as qin
from procvlm_ros.core.backends import qwen25vl_inputs as q25
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


@pytest.mark.parametrize(('grid_h', 'grid_w', 'window'), [
    (4, 6, 56), (8, 8, 56), (10, 30, 56), (16, 10, 112), (22, 14, 112), (34, 46, 112),
    (2, 2, 112)])
def test_qwen25_window_layout_is_transformers_window_index(grid_h, grid_w, window):
    torch = pytest.importorskip('torch')
    from transformers import vision_utils as vu

    grid = torch.tensor([[1, grid_h, grid_w]])
    ref_index, ref_cu = vu.get_vision_window_index(grid, 2, window, 14)
    rope, index, reverse, ids = q25.vision_geometry(grid_h, grid_w, 2, window, 14)
    assert np.array_equal(index, ref_index.numpy())
    assert np.array_equal(reverse, torch.argsort(ref_index).numpy())
    # Window ids change exactly at HF's cumulative window boundaries.
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(ids)) + 1, [ids.size]])
    assert np.array_equal(bounds, ref_cu.numpy())
    # Rotary positions: HF's per-patch positions, permuted like the hidden states.
    pos = vu.get_vision_position_ids(grid, 2).reshape(-1, 4, 2)[ref_index].reshape(-1, 2)
    assert np.array_equal(rope, pos.numpy())
    assert {a.dtype for a in (rope, index, reverse, ids)} == {np.dtype(np.int64)}


@pytest.mark.parametrize('grids', [[(1, 4, 6)], [(1, 6, 8)] * 3, [(1, 4, 8), (1, 8, 4)],
                                   [(1, 8, 10)] * 8])
def test_qwen25_rope_index_is_the_qwen3_one_for_images(grids):
    """Qwen2.5-VL's get_rope_index on an images-only prompt == qwen3vl_inputs.rope_index."""
    torch = pytest.importorskip('torch')
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    ids = _layout(grids)
    fake = SimpleNamespace(config=SimpleNamespace(
        vision_config=SimpleNamespace(spatial_merge_size=2, tokens_per_second=2)))
    fake.get_vision_position_ids = functools.partial(Qwen2_5_VLModel.get_vision_position_ids,
                                                     fake)
    ref_pos, ref_delta = Qwen2_5_VLModel.get_rope_index(
        fake, torch.from_numpy(ids)[None], torch.from_numpy((ids == IMG).astype(np.int64))[None],
        image_grid_thw=torch.tensor(grids))
    pos, delta = qin.rope_index(ids, IMG, grids, 2)
    assert np.array_equal(pos, ref_pos[:, 0].numpy())
    assert delta == int(ref_delta)


def test_family_inputs_name_every_vision_input_and_refuse_other_families():
    from procvlm_ros.core.backends.family_inputs import family_inputs

    q3 = family_inputs('qwen3_vl', {'spatial_merge_size': 2, 'num_grid_per_side': 48})
    assert [v.name for v in q3.vision_inputs] == ['interp_indices', 'interp_weights', 'rope_pos']
    arrays = q3.vision_arrays(4, 6)
    want = qin.vision_geometry(4, 6, 48, 2)
    assert all(np.array_equal(a, b) for a, b in zip(arrays.values(), want))
    q25_inputs = family_inputs('qwen2_5_vl', {'spatial_merge_size': 2, 'window_size': 56,
                                              'patch_size': 14})
    arrays = q25_inputs.vision_arrays(4, 6)
    assert {k: v.shape for k, v in arrays.items()} == {
        'rope_pos': (24, 2), 'window_index': (6,), 'reverse_index': (6,), 'window_ids': (24,)}
    assert [v.shape(24, 2) for v in q25_inputs.vision_inputs] == [(24, 2), (6,), (6,), (24,)]
    with pytest.raises(BackendUnavailableError, match="not 'internvl'"):
        family_inputs('internvl', {'spatial_merge_size': 2})


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
