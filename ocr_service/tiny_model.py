"""Build a DeepSeek-OCR or DeepSeek-OCR-2 model folder offline, with random weights.

No model hub is reachable from CI or from many deployments, yet the engines' loading
code should be proven for real. This writes what a checkpoint folder holds (config,
tokenizer, and weights where cheap) so either engine can load it:

    python -m ocr_service.tiny_model --arch deepseek-ocr --out /tmp/tiny-ocr
    python -m ocr_service.tiny_model --arch deepseek-ocr2 --out /tmp/tiny-ocr2
    python -m ocr_service.tiny_model --arch deepseek-ocr2 --full-size --out /tmp/ocr2

`deepseek-ocr` is in the original checkpoint's layout (`deepseek_vl_v2`, read by
vLLM's `DeepseekOCRForCausalLM`); `deepseek-ocr2` is in transformers' native
`deepseek_ocr2` layout. `--full-size` keeps the published dimensions (for GPU
benchmarks). Where no weights are written, `random_weights.json` in the folder tells
the engines to initialise random weights themselves (vLLM's `load_format="dummy"`;
transformers' `from_config`). The output is nonsense text, but every step a real
page takes is exercised.

The config builders are plain dictionaries, testable without torch; writing the
tokenizer needs `tokenizers`, writing weights needs `torch` and `transformers`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Literal

from ocr_service.deepseek import (
    BOS,
    DET_CLOSE,
    DET_OPEN,
    EOS,
    GROUNDING_TAG,
    IMAGE_TAG,
    PAD,
    RANDOM_WEIGHTS_MARKER,
    REF_CLOSE,
    REF_OPEN,
    TABLE_CELL_TOKENS,
)

Arch = Literal["deepseek-ocr", "deepseek-ocr2"]

# Tokens the DeepSeek processors and prompts need, plus the table cells the n-gram
# guard whitelists. BOS, EOS and PAD take ids 0, 1, 2, as in the real tokenizer's
# config (bos_token_id 0, eos_token_id 1).
SPECIAL_TOKENS = (
    BOS,
    EOS,
    PAD,
    IMAGE_TAG,
    GROUNDING_TAG,
    REF_OPEN,
    REF_CLOSE,
    DET_OPEN,
    DET_CLOSE,
    *TABLE_CELL_TOKENS,
    "<|User|>",
    "<|Assistant|>",
)
BYTE_TOKENS = 256  # byte-level alphabet: every string encodes, no merges needed
TINY_VOCAB_SIZE = 384  # room for the bytes and specials, rounded up
FULL_VOCAB_SIZE = 129280  # DeepSeek-OCR and OCR-2 (published config.json)


def _language_config(full_size: bool, vocab_size: int) -> dict[str, Any]:
    """The DeepSeek-V2 MoE decoder, shared by OCR and OCR-2.

    Full size: the published 3B MoE (hidden 1280, 12 layers, 10 heads, 64 routed
    experts of which 6 are active, 2 shared, first layer dense, plain attention, no
    MLA). Tiny: the same shape of things in miniature; 2 heads of 32 because vLLM's
    CPU attention backend only takes head sizes 32, 64, 80 and up.
    """
    names = ("hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "n_routed_experts", "num_experts_per_tok", "n_shared_experts")  # fmt: skip
    full = (1280, 6848, 896, 12, 10, 10, 64, 6, 2)
    tiny = (64, 128, 32, 2, 2, 2, 4, 2, 1)
    dims = dict(zip(names, full if full_size else tiny, strict=True))
    return {
        **dims,
        "vocab_size": vocab_size,
        "max_position_embeddings": 8192,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "greedy",
        "rms_norm_eps": 1e-6,
    }


def deepseek_ocr_config(full_size: bool = False) -> dict[str, Any]:
    """config.json for DeepSeek-OCR in the original `deepseek_vl_v2` layout.

    vLLM builds the vision towers (SAM ViT-B, CLIP-L) from constants in code, so
    they are full size whatever this says (~400M parameters); only the decoder and
    the projector follow the config.
    """
    vocab_size = FULL_VOCAB_SIZE if full_size else TINY_VOCAB_SIZE
    language = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        **_language_config(full_size, vocab_size),
        # Plain multi-head attention, as the real model: no MLA.
        "use_mla": False,
        "q_lora_rank": None,
        "kv_lora_rank": None,
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "v_head_dim": 0,
    }
    return {
        "architectures": ["DeepseekOCRForCausalLM"],
        "model_type": "deepseek_vl_v2",
        "tile_tag": "2D",
        "global_view_pos": "head",
        "candidate_resolutions": [[1024, 1024]],
        "projector_config": {
            "model_type": "mlp_projector",
            "projector_type": "linear",
            "input_dim": 2048,  # CLIP-L (1024) and SAM (1024) features side by side
            "n_embed": language["hidden_size"],
        },
        "vision_config": {
            "model_type": "vision",
            "model_name": "deeplip_b_l",
            "image_size": 1024,
        },
        "language_config": language,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "vocab_size": vocab_size,
        "torch_dtype": "bfloat16",
    }


def deepseek_ocr2_config(image_token_id: int, full_size: bool = False) -> dict[str, Any]:
    """config.json for DeepSeek-OCR-2 in transformers' native `deepseek_ocr2` layout.

    Full size follows transformers' conversion script for the published checkpoint
    (models/deepseek_ocr2/convert_deepseek_ocr2_weights_to_hf.py): SAM ViT-B (768
    wide, 12 layers, 12 heads) and a Qwen2-0.5B encoder (896 wide, 24 layers, 14
    heads, 2 KV heads). The tiny version keeps SAM's 16 px patches and its 4x
    downsampling neck, because the processor counts image tokens from them
    (1024 px -> 16x16 queries, 768 px tiles -> 12x12), but shrinks every width.
    """
    vocab_size = FULL_VOCAB_SIZE if full_size else TINY_VOCAB_SIZE
    language = _language_config(full_size, vocab_size)
    layers = language["num_hidden_layers"]
    text = {**language, "mlp_layer_types": ["dense"] + ["sparse"] * (layers - 1)}
    sam: dict[str, Any]
    encoder: dict[str, Any]
    if full_size:
        sam = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12}
        sam.update(global_attn_indexes=[2, 5, 8, 11], downsample_channels=[512, 896])
        encoder = {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "intermediate_size": 4864}
    else:
        sam = {"hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
        sam.update(global_attn_indexes=[1], downsample_channels=[32, 64])
        encoder = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
    encoder.update(num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0, vocab_size=1)
    return {
        "architectures": ["DeepseekOcr2ForConditionalGeneration"],
        "model_type": "deepseek_ocr2",
        "image_token_id": image_token_id,
        "vision_config": {"sam_config": sam, "encoder_config": encoder},
        "text_config": text,
        "torch_dtype": "bfloat16",
    }


def token_ids() -> dict[str, int]:
    """The id each special token gets in the tokenizer `write_tokenizer` builds."""
    first_three = {BOS: 0, EOS: 1, PAD: 2}
    rest = [t for t in SPECIAL_TOKENS if t not in first_three]
    return {**first_three, **{t: 3 + BYTE_TOKENS + i for i, t in enumerate(rest)}}


def write_tokenizer(out: Path, arch: Arch) -> None:
    """A byte-level BPE tokenizer with no merges and DeepSeek's special tokens.

    Built with `tokenizers` alone, offline. Every byte is a token, so any text
    (Chinese included) round-trips; a BOS is prepended as the real tokenizer does.
    """
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    ids = token_ids()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {BOS: 0, EOS: 1, PAD: 2}
    vocab.update({char: 3 + i for i, char in enumerate(sorted(alphabet))})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    added = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    tokenizer.add_special_tokens(added)
    assert all(tokenizer.token_to_id(t) == i for t, i in ids.items()), "special token ids moved"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, 0)]
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": 8192,
        "padding_side": "left",  # batched generation pads on the left
        "clean_up_tokenization_spaces": False,
    }
    if arch == "deepseek-ocr2":
        config["image_token"] = "<image>"
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False))


def write_model(arch: Arch, out: Path, full_size: bool = False, weights: bool | None = None) -> Path:
    """Write a complete model folder for `arch` into `out` and return it.

    `weights`: write a safetensors checkpoint (default: only for a tiny OCR-2, the
    one case where transformers' `from_pretrained` path can be exercised cheaply).
    Otherwise the folder gets the random-weights marker instead.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out, arch)
    ids = token_ids()
    if arch == "deepseek-ocr":
        config = deepseek_ocr_config(full_size)
        write_weights = False  # vLLM builds random weights itself (load_format="dummy")
    else:
        config = deepseek_ocr2_config(ids["<image>"], full_size)
        write_weights = (not full_size) if weights is None else weights
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if arch == "deepseek-ocr2":
        _write_ocr2_processor(out)
        if write_weights:
            _write_ocr2_weights(out)
    marker = out / RANDOM_WEIGHTS_MARKER
    if write_weights:
        marker.unlink(missing_ok=True)
    else:
        marker.write_text(json.dumps({"arch": arch, "full_size": full_size}) + "\n")
    return out


