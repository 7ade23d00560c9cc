"""Bounds on what imagic-lora reads and writes, in one place.

The settings (:mod:`imagic_lora.config`) and the profile reader (:mod:`imagic_lora.profile`) both use
these: what training may write lies within what a profile file may hold, so every profile the tool
writes reads back, and a hostile file cannot ask for more.
"""

MAX_RANK = 256
MAX_LORA_ALPHA = 1e6
MIN_RESOLUTION, MAX_RESOLUTION, RESOLUTION_STEP = 16, 4096, 8  # what a profile may hold
MIN_TRAIN_RESOLUTION, MAX_TRAIN_RESOLUTION = 32, 2048  # what training takes: within the above
MAX_STEPS = 1000  # sampling steps, and so the inversion steps a profile may hold
MAX_SAMPLES = 64  # noise samples per training step, seeds per α, images per batch
MAX_SEED = 2**63  # exclusive: torch generators take a signed 64-bit seed
MAX_JSON_DEPTH = 32  # a profile's metadata nests 3 deep; the bound keeps a hostile file from exhausting the stack
MAX_TEXT_FILE_BYTES = 64 * 2**20  # a prompts file or a batch file
MAX_PROMPTS = 10_000  # edit prompts in one --prompts-file
MAX_BATCH_ROWS = 1_000_000
