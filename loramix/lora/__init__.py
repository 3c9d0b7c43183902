"""The LoRA maths, with no file or model in sight: the in-memory LoRA and LyCORIS modules, composition, rank
resize and extraction, block weights, step schedules and the weight specs users write (`a.safetensors:0.7`).

Everything here takes and returns tensors and dataclasses; reading and writing files is loramix.formats',
applying to a pipeline loramix.models'.
"""
