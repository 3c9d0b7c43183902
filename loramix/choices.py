"""The fixed choices loramix offers, each spelled once: the command line offers them before any heavy import,
and the library checks against the same tuples. Imports nothing."""

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # the parts of a pipeline a LoRA can change
MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")  # a pipeline's parts that hold weights
QUANTIZE_MODES = ("nf4", "int8", "none")
# LoRA file namings loramix writes. kohya's is the default: A1111, ComfyUI, kohya and diffusers all load it,
# while ComfyUI drops the UNet attention projections of diffusers/peft names.
FORMATS = ("diffusers", "kohya")
DEFAULT_FORMAT = "kohya"
# What `compose` (and the writer) may also write: ΔW whole (LyCORIS 'full'), the exact sum of LoHa/LoKr inputs.
OUTPUT_FORMATS = (*FORMATS, "full-diff")
DTYPES = ("fp32", "fp16", "bf16")
# kohya resize_lora.py's rules for choosing each module's rank from its singular values.
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")

# Methods that turn weighted LoRAs into one LoRA (a file, or a fused update).
PRUNING_MERGES = ("ties", "dare", "dare_ties")  # peft's merges of the full ΔWᵢ: not additive by design
FILE_METHODS = ("exact", "merge-svd", *PRUNING_MERGES)
# Activation-matched fusion: a file method that needs the base, to record each LoRA's layer inputs.
FUSION = "fusion"
# ZipLoRA's learned merger coefficients, from the same recorded inputs.
ZIPLORA = "ziplora"
RECORDED_METHODS = (FUSION, ZIPLORA)
# Methods that keep the LoRAs apart while rendering.
GENERATION_METHODS = ("switch", "composite", "regional")
SEQUENTIAL = "sequential"
RENDER_METHODS = (*FILE_METHODS, *GENERATION_METHODS, SEQUENTIAL)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # images Pillow reads
MASK_SUFFIX = ".mask.png"  # a training image's mask beside it: 0000.mask.png for 0000.png
