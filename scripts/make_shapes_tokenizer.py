"""Write the shapes model's CLIP tokenizer (package data): every caption word is one token.

Characters stay in the vocabulary, so any other word still tokenizes, one piece per letter.
Run from the repository root: ``python scripts/make_shapes_tokenizer.py``.
"""

import itertools
import json
import string
from pathlib import Path

from imagic_lora.shapes.world import vocabulary

OUT = Path("imagic_lora/data/shapes/tokenizer")
CHARS = string.ascii_lowercase + string.digits + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that join ``word``'s characters into ``word</w>``."""
    pieces = [*list(word[:-1]), word[-1] + "</w>"]
    merges = []
    while len(pieces) > 1:
        merges.append((pieces[0], pieces[1]))
        pieces = [pieces[0] + pieces[1], *pieces[2:]]
    return merges


def bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: repeatedly merge the lowest-ranked adjacent pair."""
    pieces = [*list(word[:-1]), word[-1] + "</w>"]
    while True:
        pairs = [(ranks.get(pair, 1 << 30), i) for i, pair in enumerate(itertools.pairwise(pieces))]
        rank, i = min(pairs, default=(1 << 30, -1))
        if rank == 1 << 30:
            return pieces
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]


def ordered_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges ordered so that every word becomes one token: a word that splits moves its chain first."""
    order = list(words)
    for _ in range(len(words) ** 2):
        merges: list[tuple[str, str]] = []
        for word in order:
            merges += [m for m in word_merges(word) if m not in merges]
        ranks = {merge: i for i, merge in enumerate(merges)}
        split = [word for word in order if len(bpe(word, ranks)) > 1]
        if not split:
            return merges
        order = split + [word for word in order if word not in split]
    raise RuntimeError(f"no merge order makes these single tokens: {split}")


def main() -> None:
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(CHARS) + [c + "</w>" for c in CHARS]
    merges = ordered_merges(vocabulary())
    for left, right in merges:
        if left + right not in tokens:
            tokens.append(left + right)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, indent=0) + "\n")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    print(f"wrote {len(tokens)} tokens, {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main()
