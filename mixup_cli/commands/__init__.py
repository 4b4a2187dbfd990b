"""What each command does end to end (augment, a set's part, inspect, lineage, preview, the dataset).

Internal: the public API is ``mixup_cli``'s ``__all__``."""
