"""Rendering images: settings and the one render loop, PNG text and grids, prompt files, generate, edit,
multi-LoRA methods and XY grids."""
