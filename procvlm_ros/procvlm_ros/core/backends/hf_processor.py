"""
The checkpoint's processor for each model family: ``AutoProcessor`` first, else one built from
the checkpoint's files with the PIL image processors where torchvision is absent (images only
are ever sent, so the video processor is a placeholder), plus the pixel-limit overrides.

transformers is imported inside functions only.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from procvlm_ros.core.backends import families
from procvlm_ros.core.backends.families import ModelFamily, require_trusted
from procvlm_ros.core.backends.json_files import read_json_object
from procvlm_ros.core.errors import BackendUnavailableError

_LOG = logging.getLogger(__name__)

_IMAGE_PROCESSOR_KEYS = ('do_resize', 'do_rescale', 'rescale_factor', 'do_normalize',
                         'do_convert_rgb', 'image_mean', 'image_std', 'patch_size',
                         'temporal_patch_size', 'merge_size', 'resample')
_TILE_PROCESSOR_KEYS = ('do_resize', 'do_rescale', 'rescale_factor', 'do_normalize',
                        'do_convert_rgb', 'image_mean', 'image_std', 'resample', 'size',
                        'crop_to_patches', 'min_patches', 'max_patches')
_PIXEL_LIMIT_FAMILIES = ('qwen3_vl', 'qwen2_5_vl')  # processors with min/max pixel limits


def read_chat_template(path: Path) -> str | None:
    """Return the checkpoint's processor chat template (``.jinja`` or ``.json``), if any."""
    if (path / 'chat_template.jinja').is_file():
        return (path / 'chat_template.jinja').read_text(encoding='utf-8')
    if (path / 'chat_template.json').is_file():
        template = read_json_object(path / 'chat_template.json').get('chat_template')
        return template if isinstance(template, str) else None
    return None


def image_processor_kwargs(pre: dict[str, Any]) -> dict[str, Any]:
    """Map ``preprocessor_config.json`` to image-processor kwargs, ``size`` always explicit."""
    kwargs = {k: pre[k] for k in _IMAGE_PROCESSOR_KEYS if k in pre}
    size = dict(pre.get('size') or {})
    if pre.get('min_pixels') is not None:
        size['shortest_edge'] = pre['min_pixels']
    if pre.get('max_pixels') is not None:
        size['longest_edge'] = pre['max_pixels']
    if not {'shortest_edge', 'longest_edge'} <= set(size):
        raise BackendUnavailableError(
            f'preprocessor_config.json needs size.shortest_edge/longest_edge, got {size}')
    kwargs['size'] = {'shortest_edge': size['shortest_edge'], 'longest_edge': size['longest_edge']}
    return kwargs


@functools.cache
def _fallback_classes(processor_class: str = 'Qwen3VLProcessor',
                      patch_size: int = 16) -> tuple[type, type]:
    """Images-only video processor and a ``processor_class`` that accepts it (no torchvision)."""
    import transformers
    import transformers.video_processing_utils as vpu

    base: Any = getattr(transformers, processor_class)

    class ImagesOnlyVideoProcessor(vpu.BaseVideoProcessor):
        """Placeholder: the families' video processors need torchvision; videos are never sent."""

    ImagesOnlyVideoProcessor.patch_size = patch_size
    ImagesOnlyVideoProcessor.temporal_patch_size = 2
    ImagesOnlyVideoProcessor.merge_size = 2

    class ImagesOnlyProcessor(base):  # type: ignore[misc]
        """The family's processor whose video slot accepts the placeholder above."""

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == 'video_processor':
                return type(argument)
            parent: Any = super()
            return parent.check_argument_for_proper_class(argument_name, argument)

    ImagesOnlyProcessor.__name__ = f'ImagesOnly{processor_class}'
    return ImagesOnlyVideoProcessor, ImagesOnlyProcessor


