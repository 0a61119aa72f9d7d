"""
Model families: what differs between the vision-language architectures the backends serve.

Keyed by the checkpoint's ``config.json`` ``model_type`` (and by the export manifest's
``model.family``), as optimum keys its export configs. A family names the transformers classes,
says whether ``procvlm-export`` can export it and why not, and whether its checkpoints carry
remote model code. Nothing here imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

from procvlm_ros.core.errors import BackendUnavailableError


@dataclass(frozen=True)
class ModelFamily:
    """
    One architecture family.

    :param name: Registry key, also written to export manifests.
    :param model_types: ``config.json`` ``model_type`` values of this family.
    :param model_class: transformers class that loads the checkpoint (None: remote code only).
    :param text_config: Where the language model's sizes live (``text_config`` or ``llm_config``).
    :param exportable: ``procvlm-export onnx`` supports it.
    :param export_note: Why not, when it is not exportable.
    :param remote_code: Checkpoints need ``trust_remote_code`` (their own Python files).
    :param patch_size: Vision patch side; the qwen-vl-utils pre-resize factor is 2x this.
    """

    name: str
    model_types: tuple[str, ...]
    model_class: str | None
    text_config: str = 'text_config'
    exportable: bool = False
    export_note: str = ''
    remote_code: bool = False
    patch_size: int = 14


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily('qwen3_vl', ('qwen3_vl',), 'Qwen3VLForConditionalGeneration',
                exportable=True, patch_size=16),
    ModelFamily('qwen2_5_vl', ('qwen2_5_vl',), 'Qwen2_5_VLForConditionalGeneration',
                exportable=True, patch_size=14),
    ModelFamily('internvl', ('internvl',), 'InternVLForConditionalGeneration',
                export_note=(
                    'InternVL does not fit the Qwen-VL graph pattern the exporter builds: its '
                    'InternViT tower works on fixed 448x448 tiles with pixel shuffle and an MLP '
                    'projector, and its language model uses 1-D RoPE with no M-RoPE positions; '
                    'serve it with the transformers backend'), patch_size=14),
    ModelFamily('internvl_chat', ('internvl_chat',), None, text_config='llm_config',
                remote_code=True,
                export_note=('remote-code InternVL checkpoints (e.g. VLAC-2B) cannot be '
                             'exported; convert them to the transformers InternVL format or '
                             'serve them with the transformers backend'), patch_size=14),
)

DEFAULT_FAMILY = 'qwen3_vl'


def family_names() -> tuple[str, ...]:
    return tuple(f.name for f in FAMILIES)


def family_by_name(name: str) -> ModelFamily:
    """The family registered under ``name``; BackendUnavailableError when unknown."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise BackendUnavailableError(
        f'unknown model family {name!r}; supported: {", ".join(family_names())}')


def family_for_config(config: dict[str, object], where: str = 'checkpoint') -> ModelFamily:
    """
    The family of a checkpoint from its ``config.json`` contents.

    :raises BackendUnavailableError: For a ``model_type`` no family serves, naming the ones
        supported.
    """
    found = config.get('model_type') if isinstance(config, dict) else None
    for family in FAMILIES:
        if found in family.model_types:
            return family
    supported = ', '.join(t for f in FAMILIES for t in f.model_types)
    raise BackendUnavailableError(
        f'{where} holds a model of type {found!r}; supported model types: {supported} '
        '(Qwen3-VL e.g. ce-amtic/ProcVLM-2B, Qwen2.5-VL, InternVL)')


def require_trusted(path: object, family: ModelFamily, trust_remote_code: bool) -> None:
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
