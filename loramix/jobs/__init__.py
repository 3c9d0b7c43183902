"""File → file jobs over the LoRA maths: bake LoRAs into a checkpoint, extract one from two checkpoints,
write a composition, report what a file holds."""
