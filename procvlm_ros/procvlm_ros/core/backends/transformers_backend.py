"""
Reference backend: the checkpoint run with transformers, as the official transformers path.

Behaviour follows ``procvlm-reference.md`` sections 1.5-1.7, 2.2 and 3: one user turn rendered
with the checkpoint's own chat template, the family's processor (``Qwen3VLProcessor`` for
ProcVLM), greedy decoding unless ``temperature > 0`` (then ``top_p=0.9``), eos/pad from
``generation_config.json``, only the new tokens decoded with ``skip_special_tokens=True`` and no
strip, and the optional value head. Differences from the official code, on purpose: the
attention kernel is configurable (official hard-codes flash_attention_2, bug 10.5) and a missing
value-head sidecar is an error instead of a silently random head (bug 10.7).

Model families (:mod:`families`, keyed by ``config.json`` ``model_type``): Qwen3-VL, Qwen2.5-VL
and transformers-native InternVL load with their transformers class and never run checkpoint
code (``trust_remote_code=False`` is passed explicitly). Remote-code InternVL (``internvl_chat``,
e.g. VLAC-2B) is refused unless ``trust_remote_code`` is on.

torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
from pathlib import Path
import time
from typing import Any

from procvlm_ros.core.backends import families
from procvlm_ros.core.backends import lora_adapter as lora
from procvlm_ros.core.backends import value_head as vh
from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.backends.families import ModelFamily
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendError, BackendUnavailableError

_LOG = logging.getLogger(__name__)

EXPECTED_MODEL_TYPE = 'qwen3_vl'
SAMPLING_TOP_P = 0.9  # official batch_infer default when temperature > 0
DEFAULT_PAD_TOKEN_ID = 151643  # <|endoftext|>
_DTYPE_NAMES = {'bf16': 'bfloat16', 'fp16': 'float16', 'fp32': 'float32'}
_VISUAL_KEYS = ('pixel_values', 'image_grid_thw', 'pixel_values_videos', 'video_grid_thw')
_IMAGE_PROCESSOR_KEYS = ('do_resize', 'do_rescale', 'rescale_factor', 'do_normalize',
                         'do_convert_rgb', 'image_mean', 'image_std', 'patch_size',
                         'temporal_patch_size', 'merge_size', 'resample')
_TILE_PROCESSOR_KEYS = ('do_resize', 'do_rescale', 'rescale_factor', 'do_normalize',
                        'do_convert_rgb', 'image_mean', 'image_std', 'resample', 'size',
                        'crop_to_patches', 'min_patches', 'max_patches')
_PIXEL_LIMIT_FAMILIES = ('qwen3_vl', 'qwen2_5_vl')  # processors with min/max pixel limits


# ---------------------------------------------------------------- device, dtype, checkpoint


def resolve_device(device: str) -> str:
    """
    Turn the ``device`` parameter into a torch device string.

    :param device: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
    :raises BackendUnavailableError: If cuda is requested but not available.
    """
    import torch
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f'device {device!r} requested but torch {torch.__version__} sees no CUDA device; '
            'use device: cpu or auto')
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """Return the torch dtype: ``auto`` is bf16 on cuda and fp32 on cpu."""
    import torch
    name = ('bf16' if device.startswith('cuda') else 'fp32') if dtype == 'auto' else dtype
    if name not in _DTYPE_NAMES:
        raise BackendUnavailableError(f'dtype must be auto, bf16, fp16 or fp32, got {dtype!r}')
    return getattr(torch, _DTYPE_NAMES[name])


def _looks_like_path(model: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a local path."""
    return model.startswith(('/', '.', '~')) or '\\' in model or model.count('/') > 1


