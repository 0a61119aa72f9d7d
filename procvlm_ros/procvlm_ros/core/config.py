"""
Configuration dataclasses; they are the parameter schema of the node and the offline CLI.

Each field's ``metadata`` carries the description and allowed range/choices that
``procvlm_ros.ros.params`` turns into ROS parameter descriptors; ``__post_init__`` validates the
same rules for non-ROS use, so a bad value is rejected with one clear message everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
import math
from typing import Any

from procvlm_ros.core.errors import ConfigError


def param(description: str, *, lo: float | None = None, hi: float | None = None,
          choices: tuple[str, ...] | None = None, read_only: bool = True) -> dict[str, Any]:
    """Field metadata that turns a dataclass field into a declared, validated parameter."""
    return {'description': description, 'range': (lo, hi), 'choices': choices,
            'read_only': read_only}


BACKENDS = ('transformers', 'onnxruntime', 'tensorrt', 'scripted')
DTYPES = ('auto', 'bf16', 'fp16', 'fp32')


def validate_fields(obj: Any) -> None:
    """Check every field of a config dataclass against its metadata; raise ConfigError."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        lo, hi = f.metadata.get('range', (None, None))
        choices = f.metadata.get('choices')
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f'{f.name} must be finite, got {value!r}')
        if lo is not None and value < lo:
            raise ConfigError(f'{f.name} must be >= {lo}, got {value!r}')
        if hi is not None and value > hi:
            raise ConfigError(f'{f.name} must be <= {hi}, got {value!r}')
        if choices is not None and value not in choices:
            raise ConfigError(f'{f.name} must be one of {list(choices)}, got {value!r}')


@dataclass(frozen=True)
class BackendConfig:
    """How to load and query the model."""

    backend: str = field(default='transformers', metadata=param(
        'Inference backend: transformers (reference), onnxruntime, tensorrt, or scripted '
        '(canned answers for tests and demos only).', choices=BACKENDS))
    model: str = field(default='', metadata=param(
        'Checkpoint: a local directory or a Hugging Face hub id (hub needs network access).'))
    device: str = field(default='auto', metadata=param(
        'Torch device: auto (cuda if available, else cpu), cpu, cuda or cuda:N.'))
    dtype: str = field(default='auto', metadata=param(
        'Weights/compute dtype: auto (bf16 on cuda, fp32 on cpu), bf16, fp16 or fp32.',
        choices=DTYPES))
    max_new_tokens: int = field(default=4096, metadata=param(
        'Upper bound on generated tokens per window (official default 4096).', lo=1, hi=32768))
    temperature: float = field(default=0.0, metadata=param(
        'Sampling temperature; 0 is greedy decoding (official default).', lo=0.0, hi=5.0))
    prompt_layout: str = field(default='images_first', metadata=param(
        'images_first: official transformers path and training layout; text_first: the '
        'official default vLLM path (prompt text, then images).',
        choices=('images_first', 'text_first')))
    pre_resize_patch_size: int = field(default=14, metadata=param(
        'qwen-vl-utils pre-resize patch size: 14 = official transformers path (factor 28), '
        '16 = official vLLM path (factor 32), 0 = no pre-resize.', lo=0, hi=64))
    min_pixels: int = field(default=0, metadata=param(
        "Processor minimum image area in pixels; 0 keeps the checkpoint's "
        'preprocessor_config.json value.', lo=0))
    max_pixels: int = field(default=0, metadata=param(
        "Processor maximum image area in pixels; 0 keeps the checkpoint's value.", lo=0))
    enable_value_head: bool = field(default=False, metadata=param(
        'Replace the generated progress number with the value head (procvlm_head.pt/.bin), '
        'as the official --enable_value_head does.'))
    value_head_calibration: str = field(default='official', metadata=param(
        'official: sigmoid(z)*100 as the official inference code; trained: '
        'sigmoid(1.2*z - 0.1)*100, the mapping the head was trained with.',
        choices=('official', 'trained')))
    adapter: str = field(default='', metadata=param(
        'LoRA adapter directory (peft, e.g. from procvlm-adapt train or the official '
        'lora_oneshot.sh) applied unmerged on top of model at load; transformers backend only. '
        'Empty: none.'))
    adapter_head: str = field(default='adapter', metadata=param(
        "Value head with an adapter: adapter = the adapter's procvlm_head.bin (documented fix); "
        "official = the base checkpoint's head, as the official --use_lora loader ends up "
        'using (it drops the adapter head).', choices=('adapter', 'official')))
    attn_implementation: str = field(default='sdpa', metadata=param(
        'transformers attention kernel: sdpa, eager or flash_attention_2.',
        choices=('sdpa', 'eager', 'flash_attention_2')))
    engine_dir: str = field(default='', metadata=param(
        'Directory of exported ONNX graphs / TensorRT engines (onnxruntime and tensorrt).'))
    speculation: bool = field(default=True, metadata=param(
        "Verify the previous window's answer as a draft (temporal speculative decoding): "
        'fewer sequential decoder passes, output token for token the greedy one. Greedy '
        '(temperature 0) only; ignored when sampling.'))
    speculation_max_draft: int = field(default=16, metadata=param(
        'Most draft tokens verified per decoder pass (speculation).', lo=1, hi=256))
    trust_remote_code: bool = field(default=False, metadata=param(
        "Allow a checkpoint's own Python files (transformers trust_remote_code, e.g. VLAC-2B's "
        'InternVL chat code) to run in this process with its permissions. Off: such '
        'checkpoints are refused. Only turn on for checkpoints whose code you have read.'))
    scripted_outputs: tuple[str, ...] = field(default=(), metadata=param(
        'scripted backend only: answers returned in turn (test and demo use, never a model).'))

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ConfigError(f'min_pixels ({self.min_pixels}) > max_pixels ({self.max_pixels})')
        if self.adapter and self.backend != 'transformers':
            raise ConfigError(f'adapter needs the transformers backend (got {self.backend}); '
                              'merge it with procvlm-adapt merge for the other backends')
        if self.backend == 'transformers' and not self.model.strip():
            raise ConfigError('model is empty: set it to a checkpoint directory or hub id')
        if self.device != 'auto' and not (self.device in ('cpu', 'cuda')
                                          or self.device.startswith('cuda:')):
            raise ConfigError(f'device must be auto, cpu, cuda or cuda:N, got {self.device!r}')


