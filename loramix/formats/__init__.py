"""LoRA files in the ecosystem's namings: `read` turns any of them into one `LoraAdapter`, `write` writes one back.

This package is the only place in loramix that knows key names.
"""