def resolve_checkpoint(model: str) -> Path:
    """
    Return the local checkpoint directory for a directory path or a hub id.

    :param model: Local directory or Hugging Face hub id.
    :raises BackendUnavailableError: If the directory is missing, or the hub id cannot be
        fetched (offline, unreachable, unknown repository).
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise BackendUnavailableError(
            f'model {model!r} is a file; expected a checkpoint directory')
    if _looks_like_path(model):
        raise BackendUnavailableError(f'checkpoint directory {model!r} does not exist')
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(model))
    except Exception as e:  # every hub failure gets the same advice
        offline = os.environ.get('HF_HUB_OFFLINE', '') not in ('', '0') or os.environ.get(
            'TRANSFORMERS_OFFLINE', '') not in ('', '0')
        why = 'HF_HUB_OFFLINE is set' if offline else 'hub unreachable or repository unknown'
        raise BackendUnavailableError(
            f'model {model!r} is not a local directory and could not be fetched from the Hugging '
            f'Face hub ({why}; {type(e).__name__}). Download it on a machine with network access '
            f'(e.g. `hf download {model} --local-dir /models/procvlm`) and set model to that '
            'local directory') from e


def _read_config_json(path: Path) -> dict[str, Any]:
    cfg_path = path / 'config.json'
    if not cfg_path.is_file():
        raise BackendUnavailableError(
            f'{path} is not a transformers checkpoint: config.json is missing')
    try:
        cfg = json.loads(cfg_path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise BackendUnavailableError(f'{cfg_path} is not valid JSON: {e}') from e
    if not isinstance(cfg, dict):
        raise BackendUnavailableError(f'{cfg_path} does not hold a JSON object')
    return cfg


def _family_of(path: Path, cfg: dict[str, Any]) -> ModelFamily:
    try:
        return families.family_for_config(cfg, where=str(path))
    except BackendUnavailableError as e:
        supported = ', '.join(repr(t) for f in families.FAMILIES for t in f.model_types)
        raise BackendUnavailableError(
            f'{path} holds a model of type {cfg.get("model_type")!r}; the transformers backend '
            f'serves {supported} (ProcVLM is {families.DEFAULT_FAMILY!r}, e.g. '
            'ce-amtic/ProcVLM-2B)') from e


def checkpoint_family(path: Path) -> ModelFamily:
    """
    Return the model family of the checkpoint in ``path`` from its ``config.json``.

    :raises BackendUnavailableError: If there is no readable config or no family serves its
        ``model_type``.
    """
    return _family_of(path, _read_config_json(path))


def read_model_config(path: Path,
                      accept: tuple[str, ...] = (families.DEFAULT_FAMILY,)) -> dict[str, Any]:
    """
    Read ``config.json`` and check that the checkpoint's family is one of ``accept``.

    :param accept: Family names the caller supports (Qwen3-VL only by default: ProcVLM's
        training, merging and export tools).
    :raises BackendUnavailableError: If there is no readable config or the family differs.
    """
    cfg = _read_config_json(path)
    family = _family_of(path, cfg)
    if family.name not in accept:
        wanted = ' or '.join(repr(a) for a in accept)
        raise BackendUnavailableError(
            f'{path} holds a model of type {cfg.get("model_type")!r} (family {family.name}); '
            f'this needs {wanted} (Qwen3VLForConditionalGeneration, e.g. ce-amtic/ProcVLM-2B)')
    return cfg


def require_trusted(path: Path, family: ModelFamily, trust_remote_code: bool) -> None:
    """
    Refuse a family whose checkpoints carry their own Python code unless it is trusted.

    :raises BackendUnavailableError: If ``family.remote_code`` and not ``trust_remote_code``.
    """
    if family.remote_code and not trust_remote_code:
        raise BackendUnavailableError(
            f'{path} is a remote-code checkpoint (model_type {family.name!r}, e.g. VLAC-2B): '
            'loading it runs the Python files shipped with the checkpoint. Set '
            'trust_remote_code to true only after reading that code, or convert the checkpoint '
            "to transformers' native InternVL format (model_type 'internvl')")


def _model_loader(family: ModelFamily, trust_remote_code: bool) -> tuple[Any, bool]:
    """``(transformers class, trust_remote_code to pass)`` for the family."""
    import transformers
    tf: Any = transformers
    if family.model_class is None:
        return tf.AutoModel, trust_remote_code
    loader = getattr(tf, family.model_class, None)
    if loader is None:
        raise BackendUnavailableError(
            f'transformers {transformers.__version__} has no {family.model_class} '
            f'({family.name} checkpoints); upgrade transformers')
    return loader, False


def load_model(path: Path, device: str, dtype: Any, attn_implementation: str,
               family: ModelFamily | None = None, trust_remote_code: bool = False) -> Any:
    """
    Load the family's model class; refuse incomplete or unreadable weights.

    Native families (Qwen3-VL, Qwen2.5-VL, InternVL) load with their transformers class and
    ``trust_remote_code=False``. A remote-code family (``internvl_chat``) loads through
    ``AutoModel`` with ``trust_remote_code=True`` only when ``trust_remote_code`` is set; that
    path is **untested** here (no remote-code checkpoint is available offline).

    :param family: The checkpoint's family (None: read from ``path/config.json``).
    :raises BackendUnavailableError: If the weights are missing, truncated, corrupt or
        incomplete, the attention kernel is unavailable, or remote code is not trusted.
    """
    import transformers
    family = family or checkpoint_family(path)
    require_trusted(path, family, trust_remote_code)
    loader, remote = _model_loader(family, trust_remote_code)
    dtype_kw = 'dtype' if int(transformers.__version__.split('.')[0]) >= 5 else 'torch_dtype'
    try:
        model, info = loader.from_pretrained(
            str(path), output_loading_info=True, attn_implementation=attn_implementation,
            trust_remote_code=remote, **{dtype_kw: dtype})
    except ImportError as e:
        raise BackendUnavailableError(
            f'attn_implementation={attn_implementation!r} is not usable here ({e}); '
            'use sdpa or eager') from e
    except Exception as e:  # safetensors/torch raise many types
        raise BackendUnavailableError(
            f'could not load the weights in {path} ({type(e).__name__}: {e}); the weight files '
            'are missing, corrupt or truncated') from e
    missing = list(info.get('missing_keys') or [])
    if missing:
        raise BackendUnavailableError(
            f'weights in {path} are incomplete: {len(missing)} tensors missing '
            f'(e.g. {missing[:3]}); they would be randomly initialised')
    return model.to(device).eval()


# ---------------------------------------------------------------- processor


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise BackendUnavailableError(f'cannot read {path}: {e}') from e
    if not isinstance(data, dict):
        raise BackendUnavailableError(f'{path} does not hold a JSON object')
    return data


def read_chat_template(path: Path) -> str | None:
    """Return the checkpoint's processor chat template (``.jinja`` or ``.json``), if any."""
    if (path / 'chat_template.jinja').is_file():
        return (path / 'chat_template.jinja').read_text(encoding='utf-8')
    if (path / 'chat_template.json').is_file():
        template = _read_json(path / 'chat_template.json').get('chat_template')
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
        seq = _read_json(path / 'processor_config.json').get('image_seq_length')
    if seq is None and (path / 'config.json').is_file():
        seq = _read_json(path / 'config.json').get('image_seq_length')
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
    pre = _read_json(path / 'preprocessor_config.json')
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


