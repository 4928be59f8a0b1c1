"""`mobius prompts`: encode prompts once into a prompt embeddings file (model/prompt_io.py).

A board that runs the onnxruntime path without torch cannot encode new prompts; it can read them from
this file (`--prompt-embeddings` on infer / gst / eval-video / bag eval, the node's `prompt_embeddings`
parameter). Encode on any machine with the `train` extra, copy the file over:

    mobius prompts --out my_prompts.safetensors "forklift" "person" "pallet"

The runtime takes any subset of the file's prompts, in any order, with the same inputs as encoding
that subset directly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="+", help="text prompts, one argument each (quote multi-word prompts)")
    parser.add_argument("--out", required=True, help="file to write (.safetensors)")
    parser.add_argument("--preset", default="mobius_nano",
                        help="model preset whose text.max_tokens the prompts are encoded with (default mobius_nano)")


def run(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_model_config
    from ..model.prompt_io import validate_prompts

    out = Path(args.out)
    try:
        if out.suffix != ".safetensors":
            raise ValueError(f"--out '{out}' must end in .safetensors")
        if not out.parent.is_dir():
            raise ValueError(f"--out folder '{out.parent}' does not exist")
        prompts = validate_prompts(args.prompts)
        if len(set(prompts)) != len(prompts):
            raise ValueError(f"prompts {prompts} repeat one; give each once")
        max_tokens = load_model_config(args.preset).text.max_tokens
    except (ValueError, FileNotFoundError, ConfigError) as error:
        print(f"mobius prompts: {error}", file=sys.stderr)
        return 2
    from ..model.text_encoder import MiniLMTextEncoder, save_prompt_embeddings

    encoded = MiniLMTextEncoder(max_tokens=max_tokens).encode(prompts)
    save_prompt_embeddings(out, prompts, encoded)
    tokens = encoded.mask.sum(dim=1).tolist()
    print(f"[prompts] {len(prompts)} prompts ({min(tokens)}-{max(tokens)} tokens, max_tokens {max_tokens}) -> {out}")
    return 0
