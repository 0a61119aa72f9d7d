import math

import numpy as np
import pytest

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendUnavailableError, ConfigError
from procvlm_ros.core.estimator import ProgressEstimator
from procvlm_ros.core.types import Frame, Status


def frames(n=3, h=48, w=64):
    rng = np.random.default_rng(0)
    return [Frame(rng.integers(0, 255, (h, w, 3), np.uint8), stamp_ns=i * 10**9, index=i)
            for i in range(n)]


def scripted(*outputs):
    backend = create_backend(BackendConfig(backend='scripted', scripted_outputs=outputs))
    backend.load()
    return backend


def test_carry_forward_starts_from_none_live_and_zero_offline():
    live = ProgressEstimator(scripted('no tag', '<progress>30%</progress>', 'junk'), 'stack')
    e = live.estimate(frames())
    assert e.status is Status.CARRIED_FORWARD and e.percent is None and math.isnan(e.value)
    e = live.estimate(frames())
    assert e.status is Status.OK and e.value == pytest.approx(0.3)
    e = live.estimate(frames())
    assert e.status is Status.CARRIED_FORWARD and e.percent == 30.0
    assert math.isnan(e.raw_value) and 'no <progress>' in e.status_message

    offline = ProgressEstimator(scripted('no tag'), 'stack', initial_percent=0.0)
    assert offline.estimate(frames()).percent == 0.0


def test_backend_error_becomes_status_and_keeps_state():
    est = ProgressEstimator(scripted('<progress>50%</progress>', '!raise GPU fell off'), 'x')
    est.estimate(frames())
    e = est.estimate(frames())
    assert e.status is Status.ERROR and 'GPU fell off' in e.status_message
    assert e.percent == 50.0  # state kept
    assert est.estimate(frames()).status is Status.OK


def test_new_episode_resets_history_and_validates_task():
    est = ProgressEstimator(scripted('<progress>80%</progress>', 'none'), 'x')
    est.estimate(frames())
    est.new_episode('fold')
    assert est.task == 'fold' and est.estimate(frames()).percent is None
    with pytest.raises(ConfigError):
        est.new_episode('   ')
    assert est.task == 'fold'


def test_images_are_jpeg_roundtripped_and_preresized():
    backend = scripted('<progress>1%</progress>')
    est = ProgressEstimator(backend, 'x', jpeg_roundtrip=True, pre_resize_patch_size=14)
    f = frames(1, 120, 160)
    est.estimate(f)
    img = backend.requests[-1].images[0]
    assert img.size == (168, 112)  # qwen-vl-utils factor-28 table: 160x120 -> 168x112
    est_raw = ProgressEstimator(backend, 'x', jpeg_roundtrip=False, pre_resize_patch_size=0)
    est_raw.estimate(f)
    assert np.array_equal(np.asarray(backend.requests[-1].images[0]), f[0].image)


def test_prepared_frames_cached_by_key_and_bounded():
    backend = scripted('<progress>1%</progress>')
    est = ProgressEstimator(backend, 'x', cache_size=4)
    fs = frames(8)
    for i in range(8):
        est.estimate(fs[:i + 1], keys=[(0, k) for k in range(i + 1)])
    assert len(est._cache) == 4
    a = est.prepare(fs[7], (0, 7))
    assert est.prepare(fs[7], (0, 7)) is a


def test_unknown_backend_is_a_clear_error():
    config = BackendConfig(backend='scripted', scripted_outputs=('x',))
    object.__setattr__(config, 'backend', 'warp_drive')  # past validation, as a plugin might
    with pytest.raises(BackendUnavailableError, match="'warp_drive'.*available"):
        create_backend(config)


@pytest.mark.parametrize('kwargs', [
    {'backend': 'nope'}, {'dtype': 'int3'}, {'max_new_tokens': 0}, {'temperature': -1.0},
    {'backend': 'transformers', 'model': ''}, {'device': 'gpu'},
    {'min_pixels': 10, 'max_pixels': 5}, {'temperature': float('nan')}])
def test_invalid_backend_config_rejected(kwargs):
    kwargs.setdefault('model', 'm')
    with pytest.raises(ConfigError):
        BackendConfig(**kwargs)
