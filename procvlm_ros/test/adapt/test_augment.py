"""procvlm-adapt train augmentations: pixels and words change together."""

import random

import numpy as np
import pytest

from procvlm_ros.adapt.augment import (
    CHANNEL_ORDERS,
    hue_renaming,
    IDENTITY,
    parse_augments,
    permute_channels,
    random_channel_order,
    rename_hues,
    shift_image,
    SHIFTS,
    swap_sides,
)
from procvlm_ros.core.errors import ConfigError
from procvlm_ros.synth.scene import COLOURS
from procvlm_ros.testing.helpers import moving_frames

TASK = 'open the purple drawer and put the red ball in it'
ANSWER = ('The following actions are required: \n1. reach the purple drawer knob\n'
          '2. pick up the red ball\nTherefore, the estimated progress is '
          '<progress>12.00%</progress>.')


@pytest.mark.parametrize('order', CHANNEL_ORDERS)
def test_renamed_hue_is_the_colour_the_reordered_pixels_show(order):
    # For every synthetic colour, the word the renaming gives is the palette colour nearest
    # to the pixel after the channel reorder: the text stays true to the image.
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=float)
    renaming = hue_renaming(order)
    for name, rgb in COLOURS.items():
        shown = np.asarray(rgb, dtype=float)[list(order)]
        nearest = names[int(np.argmin(((palette - shown) ** 2).sum(axis=1)))]
        assert renaming[name] == nearest, (order, name)


def test_renaming_is_a_permutation_and_inverts():
    hues = ['red', 'green', 'blue', 'yellow', 'cyan', 'purple']
    for order in CHANNEL_ORDERS:
        renaming = hue_renaming(order)
        assert sorted(renaming[h] for h in hues) == sorted(hues)
        assert any(renaming[h] != h for h in hues)
        inverse = tuple(int(i) for i in np.argsort(order))
        text = ' '.join(hues)
        assert rename_hues(rename_hues(text, order), inverse) == text
    assert rename_hues(TASK, IDENTITY) == TASK


def test_rename_hues_touches_whole_hue_words_only_and_keeps_case():
    order = (1, 0, 2)  # red <-> green, purple <-> cyan
    assert rename_hues(TASK, order) == 'open the cyan drawer and put the green ball in it'
    assert rename_hues('Red, RED and red.', order) == 'Green, GREEN and green.'
    assert rename_hues('redo the reddish bluegreen (red)', order) == \
        'redo the reddish bluegreen (green)'
    assert rename_hues('the magenta cup', order) == 'the cyan cup'
    assert rename_hues(ANSWER, order) == ANSWER.replace('purple', 'cyan').replace(
        'red ball', 'green ball')  # 'required' keeps its letters


def test_swap_sides():
    assert swap_sides('push the left block to the right') == \
        'push the right block to the left'
    assert swap_sides('Left, RIGHT, leftover, brighten') == 'Right, LEFT, leftover, brighten'
    assert swap_sides(swap_sides(TASK + ' left')) == TASK + ' left'


def test_random_channel_order_keeps_half_and_draws_all_others():
    rng = random.Random(3)
    draws = [random_channel_order(rng) for _ in range(2000)]
    assert 0.45 < draws.count(IDENTITY) / len(draws) < 0.55
    assert set(draws) == {IDENTITY, *CHANNEL_ORDERS}


def test_shift_image_moves_the_scene_and_repeats_the_edge():
    from PIL import Image

    pixels = np.zeros((4, 16, 3), np.uint8)
    pixels[:, :, 0] = np.arange(16) * 10  # a ramp: every column its own value
    moved = np.asarray(shift_image(Image.fromarray(pixels), 0.125))  # 2 px right
    assert moved.shape == pixels.shape
    assert (moved[:, 2:] == pixels[:, :-2]).all() and (moved[:, :2] == pixels[:, :1]).all()
    back = np.asarray(shift_image(Image.fromarray(pixels), -0.125))
    assert (back[:, :-2] == pixels[:, 2:]).all() and (back[:, -2:] == pixels[:, -1:]).all()
    assert shift_image(Image.fromarray(pixels), 0.01) is not None  # under a pixel: unchanged
    assert (np.asarray(shift_image(Image.fromarray(pixels), 0.01)) == pixels).all()
    assert all(abs(f) * 160 >= 10 for f in SHIFTS)  # at least 10 px on a 160 px camera