# ---------------------------------------------------------------- backend


def text_hidden_size(config: Any, family: ModelFamily) -> int:
    """
    The language model's hidden size H (what the value head pools).

    :raises BackendUnavailableError: If the family's text config has no ``hidden_size``.
    """
    text = getattr(config, family.text_config, None)
    hidden = getattr(text, 'hidden_size', None)
    if hidden is None:
        raise BackendUnavailableError(
            f'{family.name} config has no {family.text_config}.hidden_size; the value head '
            'cannot be sized: set enable_value_head to false')
    return int(hidden)


class TransformersBackend(Backend):
    """
    ProcVLM on transformers: the reference every exported backend is compared against.

    Serves every family of :mod:`families`; the value head and draft verification run where the
    family's model has a text hidden size and a transformers forward (native families).

    :param config: Backend parameters (``model``, ``device``, ``dtype``, ``prompt_layout``,
        pixel limits, generation and value-head settings).
    """

    name = 'transformers'

    def __init__(self, config: BackendConfig) -> None:
        super().__init__()
        self._cfg = config
        self._model: Any = None
        self._processor: Any = None
        self._head: Any = None
        self._torch_dtype: Any = None
        self.device = ''
        self.model_dir: Path | None = None
        self.processor_route = ''
        self.value_head_path: Path | None = None
        self.adapter_dir: Path | None = None
        self.family: ModelFamily | None = None
        self._pad_id = DEFAULT_PAD_TOKEN_ID
        self._told_plain = False  # the "speculation off" reason is logged once

    @property
    def model(self) -> Any:
        """The loaded model, e.g. ``Qwen3VLForConditionalGeneration`` (None when not loaded)."""
        return self._model

    @property
    def processor(self) -> Any:
        """The loaded processor, e.g. ``Qwen3VLProcessor`` (None when not loaded)."""
        return self._processor

    def _load(self) -> None:
        """Resolve device/dtype and checkpoint, load model, processor and optional head."""
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            raise BackendUnavailableError(
                "the transformers backend needs torch and transformers>=4.57.1: "
                "pip install 'procvlm_ros[torch]'") from e
        cfg = self._cfg
        device = resolve_device(cfg.device)
        dtype = resolve_dtype(cfg.dtype, device)
        path = resolve_checkpoint(cfg.model)
        if lora.is_adapter_dir(path):
            raise BackendUnavailableError(
                f'{path} is a LoRA adapter, not a checkpoint: set model to its base '
                f'({lora.base_model_of(path)}) and adapter to {path} '
                '(procvlm-infer: --model_path ADAPTER --use_lora)')
        family = checkpoint_family(path)
        require_trusted(path, family, cfg.trust_remote_code)
        adapter = Path(cfg.adapter).expanduser() if cfg.adapter else None
        self._check_family_features(path, family, adapter)
        if adapter is not None:
            lora.read_adapter_config(adapter)  # fail before the weights load
        head_path = self._find_head(path, adapter)
        # The official loader reads the processor (pixel limits included) from the adapter.
        processor_dir = adapter if adapter is not None and (
            adapter / 'preprocessor_config.json').is_file() else path
        processor, route = load_processor(processor_dir, cfg.min_pixels, cfg.max_pixels,
                                          family, cfg.trust_remote_code)
        model = load_model(path, device, dtype, cfg.attn_implementation, family,
                           cfg.trust_remote_code)
        if adapter is not None:
            model = lora.apply_adapter(model, adapter, base_dir=path).to(device)
        self.adapter_dir = adapter
        self._fill_generation_ids(model, processor)
        if head_path is not None:
            hidden = text_hidden_size(model.config, family)
            self._head = vh.load_value_head(head_path, hidden, device=device, dtype=dtype)
        self._model, self._processor, self._torch_dtype = model, processor, dtype
        self.family = family
        self.device, self.model_dir, self.processor_route = device, path, route
        self.value_head_path = head_path
        _LOG.debug('loaded %s on %s (%s), processor %s, value head %s', path, device, dtype,
                   route, head_path)

    def _check_family_features(self, path: Path, family: ModelFamily,
                               adapter: Path | None) -> None:
        """Refuse an adapter on a family other than Qwen3-VL, a head on remote code."""
        if adapter is not None and family.name != families.DEFAULT_FAMILY:
            raise BackendUnavailableError(
                f'LoRA adapters are supported on {families.DEFAULT_FAMILY} checkpoints only; '
                f'{path} is {family.name}')
        if self._cfg.enable_value_head and family.model_class is None:
            raise BackendUnavailableError(
                f'the value head needs a transformers-native model; {path} is {family.name} '
                '(remote code): set enable_value_head to false')

    def _find_head(self, path: Path, adapter: Path | None = None) -> Path | None:
        if not self._cfg.enable_value_head:
            return None
        head_path = vh.find_head_sidecar(path)
        if adapter is not None:
            head_path = lora.choose_head(head_path, adapter, self._cfg.adapter_head)
        if head_path is None:
            raise BackendUnavailableError(
                f'enable_value_head is on but {path} has no value-head sidecar (looked for '
                f'{", ".join(vh.HEAD_SIDECAR_CANDIDATES)}); the official code would silently run '
                'a randomly initialised head, so this backend refuses. Add the sidecar or set '
                'enable_value_head to false')
        return head_path

    def _fill_generation_ids(self, model: Any, processor: Any) -> None:
        """Use eos/pad from generation_config.json; fall back to the tokenizer's with a warning."""
        gen = model.generation_config
        tok = processor.tokenizer
        if gen.eos_token_id is None:
            _LOG.warning('checkpoint has no eos_token_id in generation_config.json; using the '
                         "tokenizer's %s", tok.eos_token_id)
            gen.eos_token_id = tok.eos_token_id
        if gen.pad_token_id is None:
            gen.pad_token_id = tok.pad_token_id
        # The value-head mask uses the tokenizer's pad id, as the official code does.
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else DEFAULT_PAD_TOKEN_ID

    def _require_loaded(self) -> None:
        if self._model is None:
            raise BackendError('TransformersBackend is not loaded: call load() first')

    def render_chat(self, request: GenerationRequest) -> str:
        """Return the chat string exactly as fed to the processor (before image expansion)."""
        self._require_loaded()
        text = self._processor.apply_chat_template(
            request.chat(self._cfg.prompt_layout), tokenize=False, add_generation_prompt=True)
        return str(text[0] if isinstance(text, list) else text) + request.assistant_prefix

    def prepare_inputs(self, request: GenerationRequest) -> dict[str, Any]:
        """Return the model inputs (on the model's device; floating tensors in its dtype)."""
        text = self.render_chat(request)
        images = list(request.images) or None
        batch = self._processor(text=[text], images=images, return_tensors='pt')
        inputs: dict[str, Any] = {}
        for key, value in batch.items():
            if value.is_floating_point():
                inputs[key] = value.to(device=self.device, dtype=self._torch_dtype)
            else:
                inputs[key] = value.to(device=self.device)
        return inputs

    def generation_kwargs(self) -> dict[str, Any]:
        """Official settings: greedy at temperature 0, else temperature with ``top_p=0.9``."""
        kwargs: dict[str, Any] = {'max_new_tokens': self._cfg.max_new_tokens,
                                  'do_sample': self._cfg.temperature > 0}
        if self._cfg.temperature > 0:
            kwargs.update(temperature=self._cfg.temperature, top_p=SAMPLING_TOP_P)
        return kwargs

    def _generate(self, request: GenerationRequest) -> GenerationResult:
        import torch
        with torch.inference_mode():
            return self._generate_window(request)

    def _generate_window(self, request: GenerationRequest) -> GenerationResult:
        t0 = time.perf_counter()
        inputs = self.prepare_inputs(request)
        t1 = time.perf_counter()
        sequences, passes, accepted = self._decode(inputs, request.draft_token_ids)
        prompt_len = int(inputs['input_ids'].shape[1])
        new_ids = sequences[0, prompt_len:]
        text = self._processor.batch_decode(
            [new_ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
        t2 = time.perf_counter()
        percent = None
        if self._head is not None and vh.should_run_value_head(text):
            percent = self._value_head_percent(inputs, sequences)
            text = vh.rewrite_progress(text, percent)
        t3 = time.perf_counter()
        return GenerationResult(
            text=text, generated_tokens=int(new_ids.shape[0]), prompt_tokens=prompt_len,
            value_head_percent=percent, token_ids=new_ids.tolist(),
            timings={'preprocess_s': t1 - t0, 'generate_s': t2 - t1, 'value_head_s': t3 - t2},
            decoder_passes=passes, draft_tokens_accepted=accepted)

    def _decode(self, inputs: dict[str, Any], draft: Any) -> tuple[Any, int, int]:
        """
        ``(sequences (1, P + N), decoder passes, accepted draft ids)``: the draft-verifying
        loop when speculation is on and a draft is given, else ``generate()``.
        """
        from procvlm_ros.core.backends import torch_speculation as ts
        cfg = self._cfg
        why = ts.plain_decoding_reason(self._model.generation_config, cfg.temperature)
        if self.family is not None and self.family.model_class is None:
            why = why or f'{self.family.name} runs remote model code; drafts are not verified'
        if cfg.speculation and why and not self._told_plain:
            _LOG.info('speculation off: %s', why)
            self._told_plain = True
        if cfg.speculation and not why and draft:
            sequences, stats = ts.speculative_generate(
                self._model, inputs, list(draft), cfg.speculation_max_draft, cfg.max_new_tokens)
            return sequences, stats.decoder_passes, stats.draft_tokens_accepted
        sequences = self._model.generate(**inputs, **self.generation_kwargs())  # (1, P + N)
        generated = int(sequences.shape[1] - inputs['input_ids'].shape[1])
        return sequences, max(0, generated - 1), 0  # one pass per token after the prefill's

    def _value_head_percent(self, inputs: dict[str, Any], sequences: Any) -> float:
        """Fresh forward over prompt + generated ids, pool the final hidden states, map z."""
        import torch
        mask = (sequences != self._pad_id).long()  # (1, L)
        extra = {k: inputs[k] for k in _VISUAL_KEYS if k in inputs}
        if 'mm_token_type_ids' in inputs:  # transformers 5: generated tokens are text (0)
            mm = inputs['mm_token_type_ids']
            tail = mm.new_zeros((mm.shape[0], sequences.shape[1] - mm.shape[1]))
            extra['mm_token_type_ids'] = torch.cat([mm, tail], dim=1)
        out = self._model.model(input_ids=sequences, attention_mask=mask, use_cache=False,
                                **extra)
        hidden = out.last_hidden_state  # (1, L, H): after the final norm, what lm_head reads
        head_dtype = next(self._head.parameters()).dtype
        z = self._head(hidden.to(head_dtype), mask)  # (1,)
        return float(vh.percent_tensor(z, self._cfg.value_head_calibration)[0].item())

    def _close(self) -> None:
        """Drop model, processor and head; empty the CUDA cache when on cuda."""
        on_cuda = self.device.startswith('cuda')
        self._model = self._processor = self._head = None
        gc.collect()
        if on_cuda:
            import torch
            torch.cuda.empty_cache()
