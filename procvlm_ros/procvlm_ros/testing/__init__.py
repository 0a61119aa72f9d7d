"""Test and demo fixtures (tiny random checkpoints); never used by the node at run time."""
