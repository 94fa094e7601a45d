"""Checks on a real vLLM engine shared by the tests of this folder: what the engine computes against the HF model it
serves."""

import torch
from helpers import question_prompts
from vllm import SamplingParams

from trl_esr import ESRDistillTrainer


def pair_trainer(paths, student_tokenizer, teacher_tokenizer, args, mode: str) -> ESRDistillTrainer:
    """A trainer of a saved student/teacher pair (`helpers.tiny_pair`) with their own tokenizers on the four question
    prompts, its pairing mode (`"same"`, `"aligned"`, ...) checked."""
    trainer = ESRDistillTrainer(
        model=paths["student"], teacher_model=paths["teacher"], args=args, train_dataset=question_prompts(),
        processing_class=student_tokenizer, teacher_processing_class=teacher_tokenizer,
    )  # fmt: skip
    assert trainer._pairing.mode == mode
    return trainer


def greedy(trainer, prompts: list[list[int]], eos: int, steps: int = 12):
    """Greedy continuations of `prompts` by the engine and by HF `generate`, with each engine token's logprob, the HF
    model's logprob of the same token after the same prefix, and the HF model's best logprob there (all over the
    vocabulary without EOS)."""
    never_eos = [i for i in range(trainer.model.config.vocab_size) if i != eos]
    params = SamplingParams(temperature=0.0, max_tokens=steps, allowed_token_ids=never_eos, logprobs=0)
    outputs = trainer.vllm_generation.llm.generate(
        [{"prompt_token_ids": ids} for ids in prompts], sampling_params=params, use_tqdm=False
    )
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    results = []
    for ids, output in zip(prompts, outputs, strict=True):
        engine_tokens = list(output.outputs[0].token_ids)
        engine_logprobs = [
            step[token].logprob for step, token in zip(output.outputs[0].logprobs, engine_tokens, strict=True)
        ]
        with torch.no_grad():
            hf = model.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=steps, suppress_tokens=[eos], eos_token_id=None
            )[0, len(ids) :]
            logits = model(torch.tensor([ids + engine_tokens])).logits[0, len(ids) - 1 : -1].float()  # (steps, V)
        logits[:, eos] = float("-inf")
        hf_all = torch.log_softmax(logits, dim=-1)
        hf_logprobs = hf_all.gather(1, torch.tensor(engine_tokens)[:, None])[:, 0]
        results.append((engine_tokens, hf.tolist(), torch.tensor(engine_logprobs), hf_logprobs, hf_all.max(-1).values))
    return results