def _qwen_image_processor(path: Path, pre: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Qwen2-VL PIL/numpy image processor from ``preprocessor_config.json`` (Qwen families)."""
    import transformers
    image_cls = (getattr(transformers, 'Qwen2VLImageProcessorPil', None)
                 or transformers.Qwen2VLImageProcessor)
    return image_cls(**image_processor_kwargs(pre)), {}


def _internvl_image_processor(path: Path, pre: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """GotOcr2 PIL/numpy tiling image processor and ``image_seq_length`` (InternVL)."""
    import transformers
    tf: Any = transformers
    image_cls = getattr(tf, 'GotOcr2ImageProcessorPil', None) or tf.GotOcr2ImageProcessor
    kwargs = {k: pre[k] for k in _TILE_PROCESSOR_KEYS if k in pre}
    seq = None
    if (path / 'processor_config.json').is_file():
        seq = read_json_object(path / 'processor_config.json').get('image_seq_length')
    if seq is None and (path / 'config.json').is_file():
        seq = read_json_object(path / 'config.json').get('image_seq_length')
    if seq is None:
        raise BackendUnavailableError(
            f'{path} gives no image_seq_length (processor_config.json or config.json); the '
            'InternVL processor needs it to expand image tokens')
    return image_cls(**kwargs), {'image_seq_length': int(seq)}


# family -> (processor class, image processor builder, video placeholder patch size)
_PIL_PROCESSORS: dict[str, tuple[str, Any, int]] = {
    'qwen3_vl': ('Qwen3VLProcessor', _qwen_image_processor, 16),
    'qwen2_5_vl': ('Qwen2_5_VLProcessor', _qwen_image_processor, 14),
    'internvl': ('InternVLProcessor', _internvl_image_processor, 14),
}


def build_processor_without_torchvision(path: Path, family: str = families.DEFAULT_FAMILY
                                        ) -> Any:
    """
    Build the family's processor from the checkpoint's files with a PIL/numpy image processor.

    Uses the checkpoint's tokenizer, its ``preprocessor_config.json`` values and its chat
    template (``qwen3vl-export.md`` section 1.3), with an images-only video processor:
    ``Qwen3VLProcessor`` and ``Qwen2_5_VLProcessor`` with the Qwen2-VL image processor,
    ``InternVLProcessor`` with the GotOcr2 tiling image processor.

    :param family: Family name (``qwen3_vl``, ``qwen2_5_vl`` or ``internvl``).
    """
    from transformers import AutoTokenizer
    if family not in _PIL_PROCESSORS:
        raise BackendUnavailableError(
            f'no torchvision-free processor for family {family!r} '
            f'(available for {", ".join(_PIL_PROCESSORS)}); install torchvision')
    processor_class, image_builder, patch_size = _PIL_PROCESSORS[family]
    pre = read_json_object(path / 'preprocessor_config.json')
    image_processor, extra = image_builder(path, pre)
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    template = read_chat_template(path) or getattr(tokenizer, 'chat_template', None)
    video_cls, processor_cls = _fallback_classes(processor_class, patch_size)
    return processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                         video_processor=video_cls(), chat_template=template, **extra)


def _torchvision_available() -> bool:
    from transformers.utils import import_utils
    return bool(import_utils.is_torchvision_available())


def apply_pixel_limits(image_processor: Any, min_pixels: int, max_pixels: int) -> dict[str, int]:
    """
    Override the processor's ``size`` limits where the parameters are > 0.

    :returns: The effective ``{'shortest_edge', 'longest_edge'}``.
    """
    size = dict(getattr(image_processor, 'size', None) or {})
    attr_lo = getattr(image_processor, 'min_pixels', None)
    attr_hi = getattr(image_processor, 'max_pixels', None)
    # transformers 5 uses min_pixels/max_pixels over size when both are set; mirror that.
    if attr_lo is not None and attr_hi is not None:
        cur_lo, cur_hi = attr_lo, attr_hi
    else:
        cur_lo, cur_hi = size.get('shortest_edge'), size.get('longest_edge')
    lo = min_pixels or cur_lo
    hi = max_pixels or cur_hi
    if lo is None or hi is None or int(lo) > int(hi):
        raise BackendUnavailableError(
            f'invalid processor pixel limits: min {lo}, max {hi} (processor size {size})')
    image_processor.size = {'shortest_edge': int(lo), 'longest_edge': int(hi)}
    # Qwen2VL processors prefer min_pixels/max_pixels attributes when set; keep them in step.
    image_processor.min_pixels, image_processor.max_pixels = int(lo), int(hi)
    return dict(image_processor.size)


def _processor_family(path: Path, family: ModelFamily | str | None) -> ModelFamily:
    """The given family; else ``path``'s ``config.json`` family; else Qwen3-VL (no config)."""
    if isinstance(family, ModelFamily):
        return family
    if family is not None:
        return families.family_by_name(family)
    if (path / 'config.json').is_file():
        # Imported here: the backend module imports this one.
        from procvlm_ros.core.backends.transformers_backend import checkpoint_family
        return checkpoint_family(path)
    return families.family_by_name(families.DEFAULT_FAMILY)


def load_processor(path: Path, min_pixels: int = 0, max_pixels: int = 0,
                   family: ModelFamily | str | None = None,
                   trust_remote_code: bool = False) -> tuple[Any, str]:
    """
    Load the checkpoint's processor: ``AutoProcessor`` first, the no-torchvision build second.

    :param family: The model family (None: ``path/config.json``'s, else Qwen3-VL). Native
        families never run checkpoint code; a remote-code family needs ``trust_remote_code``
        (that route is untested here).
    :param min_pixels: Minimum image area (> 0 overrides; Qwen-VL families only).
    :param max_pixels: Maximum image area (> 0 overrides; Qwen-VL families only).
    :returns: ``(processor, route)`` where route is ``'auto'`` or ``'pil-fallback'``.
    :raises BackendUnavailableError: If no processor can be built, it has no chat template, or
        pixel limits are set for a family that tiles images to a fixed size.
    """
    import transformers
    tf: Any = transformers
    fam = _processor_family(path, family)
    require_trusted(path, fam, trust_remote_code)
    if (min_pixels or max_pixels) and fam.name not in _PIXEL_LIMIT_FAMILIES:
        raise BackendUnavailableError(
            f'min_pixels/max_pixels ({min_pixels}/{max_pixels}) apply to Qwen-VL processors; '
            f'{fam.name} resizes images to fixed tiles (preprocessor_config.json size), so set '
            'both to 0')
    try:
        processor, route = tf.AutoProcessor.from_pretrained(
            str(path), use_fast=True, trust_remote_code=fam.remote_code), 'auto'
    except Exception as e:  # classified below
        if _torchvision_available() or 'torchvision' not in str(e).lower():
            raise BackendUnavailableError(
                f'could not load the processor of {path} ({type(e).__name__}: {e})') from e
        try:
            processor, route = build_processor_without_torchvision(path, fam.name), 'pil-fallback'
        except BackendUnavailableError:
            raise
        except Exception as e2:  # any failure of the workaround
            raise BackendUnavailableError(
                f'torchvision is absent and the PIL processor for {path} could not be built '
                f'({type(e2).__name__}: {e2})') from e2
    if not getattr(processor, 'chat_template', None):
        processor.chat_template = getattr(processor.tokenizer, 'chat_template', None)
    if not processor.chat_template:
        raise BackendUnavailableError(
            f'{path} has no chat template (chat_template.jinja, chat_template.json or '
            "tokenizer_config.json); the prompt is rendered with the checkpoint's own template")
    limits: Any = getattr(processor.image_processor, 'size', None)
    if fam.name in _PIXEL_LIMIT_FAMILIES:
        limits = apply_pixel_limits(processor.image_processor, min_pixels, max_pixels)
    _LOG.debug('processor route %s: %s + %s, size %s', route, type(processor).__name__,
               type(processor.image_processor).__name__, limits)
    return processor, route
