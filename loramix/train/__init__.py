"""Training a LoRA: recipe, data, the trainee model, the loop, checkpoints, the loss plot."""
