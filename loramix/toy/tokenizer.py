"""A CLIP tokenizer for the toy base, made offline from the words its captions and LoRAs use.

Stable Diffusion's tokenizer is CLIP's byte-pair encoding: lower-cased words, each ending in `</w>`, merged
into known pieces. The toy base gets the same kind of files (`vocab.json`, `merges.txt`), trained here by
a small byte-pair learner on the caption words, so that every caption word, and every word a LoRA will be
taught (mustache, lipstick, glasses), is a single token, while any other word still splits into letters.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 48  # the longest toy caption, all three attributes, is 33 tokens; SD's CLIP allows 77

# Words users of the toy base are likely to type beside the caption vocabulary.
EXTRA_WORDS = ("a", "an", "the", "of", "and", "photo", "picture", "drawing", "portrait", "person", "man", "woman",
               "cartoon", "face", "faces", "with", "wearing", "mustache", "lipstick", "glasses", "moustache",
               "beard", "hat", "no", "without", "style")


def bpe_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges, learnt until every word is one symbol: each round merges the most frequent pair.

    The `tokenizers` trainer breaks ties between equally frequent pairs differently from run to run, so
    two builds would number the same words differently; ties here go to the alphabetically first pair.
    CLIP applies merges in the order they were learnt, so each word of `words` encodes as one token.
    """
    segmented = [[*word[:-1], word[-1] + "</w>"] for word in words]
    merges = []
    while True:
        counts = Counter(pair for symbols in segmented for pair in zip(symbols, symbols[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        segmented = [_merge(symbols, best) for symbols in segmented]


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(symbols):
        if tuple(symbols[i : i + 2]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def build_tokenizer(words: list[str] | tuple[str, ...], folder: Path):
    """Save a `CLIPTokenizer` to `folder` whose vocabulary holds every byte (so any text encodes) and each of
    `words` as a single token."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocabulary = sorted({w.lower() for w in (*words, *EXTRA_WORDS)})
    merges = bpe_merges(vocabulary)
    alphabet = sorted(ByteLevel.alphabet())  # CLIP maps every byte to one printable character first
    tokens = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(pair) for pair in merges), BOS, EOS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(dict.fromkeys(tokens))}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                              model_max_length=MAX_LENGTH, bos_token=BOS, eos_token=EOS, pad_token=EOS,
                              unk_token=EOS)
    tokenizer.save_pretrained(str(folder))
    return tokenizer
