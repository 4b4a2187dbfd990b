"""What y is: its encoding, string and categorical names, the class of each row.

Internal: the public API is ``mixup_cli``'s ``__all__``."""
