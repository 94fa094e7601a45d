"""A prompt as the model sees it, rendered one way for the whole package: TRL's.

TRL's trainers turn a batch of prompts into token ids in `_tokenize_prompts`: chat messages (TRL's
`trl.data_utils.is_conversational`) go through the processing class's chat template with the generation prompt
appended, plain text through the tokenizer as it is, special tokens included. ESR's rollouts start from those ids, so
everything else that needs "the prompt the model starts from" must produce the same ones: the trainer's checks (prompt
lengths, whether the teacher's template renders differently), the teacher's own view of the prompt, the diagnostics'
rollouts and the evaluation script. They all call [`render_prompts`]; a change to the rule happens here, once.

[`left_pad`] batches the rendered ids the way TRL pads prompts for generation (to the left, with a mask), through
TRL's `pad` (`_trl_compat.pad`).
"""

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase
from trl.data_utils import is_conversational

from ._trl_compat import pad


def is_chat(prompt) -> bool:
    """Whether `prompt` is a list of chat messages rather than plain text: TRL's test, on one prompt-only row."""
    return is_conversational({"prompt": prompt})


def render_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str | list[dict]],
    tokenize: bool = True,
    chat_template: str | None = None,
    **template_kwargs,
) -> list[list[int]] | list[str]:
    """Each prompt as the model sees it: its token ids, or with `tokenize=False` its text.

    Chat prompts are rendered with `tokenizer`'s chat template (or the Jinja `chat_template`) and the generation
    prompt, `template_kwargs` passed to the template (e.g. `enable_thinking=False`); the template writes the special
    tokens, so none are added. Plain text is tokenised with the tokenizer's special tokens (a BOS where it adds one),
    as TRL does. As in TRL, the first prompt decides for the batch (a dataset column holds one kind).
    """
    prompts = list(prompts)
    if not prompts:
        return []
    if is_chat(prompts[0]):
        rendered = tokenizer.apply_chat_template(
            prompts,
            chat_template=chat_template,
            add_generation_prompt=True,
            tokenize=tokenize,
            return_dict=tokenize,
            **template_kwargs,
        )
        return [list(ids) for ids in rendered["input_ids"]] if tokenize else list(rendered)
    return tokenizer(text=prompts)["input_ids"] if tokenize else prompts


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(ids, mask)`, both (B, P) on `device`: each row of token ids right-aligned after `pad_token_id`s (mask 0), so
    that generation continues every prompt from its last token."""
    tensors = [torch.tensor(list(row), dtype=torch.long) for row in rows]
    ids = pad(tensors, padding_value=pad_token_id, padding_side="left")
    mask = pad([torch.ones_like(row) for row in tensors], padding_value=0, padding_side="left")
    return ids.to(device), mask.to(device)
