"""Demo-model training pieces: answers, tokenizer, windows identical to the backend's inputs."""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from procvlm_ros.core.backends.base import GenerationRequest  # noqa: E402
from procvlm_ros.core.backends.transformers_backend import TransformersBackend  # noqa: E402
from procvlm_ros.core.config import BackendConfig  # noqa: E402
from procvlm_ros.core.parsing import parse_answer  # noqa: E402
from procvlm_ros.demo_model import spec  # noqa: E402
from procvlm_ros.demo_model.answers import format_answer, target_percent  # noqa: E402
from procvlm_ros.demo_model.dataset import (  # noqa: E402
    build_episode,
    collate,
    patches_to_pixel_values,
    prepare_frame,
    tokenizer_corpus,
)
from procvlm_ros.demo_model.train import batch_plan, forward_shared, TrainConfig  # noqa: E402
from procvlm_ros.synth.episode import generate_episode  # noqa: E402


def test_answer_format_parses_back():
    actions = ['pick up the red block', 'place the red block on the blue block']
    text = format_answer(actions, 0.374)
    assert text == ('The following actions are required: \n1. pick up the red block\n'
                    '2. place the red block on the blue block\nTherefore, the estimated '
                    'progress is <progress>37.00%</progress>.')
    parsed = parse_answer(text)
    assert parsed.percent == 37.0 and parsed.remaining_actions == tuple(actions)
    done = parse_answer(format_answer([], 1.0))
    assert done.percent == 100.0 and done.remaining_actions == ()
    assert target_percent(0.996) == 99 and target_percent(1.0) == 100
    assert target_percent(0.004) == 0 and target_percent(0.125) == 13


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A seeded, untrained demo model with its own tokenizer, and three prepared episodes."""
    episodes = [generate_episode(5, i, kind) for i, kind in
                enumerate(['success', 'stall', 'regress'])]
    tokenizer = spec.train_tokenizer(tokenizer_corpus(episodes), vocab_size=512)
    model = spec.build_model(0, len(tokenizer)).eval()
    ckpt = spec.write_checkpoint(tmp_path_factory.mktemp('demo') / 'ckpt', model, tokenizer)
    backend = TransformersBackend(BackendConfig(model=str(ckpt), device='cpu', dtype='fp32',
                                                max_new_tokens=4))
    backend.load()
    data = [build_episode(backend.processor, ep, mp4=(i == 1)) for i, ep in enumerate(episodes)]
    yield episodes, tokenizer, backend, data
    backend.close()


def test_tokenizer_special_ids_and_round_trip(setup):
    episodes, tokenizer, _, _ = setup
    assert [tokenizer.convert_tokens_to_ids(t) for t in spec.SPECIAL_TOKENS] == list(range(7))
    text = format_answer(episodes[0].remaining_actions(3), float(episodes[0].progress[3]))
    ids = tokenizer(text, add_special_tokens=False)['input_ids']
    assert tokenizer.decode(ids) == text
    for n in (0, 7, 42, 99, 100):  # each percentage is one token
        assert len(tokenizer(str(n), add_special_tokens=False)['input_ids']) == 1


def test_windows_equal_backend_inputs(setup):
    episodes, _, backend, data = setup
    ep, prepared = episodes[0], data[0]
    index = 10
    images = [prepare_frame(ep.frame(p)) for p in prepared.window(index)]
    inputs = backend.prepare_inputs(GenerationRequest(images=images, task=ep.task.sentence))
    assert inputs['input_ids'][0].tolist() == prepared.prompt_ids
    stored = np.concatenate([patches_to_pixel_values(prepared.patches[p])
                             for p in prepared.window(index)])
    assert torch.equal(inputs['pixel_values'], torch.from_numpy(stored))
    mm = (torch.tensor(prepared.prompt_ids) == spec.IMAGE_ID).long()
    assert torch.equal(inputs['mm_token_type_ids'][0], mm)
    # Windows are the official causal windows, padded with the first frame.
    assert prepared.window(0) == [0] * 8
    assert prepared.window(10) == list(range(3, 11))


def test_answer_ids_mark_the_progress_number(setup):
    _, tokenizer, _, data = setup
    for prepared in data:
        for i in range(0, prepared.num_frames, 5):
            ids, pos = prepared.answer_ids[i], prepared.number_pos[i]
            assert ids[-1] == spec.IM_END_ID
            percent = target_percent(float(prepared.progress[i]))
            assert tokenizer.decode([ids[pos]]) == str(percent)


def test_shared_forward_equals_model_forward(setup):
    _, _, backend, data = setup
    model = backend.model
    items = [(data[0], 3), (data[1], 12), (data[0], 4), (data[2], 0)]
    batch = collate(items, image_id=spec.IMAGE_ID)
    assert batch.pixel_values.shape[0] < 4 * 8 * 80, 'frames shared between windows run once'
    with torch.no_grad():
        shared = forward_shared(model, batch)
        for row, (prepared, index) in enumerate(items):
            ids = torch.tensor([prepared.prompt_ids + prepared.answer_ids[index]])
            pv = torch.from_numpy(np.concatenate([patches_to_pixel_values(prepared.patches[p])
                                                  for p in prepared.window(index)]))
            reference = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                              mm_token_type_ids=(ids == spec.IMAGE_ID).long(), pixel_values=pv,
                              image_grid_thw=torch.tensor([prepared.grid] * 8)).logits
            assert torch.allclose(shared[row, :ids.shape[1]], reference[0], atol=1e-4)


def test_batch_plan_covers_every_window_once(setup):
    _, _, _, data = setup
    cfg = TrainConfig(out='', batch_episodes=2, run_length=5)
    plan = batch_plan(data, cfg, np.random.default_rng(0))
    seen = [item for batch in plan for item in batch]
    assert len(seen) == len(set(seen))
    total = sum(d.num_frames for d in data)
    assert len(seen) >= total - 2 * 5 * 2, 'at most the last incomplete batch is dropped'
    for batch in plan:  # each run is consecutive windows of one episode
        assert len({e for e, _ in batch}) <= 2


@pytest.mark.slow
def test_training_is_reproducible_with_a_seed(tmp_path):
    """The whole recipe (data, mp4 round trip, tokenizer, init, batches, optimiser) on a short
    run: the same seed writes byte-identical weights, another seed does not."""
    from procvlm_ros.demo_model.train import train

    def weights(name, seed):
        cfg = TrainConfig(out=str(tmp_path / name), seed=seed, episodes=8, steps=4, warmup=2,
                          val_every=0, val_windows=0, text_batch=8, mp4_fraction=0.5)
        summary = train(cfg)
        assert summary['history'][-1]['step'] == 3
        return (tmp_path / name / 'model.safetensors').read_bytes()

    first, again, other = weights('a', 0), weights('b', 0), weights('c', 1)
    assert first == again
    assert first != other


def test_command_line_covers_every_training_option():
    from procvlm_ros.demo_model.train import build_parser

    parser = build_parser()
    assert TrainConfig(**vars(parser.parse_args(['--out', 'x']))) == TrainConfig(out='x')
    args = parser.parse_args(['--out', 'x', '--steps', '3', '--mp4-fraction', '0.25'])
    assert args.steps == 3 and args.mp4_fraction == 0.25
    with pytest.raises(SystemExit):
        parser.parse_args(['--out', 'x', '--steps', '1.5'])  # integer options stay integers
