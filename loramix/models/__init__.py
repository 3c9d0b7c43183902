"""Bases as live diffusers pipelines: loading, shapes, quantization, LoRAs on them."""
