"""
Turn a model answer into a progress percentage, remaining actions and reasoning text.

``extract_progress`` and ``extract_reasoning_text`` follow the official ``evqa/inference.py``
exactly (first tag wins, clamped to [0, 100], percentage scale). ``parse_answer`` adds what a
supervisor needs on top: the remaining actions and notes about anything suspicious.
"""

from __future__ import annotations

from dataclasses import dataclass
import re

PROGRESS_PATTERN = re.compile(
    r'<progress>\s*([+-]?\d+(?:\.\d+)?)\s*%?\s*</progress>', re.IGNORECASE)
_PROGRESS_SENTENCE = re.compile(
    r'[^.\n]*<progress>\s*[+-]?\d+(?:\.\d+)?\s*%?\s*</progress>[^.\n]*\.?', re.IGNORECASE)
_CONCLUSION_LINE = re.compile(r'^(therefore|thus|hence|so)\b', re.IGNORECASE)
# "1. pick up the cup", "2) place it", "- wipe", "* wipe", "• wipe"
_ACTION_ITEM = re.compile(r'^\s*(?:\d+\s*[.)]|[-*\u2022])\s+(\S.*?)\s*$')
_ANY_TAG = re.compile(r'<progress>(.*?)</progress>', re.IGNORECASE | re.DOTALL)


def extract_progress(text: str | None) -> float | None:
    """Return the first tagged number clamped to [0, 100], or None (official behaviour)."""
    match = PROGRESS_PATTERN.search(text or '')
    if not match:
        return None
    try:
        value = float(match.group(1))
    except ValueError:
        return None
    return float(max(0.0, min(100.0, value)))


def extract_reasoning_text(answer: str | None) -> str:
    """Drop the progress sentence and 'Therefore/Thus/Hence/So' lines (official behaviour)."""
    if not answer:
        return ''
    raw = _PROGRESS_SENTENCE.sub('', str(answer).strip())
    lines = (line.strip() for line in raw.splitlines())
    return '\n'.join(line for line in lines if line and not _CONCLUSION_LINE.match(line)).strip()


def extract_remaining_actions(answer: str | None) -> list[str]:
    """
    Return the numbered or bulleted actions listed before the progress sentence.

    The trained format is ``The following actions are required: \\n1. ...\\n2. ...\\n
    Therefore, ... <progress>XX%</progress>.``; a finished task lists none.
    """
    if not answer:
        return []
    head = answer
    tag = _ANY_TAG.search(answer)
    if tag:
        head = answer[:tag.start()]
    actions = []
    for line in head.splitlines():
        match = _ACTION_ITEM.match(line)
        if match:
            actions.append(match.group(1))
    return actions


@dataclass(frozen=True)
class ParsedAnswer:
    """Everything read from one answer; ``notes`` explains anything suspicious."""

    percent: float | None
    remaining_actions: tuple[str, ...]
    reasoning: str
    notes: tuple[str, ...]


def parse_answer(answer: str | None) -> ParsedAnswer:
    """Parse an answer; never raises, whatever the model wrote."""
    text = answer or ''
    percent = extract_progress(text)
    notes = []
    tags = _ANY_TAG.findall(text)
    if not tags:
        notes.append('no <progress>...</progress> tag in the model output')
    elif percent is None:
        notes.append(f'<progress> tag holds no number: {tags[0].strip()[:40]!r}')
    else:
        raw = float(PROGRESS_PATTERN.search(text).group(1))  # type: ignore[union-attr]
        if raw != percent:
            notes.append(f'progress {raw:g}% outside [0, 100]; clamped to {percent:g}%')
    if len(tags) > 1:
        notes.append(f'{len(tags)} <progress> tags in the output; the first one is used')
    return ParsedAnswer(percent=percent, remaining_actions=tuple(extract_remaining_actions(text)),
                        reasoning=extract_reasoning_text(text), notes=tuple(notes))
