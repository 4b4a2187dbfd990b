"""What a run records besides its arrays: the sidecar, the arrays' digests, the atomic commit.

Internal: the public API is ``mixup_cli``'s ``__all__``."""
