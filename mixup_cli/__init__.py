"""mixup-cli: apply mixup to datasets on disk, streaming, seeded, with provenance."""

__version__ = "0.1.0"
