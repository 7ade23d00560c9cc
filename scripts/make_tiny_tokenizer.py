"""Write the built-in model's character-level CLIP tokenizer files (package data).

Every printable ASCII character is a token, alone and as a word ending (``c</w>``);
a few merges turn the most common English letter pairs into single tokens.
Run from the repository root: ``python scripts/make_tiny_tokenizer.py``.
"""

import json
import string
from pathlib import Path

OUT = Path("imagic_lora/data/tiny-tokenizer")
CHARS = string.ascii_lowercase + string.digits + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
MERGES = ["t h", "h e", "i n", "e r", "a n", "o n", "r e", "o u"]


def main() -> None:
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    tokens += [c for c in CHARS] + [c + "</w>" for c in CHARS]
    tokens += [m.replace(" ", "") for m in MERGES]
    vocab = {token: i for i, token in enumerate(tokens)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, indent=0) + "\n")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    print(f"wrote {len(vocab)} tokens to {OUT}")


if __name__ == "__main__":
    main()