def test_unknown_augment_is_refused():
    assert parse_augments(' mirror , colour,shift') == ['mirror', 'colour', 'shift']
    with pytest.raises(ConfigError, match='unknown augment'):
        parse_augments('mirror,blur')


@pytest.fixture(scope='module')
def processor():
    from procvlm_ros.core.backends.hf_processor import load_processor
    from procvlm_ros.demo_model import CHECKPOINT_DIR

    pytest.importorskip('transformers')
    return load_processor(CHECKPOINT_DIR, 0, 0)[0]


def test_colour_augmentation_equals_permuting_the_image(processor, tmp_path):
    # Patch rows are channel-major: reordering their channel blocks is reordering the image's.
    from PIL import Image

    from procvlm_ros.adapt.train import prepare_sample

    img = moving_frames(1, 120, 160, background=60, brighten=10, speed=4)[0]
    img[60:, :80] = (30, 200, 90)
    Image.fromarray(img).save(tmp_path / 'a.png')
    Image.fromarray(img[:, :, [2, 0, 1]].copy()).save(tmp_path / 'b.png')
    row = {'prompt': 'x', 'answer': '<progress>10%</progress>'}
    a = prepare_sample(processor, dict(row, images=[str(tmp_path / 'a.png')]))
    b = prepare_sample(processor, dict(row, images=[str(tmp_path / 'b.png')]))
    assert bool((permute_channels(a.pixel_values, (2, 0, 1)) == b.pixel_values).all())


def test_sample_store_renames_text_and_shares_pixels(processor, tmp_path):
    # A renamed variant has exactly the tokens of the renamed row prepared from scratch, and
    # the pixels of the sample it renames (collate reorders their channels).
    from PIL import Image

    from procvlm_ros.adapt.train import prepare_sample, SampleStore

    paths = []
    for k, img in enumerate(moving_frames(3, 120, 160, background=60, brighten=10, speed=4)):
        paths.append(str(tmp_path / f'{k}.png'))
        Image.fromarray(img).save(paths[-1])
    rows = [{'images': paths, 'prompt': f'task "{TASK}" on the left', 'answer': ANSWER},
            {'images': paths[:1], 'prompt': 'no hue here', 'answer': '<progress>5%</progress>'}]
    store = SampleStore(processor, rows, mirror=True, show_progress=False)
    order = (2, 1, 0)  # red <-> blue, purple stays
    renamed = store.variant(0, False, order)
    fresh = prepare_sample(processor, {**rows[0], 'prompt': rename_hues(rows[0]['prompt'], order),
                                       'answer': rename_hues(ANSWER, order)})
    assert renamed.prompt_ids == fresh.prompt_ids and renamed.answer_ids == fresh.answer_ids
    assert renamed.answer_ids != store.samples[0].answer_ids
    assert renamed.pixel_values is store.samples[0].pixel_values
    assert 'blue ball' in processor.tokenizer.decode(renamed.answer_ids)
    # Mirrored: flipped pixels, 'left' became 'right', and renaming keeps the flipped pixels.
    flipped = store.variant(0, True, IDENTITY)
    assert flipped is store.mirrored[0]
    assert 'right' in processor.tokenizer.decode(flipped.prompt_ids)
    assert not bool((flipped.pixel_values == store.samples[0].pixel_values).all())
    assert store.variant(0, True, order).pixel_values is flipped.pixel_values
    # Shifted: the images moved, the text kept; renaming keeps the moved pixels.
    moved = store.view(0, False, SHIFTS[-1])
    assert moved.prompt_ids == store.samples[0].prompt_ids
    assert not bool((moved.pixel_values == store.samples[0].pixel_values).all())
    assert store.variant(0, False, order, SHIFTS[-1]).pixel_values is moved.pixel_values
    assert store.view(0, False, SHIFTS[-1]) is moved
    # Nothing to rename: the sample itself, cached once.
    assert store.variant(1, False, order) is store.samples[1]
    assert store.variant(0, False, order) is renamed
