"""Bounds shared by the writer (the settings) and the reader (profile files): what one writes, the other reads."""

MAX_RANK = 256
MAX_LORA_ALPHA = 1e6
MIN_RESOLUTION, MAX_RESOLUTION, RESOLUTION_STEP = 16, 4096, 8
MAX_SEED = 2**63  # exclusive: torch generators take a signed 64-bit seed
MAX_JSON_DEPTH = 32  # a profile's metadata nests 3 deep; the bound keeps a hostile file from exhausting the stack
