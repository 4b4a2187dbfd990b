"""The bottom layer: array math, errors, the stop token, names beside OUT, the CPU budget.

Internal: the public API is ``mixup_cli``'s ``__all__``."""
