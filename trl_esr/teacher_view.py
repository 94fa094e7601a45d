"""The teacher's view of the prompt: the same response tokens, after a prompt rendered the teacher's way.

A pair can disagree on how a conversation is shown to the model. In the paper's main setup the Qwen3 teacher runs in
non-thinking mode, so it sees the empty `<think>\\n\\n</think>\\n\\n` block before the response that the Qwen2.5-Math
student never writes. Scoring the student's rendering would ask the teacher about text it never produces. With
`ESRConfig.teacher_chat_template` (and/or `teacher_chat_template_kwargs`) the teacher's forward pass gets its own
rendering of the prompt; the response tokens, and so the positions the KL compares, are shared.
"""

import torch
from transformers import PreTrainedTokenizerBase

from .prompts import is_chat, left_pad, render_prompts


TEACHER_TEMPLATE = "teacher"  # `ESRConfig.teacher_chat_template` value: use the teacher tokenizer's own template
_PLAIN_TEXT_PROMPTS = (
    "`teacher_chat_template` / `teacher_chat_template_kwargs` apply to chat prompts (lists of messages), but the "
    "prompts are plain text. Unset them, or give chat prompts."
)


class TeacherPromptRenderer:
    """Render chat prompts for the teacher: `tokenizer`'s chat template (or `chat_template`) plus `template_kwargs`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat_template: str | None, template_kwargs: dict | None):
        self.tokenizer, self.chat_template, self.template_kwargs = tokenizer, chat_template, template_kwargs or {}

    @classmethod
    def from_config(cls, args, pairing, student_tokenizer, train_dataset=None):
        """The renderer `args` and the tokenizer pairing ask for, or `None` when the teacher sees the student's
        rendering (the default for a teacher with the student's tokenizer). A teacher with another tokenizer always
        gets its own rendering: by default its own chat template."""
        aligned = pairing.mode == "aligned"
        template, kwargs = args.teacher_chat_template, args.teacher_chat_template_kwargs
        if not aligned and template is None and kwargs is None:
            return None
        chat_prompts = train_dataset is None or is_chat(next(iter(train_dataset))["prompt"])
        if not aligned and not chat_prompts:
            raise ValueError(_PLAIN_TEXT_PROMPTS)
        if template != TEACHER_TEMPLATE and not (aligned and template is None):  # a template of the user's
            return cls(pairing.teacher_tokenizer if aligned else student_tokenizer, template, kwargs)
        teacher_tokenizer = pairing.teacher_tokenizer
        if teacher_tokenizer is None:
            raise ValueError(
                "`teacher_chat_template='teacher'` needs the teacher's tokenizer, which could not be loaded. Set "
                "`teacher_tokenizer_name_or_path`, or pass the template itself as `teacher_chat_template`."
            )
        if chat_prompts and teacher_tokenizer.chat_template is None:
            raise ValueError(
                f"The teacher's tokenizer `{teacher_tokenizer.name_or_path}` has no chat template to render the chat "
                "prompts with. Pass one as `teacher_chat_template`."
            )
        return cls(teacher_tokenizer, None, kwargs)

    def prompt_ids(self, prompts: list) -> list[list[int]]:
        """The teacher's token ids of each prompt, unpadded. Plain-text prompts (for a teacher with another tokenizer;
        `from_config` refuses them otherwise) are tokenised as TRL tokenises the student's."""
        return render_prompts(self.tokenizer, prompts, chat_template=self.chat_template, **self.template_kwargs)

    def __call__(self, prompts: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded `(ids, mask)` of shape (B, P_teacher) for a batch of prompts (see [`prompt_ids`])."""
        return left_pad(self.prompt_ids(prompts), self.tokenizer.pad_token_id or 0, device)


def teacher_inputs(
    teacher_prompt: tuple[torch.Tensor, torch.Tensor],
    input_ids: torch.Tensor,  # (B, P + C): the student's prompt, then the completion
    attention_mask: torch.Tensor,  # (B, P + C)
    completion_length: int,  # C
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's `(input_ids, attention_mask)`, (B, P_teacher + C): its own prompt, then the shared completion.

    The completion stays last, so the last C hidden states line up with the student's, position by position.
    """
    prompt_ids, prompt_mask = teacher_prompt
    return (
        torch.cat([prompt_ids, input_ids[:, -completion_length:]], dim=1),
        torch.cat([prompt_mask, attention_mask[:, -completion_length:]], dim=1),
    )
