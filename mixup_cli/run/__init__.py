"""The pieces of one run: the opened source, the plan built, checks, the journal, each task's rows.

Internal: the public API is ``mixup_cli``'s ``__all__``."""
