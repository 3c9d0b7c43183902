"""loramix: train, compose and render Stable Diffusion LoRAs."""

__version__ = "0.1.0"