PROFILE_NAMES = ('procvlm_progress', 'pairwise_critic', 'navigation_action', 'grounded_query')


@dataclass(frozen=True)
class ProfileConfig:
    """Which task the model is asked (core/profiles) and the profile's settings."""

    profile: str = field(default='procvlm_progress', metadata=param(
        'Task profile: procvlm_progress (ProcVLM window -> remaining actions and progress), '
        'pairwise_critic (VLAC-style pair of frames -> progress delta, accumulated), '
        'navigation_action (R2R-style history + current frame -> Move/Left/Right/Stop) or '
        'grounded_query (questions about the current frame through a service, answers with '
        'points).', choices=PROFILE_NAMES))
    # pairwise_critic (VLAC-style; core/profiles/pairwise_critic.py)
    critic_accumulation: str = field(default='simple', metadata=param(
        'pairwise_critic: how deltas accumulate into the 0-100 value: simple (VLAC default, '
        'v + (100 - v) * d / 100), asymmetric (VLAC simple=False: slower falls) or mix (VLAC '
        'mix_f).', choices=('simple', 'asymmetric', 'mix')))
    critic_done_min_value: float = field(default=80.0, metadata=param(
        'pairwise_critic: ask the done query (a second model call) once the accumulated value '
        'reaches this; above 100 never by value.', lo=0.0, hi=1000.0))
    critic_done_every: int = field(default=0, metadata=param(
        'pairwise_critic: also ask the done query every N windows; 0 never by count.',
        lo=0, hi=1_000_000))
    critic_done_threshold: float = field(default=0.9, metadata=param(
        "pairwise_critic: a done answer above this counts as done (VLAC's done_threshold).",
        lo=0.0, hi=1.0))
    critic_done_sets_value: bool = field(default=True, metadata=param(
        'pairwise_critic: a done answer sets the value to 100, so the supervisor sees it.'))
    critic_reference_path: str = field(default='', metadata=param(
        'pairwise_critic: a demonstration (folder of images or a video file) put in context as '
        'reference frames; empty: none.'))
    critic_reference_frames: int = field(default=6, metadata=param(
        'pairwise_critic: reference frames taken from the demonstration (VLAC: 2 to 11).',
        lo=2, hi=11))
    critic_image_size: int = field(default=448, metadata=param(
        'pairwise_critic: square side every image is resized to (VLAC: 448); 0 keeps the '
        'prepared frame.', lo=0, hi=4096))
    # navigation_action (R2R-style; core/profiles/navigation_action.py)
    navigation_system_prompt: str = field(default='', metadata=param(
        "navigation_action: system prompt; empty: the checkpoint's system_prompt.txt when it "
        "ships one, else the model card's text."))
    navigation_move_possible: bool = field(default=True, metadata=param(
        'navigation_action: offer Move among the possible actions (off: Left, Right, Stop).'))
    navigation_answer_prefix: str = field(default='Action: ', metadata=param(
        "navigation_action: text that starts the model's reply (the R2R authors' 'Action: '); "
        'empty: the model writes the whole answer.'))
    navigation_move_distance_m: float = field(default=0.0, metadata=param(
        "navigation_action: metres added to the prompt's distance travelled per Move.",
        lo=0.0, hi=1000.0))
    # grounded_query (ViGoRL-style; core/profiles/grounded_query.py)
    grounded_system_prompt_style: str = field(default='qa_multiturn', metadata=param(
        'grounded_query: published system prompt: qa_multiturn (question answering with zoom), '
        'grounding_multiturn (point at an element, with zoom), spatial, grounding (single '
        'turn) or none.',
        choices=('qa_multiturn', 'grounding_multiturn', 'spatial', 'grounding', 'none')))
    grounded_system_prompt: str = field(default='', metadata=param(
        "grounded_query: replaces the style's system prompt when not empty."))
    grounded_zoom: bool = field(default=True, metadata=param(
        'grounded_query: answer a search_coordinate tool call with a crop (another turn).'))
    grounded_max_turns: int = field(default=4, metadata=param(
        'grounded_query: model calls per question at most, zoom turns included.', lo=1, hi=16))
    grounded_crop_offset: int = field(default=182, metadata=param(
        'grounded_query: half side of the zoom box in model pixels (ViGoRL V*: 182).',
        lo=1, hi=8192))
    grounded_crop_size: int = field(default=672, metadata=param(
        'grounded_query: side the zoom crop is resized to, rounded to the model factor.',
        lo=1, hi=8192))
    grounded_crop_dot: bool = field(default=False, metadata=param(
        'grounded_query: draw a red dot at the zoom point and say so in the turn.'))

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class WindowConfig:
    """How frames become windows."""

    window_size: int = field(default=8, metadata=param(
        'Frames per window (official default 8); padded with the first frame at episode start.',
        lo=1, hi=64))
    sample_period_s: float = field(default=1.0, metadata=param(
        'Minimum header-stamp spacing between frames kept in the window; 0 keeps every frame.',
        lo=0.0, hi=3600.0))
    jpeg_roundtrip: bool = field(default=True, metadata=param(
        'JPEG-encode and decode each frame at quality 95 before the model, as the official '
        'pipeline does (it saves every frame as JPEG q95).'))
    max_stamp_future_s: float = field(default=2.0, metadata=param(
        'Frames stamped further than this ahead of the node clock are rejected (a camera '
        'clock that is not synchronised).', lo=0.0, hi=3600.0, read_only=False))
    max_stamp_age_s: float = field(default=10.0, metadata=param(
        'Frames stamped longer than this before the node clock when they arrive are rejected '
        '(a bag played without --clock and use_sim_time); 0 disables the check.',
        lo=0.0, hi=86400.0, read_only=False))
    time_jump_back_s: float = field(default=1.0, metadata=param(
        'A stamp further than this behind the newest accepted one is a time jump (bag loop, '
        'simulation reset, camera driver restart); smaller steps back are rejected as out of '
        'order.', lo=0.0, hi=3600.0, read_only=False))
    on_time_jump_back: str = field(default='new_episode', metadata=param(
        'Reaction to a time jump backwards: new_episode (start over with the same task, as rviz '
        'and tf reset on a jump) or reject (drop frames until time passes the newest accepted '
        'stamp again).', choices=('new_episode', 'reject'), read_only=False))

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class MonitorConfig:
    """Node-level settings of the live monitor (topics, QoS, input guards, status)."""

    task: str = field(default='', metadata=param(
        'Task sentence for the prompt; change it at runtime with the ~/set_task service.'))
    input_type: str = field(default='raw', metadata=param(
        'raw: subscribe to image (sensor_msgs/Image); compressed: image/compressed '
        '(sensor_msgs/CompressedImage).', choices=('raw', 'compressed')))
    qos_reliability: str = field(default='auto', metadata=param(
        'Image subscription reliability: auto matches the camera publisher (reliable when every '
        'publisher offers it: large frames over best effort are lost when fragmented), '
        'best_effort or reliable.', choices=('auto', 'best_effort', 'reliable')))
    input_filter: bool = field(default=True, metadata=param(
        'Ask DDS to drop frames the window will not keep before they are sent (a content '
        'filter on the header stamp, moved forward after each kept frame; Fast DDS on Jazzy '
        'and later). Off, or where unsupported, every frame is delivered and skipped here.'))
    qos_depth: int = field(default=2, metadata=param(
        'Image subscription queue depth (small: only the newest frames matter).', lo=1, hi=100))
    max_image_pixels: int = field(default=16_777_216, metadata=param(
        'Frames with more pixels than this are rejected before decoding (default 4096x4096, '
        'the most the Qwen3-VL processor keeps; larger frames would only be shrunk).', lo=1))
    stale_after_s: float = field(default=5.0, metadata=param(
        'No frame for this long puts the monitor in STALE_INPUT.', lo=0.1, hi=3600.0,
        read_only=False))
    status_period_s: float = field(default=1.0, metadata=param(
        'Period of Progress messages while loading, waiting for frames, stale or in error.',
        lo=0.05, hi=60.0))
    min_inference_period_s: float = field(default=0.0, metadata=param(
        'Minimum time between two inferences; 0 runs as soon as a new window exists.',
        lo=0.0, hi=3600.0, read_only=False))
    publish_model_output: bool = field(default=False, metadata=param(
        'Copy the decoded model answer into Progress.model_output.', read_only=False))
    annotated_image_rate_hz: float = field(default=2.0, metadata=param(
        'Rate of progress/image (newest frame with the progress drawn on it), published only '
        'while subscribed; 0 disables.', lo=0.0, hi=60.0))
    marker_frame_id: str = field(default='base_link', metadata=param(
        'Frame of the progress/marker text and bar in rviz2.'))
    marker_scale: float = field(default=1.0, metadata=param(
        'Size of the rviz2 marker in metres (bar length at 100 %).', lo=0.01, hi=100.0))
    diagnostics_period_s: float = field(default=1.0, metadata=param(
        'Period of /diagnostics messages; 0 disables.', lo=0.0, hi=60.0))
    hil_service: str = field(default='', metadata=param(
        'External HIL manager service called on intervention events; empty disables.'))
    hil_service_type: str = field(default='trigger', metadata=param(
        'trigger (std_srvs/Trigger, called on raise) or set_bool (std_srvs/SetBool, '
        'true on raise, false on clear).', choices=('trigger', 'set_bool')))
    hil_timeout_s: float = field(default=5.0, metadata=param(
        'A HIL call pending longer than this no longer holds back the next one.',
        lo=0.1, hi=600.0))

    def __post_init__(self) -> None:
        validate_fields(self)