def _write_ocr2_processor(out: Path) -> None:
    """Processor files, so `AutoProcessor.from_pretrained(out)` works offline."""
    from ocr_service.engines.torch_support import import_torchvision

    import_torchvision()  # the image processor needs it; see torch_support
    from transformers import (
        DeepseekOcr2ImageProcessor,
        DeepseekOcr2Processor,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out))
    processor = DeepseekOcr2Processor(image_processor=DeepseekOcr2ImageProcessor(), tokenizer=tokenizer)
    processor.save_pretrained(str(out))


def _write_ocr2_weights(out: Path) -> None:
    """Random weights in a safetensors checkpoint (small unless `--full-size`)."""
    import torch
    from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

    torch.manual_seed(0)
    config = DeepseekOcr2Config.from_pretrained(str(out))
    model = DeepseekOcr2ForConditionalGeneration(config)
    model.save_pretrained(str(out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ocr_service.tiny_model", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=["deepseek-ocr", "deepseek-ocr2"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    parser.add_argument("--full-size", action="store_true", help="published dimensions instead of tiny ones")
    parser.add_argument(
        "--weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deepseek-ocr2 only: write a safetensors checkpoint (default: yes when tiny, no at full size)",
    )
    args = parser.parse_args(argv)
    try:
        out = write_model(args.arch, args.out, full_size=args.full_size, weights=args.weights)
    except ModuleNotFoundError as exc:
        parser.exit(
            2,
            f"{parser.prog}: needs {exc.name}, which the service's own install leaves out; install "
            "requirements_models.txt (or run it in the models virtualenv that .ci/models.sh builds)\n",
        )
    print(f"wrote {args.arch}{' (full size)' if args.full_size else ''} to {out}")


if __name__ == "__main__":
    main()
