"""What every room above needs and nothing below it provides: the checkpoint format (safetensors +
JSON metadata) and the runtime (device, precision, threads). ``config``, ``errors``, ``run``,
``parallel`` and ``threads`` sit beside this package at the same level (see
docs/architecture.md)."""
