"""The plan (keyed randomness, blocks, tasks), the pairings' indexes and the mixing itself.

Internal: the public API is ``mixup_cli``'s ``__all__``."""
