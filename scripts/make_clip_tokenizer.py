"""Write the CLIP BPE tokenizer files that Stable Diffusion 1.x and 2.x use, for offline loading.

The byte-pair vocabulary comes from OpenAI's CLIP (MIT licence), as shipped inside the
``open-clip-torch`` wheel (MIT licence) at ``open_clip/bpe_simple_vocab_16e6.txt.gz``:

    pip download open-clip-torch --no-deps -d /tmp/oc
    python scripts/make_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl

It writes ``vocab.json``, ``merges.txt`` and the tokenizer settings into
``imagic_lora/data/{sd15,sd21}/tokenizer`` and ``imagic_lora/data/sdxl/tokenizer{,_2}``, the layout of the
published tokenizer folders (49 408 tokens; SD 2.x and SDXL's second pad with ``!``, the others with the
end token).
"""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "imagic_lora" / "data"
VOCAB_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 256 bytes, their word-final forms, 2 special tokens
START, END = "<|startoftext|>", "<|endoftext|>"
PAD = {"sd15/tokenizer": END, "sd21/tokenizer": "!", "sdxl/tokenizer": END, "sdxl/tokenizer_2": "!"}


def byte_characters() -> list[str]:
    """GPT-2's printable stand-in for each byte: printable bytes first, then the others (CLIP's order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def read_merges(source: Path) -> list[str]:
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            text = gzip.decompress(wheel.read(VOCAB_MEMBER)).decode("utf-8")
    else:
        text = gzip.decompress(source.read_bytes()).decode("utf-8")
    return text.split("\n")[1 : MERGES + 1]


def vocabulary(merges: list[str]) -> dict[str, int]:
    tokens = byte_characters()
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [START, END]
    return {token: index for index, token in enumerate(tokens)}


def write(folder: Path, vocab: dict[str, int], merges: list[str], pad: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": pad}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    settings = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                "errors": "replace", "add_prefix_space": False, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    merges = read_merges(Path(sys.argv[1]))
    vocab = vocabulary(merges)
    for folder, pad in PAD.items():
        write(DATA / folder, vocab, merges, pad)
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {', '.join(PAD)}")


if __name__ == "__main__":
    main()
