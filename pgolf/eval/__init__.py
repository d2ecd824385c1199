"""Evaluation: the exact scoring rule and the scoring of a model on the validation stream."""
