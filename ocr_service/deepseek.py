"""The DeepSeek-OCR vocabulary: prompts, special tokens, the grounding grid and the n-gram rule.

Everything the service knows about how DeepSeek-OCR and DeepSeek-OCR-2 talk lives
here, so the engines, the output parser and the tiny-model builder agree on it. This
module imports nothing of the service's own.

Facts, from DeepSeek's model cards and vLLM's DeepSeek-OCR recipe:
- a prompt holds one `<image>` placeholder, then the instruction, as plain text (no
  chat template);
- with `<|grounding|>` the model writes `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>`
  before each block, with boxes on a 0..999 grid of the page;
- the sentence markers use full-width bars and U+2581, and BOS, EOS and PAD have ids
  0, 1 and 2;
- the no-repeat n-gram guard bans a token that would repeat an n-gram of the recent
  window, except `<td>` and `</td>` (ids 128821 and 128822), so tables may repeat cells.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

IMAGE_TAG = "<image>"
GROUNDING_TAG = "<|grounding|>"
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
REF_OPEN, REF_CLOSE, DET_OPEN, DET_CLOSE = "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"
TABLE_CELL_TOKENS = ("<td>", "</td>")

# Special tokens the model may leave in its text when special tokens are not skipped
# (the vLLM recipe keeps them, because the grounding tags are special tokens). ASCII
# bars are accepted beside the full-width ones.
SPECIAL_TOKENS = (
    REF_OPEN,
    REF_CLOSE,
    DET_OPEN,
    DET_CLOSE,
    GROUNDING_TAG,
    EOS,
    BOS,
    "<|end▁of▁sentence|>",
    "<|begin▁of▁sentence|>",
    PAD,
)

GRID = 999  # grounding boxes are on a 0..999 grid in both directions

# The prompts DeepSeek documents, by the name a user picks them with.
PROMPTS = {
    "markdown": f"{IMAGE_TAG}\n{GROUNDING_TAG}Convert the document to markdown.",
    "free": f"{IMAGE_TAG}\nFree OCR.",
    "ocr": f"{IMAGE_TAG}\n{GROUNDING_TAG}OCR this image.",
    "figure": f"{IMAGE_TAG}\nParse the figure.",
    "describe": f"{IMAGE_TAG}\nDescribe this image in detail.",
    "locate": f"{IMAGE_TAG}\nLocate {REF_OPEN}TEXT{REF_CLOSE} in the image.",
}
DEFAULT_PROMPT = PROMPTS["markdown"]

# A model folder written by `ocr_service.tiny_model` without a checkpoint holds this
# file: the engines then initialise random weights themselves.
RANDOM_WEIGHTS_MARKER = "random_weights.json"


def with_image_tag(prompt: str) -> str:
    """Put the `<image>` placeholder first where a prompt lacks it.

    >>> with_image_tag("Free OCR.")
    '<image>\\nFree OCR.'
    """
    return prompt if IMAGE_TAG in prompt else f"{IMAGE_TAG}\n{prompt}"


def without_image_tag(prompt: str) -> str:
    """The prompt's text alone, for `vllm serve`'s chat API, which places the image itself.

    vLLM's chat template for DeepSeek-OCR renders an image part and a text part as
    `<image>`, a newline and the text, so this inverts `with_image_tag`.

    >>> without_image_tag("<image>\\n<|grounding|>OCR this image.")
    '<|grounding|>OCR this image.'
    """
    return prompt.replace(IMAGE_TAG, "").removeprefix("\n")


def uses_random_weights(model_path: str) -> bool:
    """Whether `model_path` is a folder without a checkpoint (see RANDOM_WEIGHTS_MARKER)."""
    return (Path(model_path) / RANDOM_WEIGHTS_MARKER).is_file()


def banned_ngram_tokens(
    output_ids: Sequence[int],
    ngram_size: int,
    window_size: int,
    whitelist: Collection[int] = (),
) -> set[int]:
    """Tokens that would repeat an n-gram already generated in the recent window.

    The rule of vLLM's `NoRepeatNGramLogitsProcessor` for DeepSeek-OCR: look at the
    last `window_size` generated tokens; for every n-gram there whose first n-1 tokens
    equal the last n-1 tokens generated, its last token is banned, unless whitelisted.
    Only generated tokens count, never the prompt.

    >>> sorted(banned_ngram_tokens([1, 2, 3, 1, 2], ngram_size=3, window_size=90))
    [3]
    """
    length = len(output_ids)
    if ngram_size < 1 or length < ngram_size:
        return set()
    prefix = tuple(output_ids[length - (ngram_size - 1) :]) if ngram_size > 1 else ()
    start = max(0, length - window_size)
    banned: set[int] = set()
    for i in range(start, length - ngram_size + 1):
        if tuple(output_ids[i : i + ngram_size - 1]) == prefix:
            banned.add(output_ids[i + ngram_size - 1])
    return banned.difference(whitelist)


def repeated_ngrams(
    output_ids: Sequence[int],
    ngram_size: int,
    window_size: int,
    whitelist: Collection[int] = (),
) -> int:
    """How many tokens of `output_ids` the n-gram guard would have banned when they came.

    Each such token completes an n-gram already generated in the window before it. An
    output the guard shaped has none; a looping output without the guard has about one
    per token.

    >>> repeated_ngrams([7, 8, 7, 8, 7, 8], ngram_size=2, window_size=90)
    3
    """
    return sum(
        1
        for end in range(len(output_ids))
        if output_ids[end] in banned_ngram_tokens(output_ids[:end], ngram_size, window_size, whitelist)
    )
