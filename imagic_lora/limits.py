"""Bounds on what imagic-lora reads: profile bounds are shared by the writer (the settings) and the reader."""

MAX_RANK = 256
MAX_LORA_ALPHA = 1e6
MIN_RESOLUTION, MAX_RESOLUTION, RESOLUTION_STEP = 16, 4096, 8
MAX_SEED = 2**63  # exclusive: torch generators take a signed 64-bit seed
MAX_JSON_DEPTH = 32  # a profile's metadata nests 3 deep; the bound keeps a hostile file from exhausting the stack
MAX_TEXT_FILE_BYTES = 64 * 2**20  # a prompts file or a batch file
MAX_PROMPTS = 10_000  # edit prompts in one --prompts-file
MAX_BATCH_ROWS = 1_000_000
