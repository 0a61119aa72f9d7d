"""Accuracy evaluation of progress models on synthetic episodes (``procvlm-eval``)."""
