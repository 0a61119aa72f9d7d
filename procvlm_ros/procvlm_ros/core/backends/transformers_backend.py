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

import gc
import logging
import os
from pathlib import Path
import time
from typing import Any

from procvlm_ros.core.backends import families
from procvlm_ros.core.backends import lora_adapter as lora
from procvlm_ros.core.backends import value_head as vh
from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.backends.families import ModelFamily, require_trusted
from procvlm_ros.core.backends.hf_processor import load_processor
from procvlm_ros.core.backends.json_files import read_json_object
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendError, BackendUnavailableError

_LOG = logging.getLogger(__name__)

EXPECTED_MODEL_TYPE = 'qwen3_vl'
SAMPLING_TOP_P = 0.9  # official batch_infer default when temperature > 0
DEFAULT_PAD_TOKEN_ID = 151643  # <|endoftext|>
_DTYPE_NAMES = {'bf16': 'bfloat16', 'fp16': 'float16', 'fp32': 'float32'}
_VISUAL_KEYS = ('pixel_values', 'image_grid_thw', 'pixel_values_videos', 'video_grid_thw')


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
    return read_json_object(cfg_path)


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
