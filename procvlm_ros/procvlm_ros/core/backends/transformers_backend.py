"""
Reference backend: the checkpoint run with transformers, as the official transformers path.

Behaviour follows ``procvlm-reference.md`` sections 1.5-1.7, 2.2 and 3: one user turn rendered
with the checkpoint's own chat template, ``Qwen3VLProcessor`` preprocessing, greedy decoding
unless ``temperature > 0`` (then ``top_p=0.9``), eos/pad from ``generation_config.json``, only
the new tokens decoded with ``skip_special_tokens=True`` and no strip, and the optional value
head. Differences from the official code, on purpose: the attention kernel is configurable
(official hard-codes flash_attention_2, bug 10.5) and a missing value-head sidecar is an error
instead of a silently random head (bug 10.7).

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

from procvlm_ros.core.backends import lora_adapter as lora
from procvlm_ros.core.backends import value_head as vh
from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
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


def read_model_config(path: Path) -> dict[str, Any]:
    """
    Read ``config.json`` and check that it is a Qwen3-VL checkpoint.

    :raises BackendUnavailableError: If there is no readable config or the model type differs.
    """
    cfg_path = path / 'config.json'
    if not cfg_path.is_file():
        raise BackendUnavailableError(
            f'{path} is not a transformers checkpoint: config.json is missing')
    try:
        cfg = json.loads(cfg_path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise BackendUnavailableError(f'{cfg_path} is not valid JSON: {e}') from e
    found = cfg.get('model_type') if isinstance(cfg, dict) else None
    if found != EXPECTED_MODEL_TYPE:
        raise BackendUnavailableError(
            f'{path} holds a model of type {found!r}; ProcVLM needs {EXPECTED_MODEL_TYPE!r} '
            '(Qwen3VLForConditionalGeneration, e.g. ce-amtic/ProcVLM-2B)')
    return dict(cfg)


def load_model(path: Path, device: str, dtype: Any, attn_implementation: str) -> Any:
    """
    Load ``Qwen3VLForConditionalGeneration`` weights; refuse incomplete or unreadable weights.

    :raises BackendUnavailableError: If the weights are missing, truncated, corrupt or
        incomplete, or the attention kernel is unavailable.
    """
    import transformers
    tf: Any = transformers
    dtype_kw = 'dtype' if int(transformers.__version__.split('.')[0]) >= 5 else 'torch_dtype'
    try:
        model, info = tf.Qwen3VLForConditionalGeneration.from_pretrained(
            str(path), output_loading_info=True, attn_implementation=attn_implementation,
            **{dtype_kw: dtype})
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
def _fallback_classes() -> tuple[type, type]:
    """Images-only video processor and a Qwen3VLProcessor that accepts it (no torchvision)."""
    from transformers import Qwen3VLProcessor
    import transformers.video_processing_utils as vpu

    class ImagesOnlyVideoProcessor(vpu.BaseVideoProcessor):
        """Placeholder: Qwen3VLVideoProcessor needs torchvision; videos are never sent."""

        patch_size, temporal_patch_size, merge_size = 16, 2, 2

    class ImagesOnlyQwen3VLProcessor(Qwen3VLProcessor):
        """Qwen3VLProcessor whose video slot accepts the placeholder above."""

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == 'video_processor':
                return type(argument)
            parent: Any = super()
            return parent.check_argument_for_proper_class(argument_name, argument)

    return ImagesOnlyVideoProcessor, ImagesOnlyQwen3VLProcessor


def build_processor_without_torchvision(path: Path) -> Any:
    """
    Build ``Qwen3VLProcessor`` from the checkpoint's files with the PIL/numpy image processor.

    Uses the checkpoint's tokenizer, its ``preprocessor_config.json`` values and its chat
    template (``qwen3vl-export.md`` section 1.3), with an images-only video processor.
    """
    import transformers
    from transformers import AutoTokenizer
    pre = _read_json(path / 'preprocessor_config.json')
    image_cls = (getattr(transformers, 'Qwen2VLImageProcessorPil', None)
                 or transformers.Qwen2VLImageProcessor)
    image_processor = image_cls(**image_processor_kwargs(pre))
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    template = read_chat_template(path) or getattr(tokenizer, 'chat_template', None)
    video_cls, processor_cls = _fallback_classes()
    return processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                         video_processor=video_cls(), chat_template=template)


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


def load_processor(path: Path, min_pixels: int = 0, max_pixels: int = 0) -> tuple[Any, str]:
    """
    Load the checkpoint's processor: ``AutoProcessor`` first, the no-torchvision build second.

    :returns: ``(processor, route)`` where route is ``'auto'`` or ``'pil-fallback'``.
    :raises BackendUnavailableError: If no processor can be built or it has no chat template.
    """
    import transformers
    tf: Any = transformers
    try:
        processor, route = tf.AutoProcessor.from_pretrained(str(path), use_fast=True), 'auto'
    except Exception as e:  # classified below
        if _torchvision_available() or 'torchvision' not in str(e).lower():
            raise BackendUnavailableError(
                f'could not load the processor of {path} ({type(e).__name__}: {e})') from e
        try:
            processor, route = build_processor_without_torchvision(path), 'pil-fallback'
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
    limits = apply_pixel_limits(processor.image_processor, min_pixels, max_pixels)
    _LOG.debug('processor route %s: %s + %s, size %s', route, type(processor).__name__,
               type(processor.image_processor).__name__, limits)
    return processor, route


# ---------------------------------------------------------------- backend


class TransformersBackend(Backend):
    """
    ProcVLM on transformers: the reference every exported backend is compared against.

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
        self._pad_id = DEFAULT_PAD_TOKEN_ID
        self._told_plain = False  # the "speculation off" reason is logged once

    @property
    def model(self) -> Any:
        """The loaded ``Qwen3VLForConditionalGeneration`` (None before load/after close)."""
        return self._model

    @property
    def processor(self) -> Any:
        """The loaded ``Qwen3VLProcessor`` (None before load/after close)."""
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
        read_model_config(path)
        adapter = Path(cfg.adapter).expanduser() if cfg.adapter else None
        if adapter is not None:
            lora.read_adapter_config(adapter)  # fail before the weights load
        head_path = self._find_head(path, adapter)
        # The official loader reads the processor (pixel limits included) from the adapter.
        processor_dir = adapter if adapter is not None and (
            adapter / 'preprocessor_config.json').is_file() else path
        processor, route = load_processor(processor_dir, cfg.min_pixels, cfg.max_pixels)
        model = load_model(path, device, dtype, cfg.attn_implementation)
        if adapter is not None:
            model = lora.apply_adapter(model, adapter, base_dir=path).to(device)
        self.adapter_dir = adapter
        self._fill_generation_ids(model, processor)
        if head_path is not None:
            hidden = int(model.config.text_config.hidden_size)
            self._head = vh.load_value_head(head_path, hidden, device=device, dtype=dtype)
        self._model, self._processor, self._torch_dtype = model, processor, dtype
        self.device, self.model_dir, self.processor_route = device, path, route
        self.value_head_path = head_path
        _LOG.debug('loaded %s on %s (%s), processor %s, value head %s', path, device, dtype,
                   route, head_path)

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
        return str(text[0] if isinstance(text, list) else text)

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
