import pytest

from procvlm_ros.core.parsing import (
    extract_progress,
    extract_reasoning_text,
    extract_remaining_actions,
    parse_answer,
)

TRAINED = ('The following actions are required: \n1. pick up the towel\n2. fold it in half\n'
           'Therefore, the estimated progress is <progress>42.50%</progress>.')


@pytest.mark.parametrize(('text', 'expected'), [
    (TRAINED, 42.5),
    ('<progress>84.13%</progress>', 84.13),
    ('<PROGRESS> 7 </Progress>', 7.0),           # case-insensitive, spaces
    ('<progress>+12.5 %</progress>', 12.5),
    ('<progress>140%</progress>', 100.0),        # clamped
    ('<progress>-3</progress>', 0.0),            # clamped
    ('<progress>10%</progress> then <progress>90%</progress>', 10.0),  # first wins
    ('<progress>.5</progress>', None),           # official regex needs a leading digit
    ('<progress>1e3</progress>', None),
    ('<progress>forty</progress>', None),
    ('<progress>50%', None),
    ('progress is 50%', None),
    ('', None),
    (None, None),
    ('<progress>\n55\n</progress>', 55.0),
])
def test_extract_progress_table(text, expected):
    assert extract_progress(text) == expected


def test_reasoning_drops_progress_sentence_and_conclusions():
    assert extract_reasoning_text(TRAINED) == (
        'The following actions are required:\n1. pick up the towel\n2. fold it in half')
    assert extract_reasoning_text('So it is <progress>5%</progress>.') == ''
    assert extract_reasoning_text('Hence done.\nThe cup is up.\nSomething else') == (
        'The cup is up.\nSomething else')


def test_remaining_actions():
    assert extract_remaining_actions(TRAINED) == ['pick up the towel', 'fold it in half']
    assert extract_remaining_actions(
        'Image shows the final result.\nTherefore, <progress>100%</progress>.') == []
    assert extract_remaining_actions('- wipe table\n* dry it\n3) stack') == [
        'wipe table', 'dry it', 'stack']
    # Items after the tag are not remaining actions.
    assert extract_remaining_actions('1. a\n<progress>5%</progress>\n2. b') == ['a']


def test_parse_answer_notes_explain_suspicious_output():
    assert parse_answer(TRAINED).notes == ()
    assert 'no <progress>' in parse_answer('I cannot tell.').notes[0]
    assert 'clamped' in parse_answer('<progress>250%</progress>').notes[0]
    notes = parse_answer('<progress>1%</progress><progress>2%</progress>').notes
    assert any('2 <progress> tags' in n for n in notes)
    assert 'holds no number' in parse_answer('<progress>n/a</progress>').notes[0]
    garbage = parse_answer('\x00<progress><progress>%</progress>' * 1000)
    assert garbage.percent is None
