"""
One-shot adaptation to a user's robot: annotate one demonstration, build the official
``qa_pairs.jsonl`` data set, train a LoRA adapter with peft, merge it (``procvlm-adapt``).

Formats and formulas follow the official ``evqa/one-shot`` pipeline (``procvlm-reference.md``
section 5 and ``adaptation-fleet-models.md``); torch and peft are imported inside functions.
"""
