"""Sampling settings that mean the same whatever a checkpoint's `generation_config.json` says.

transformers' `generate` fills every setting a `GenerationConfig` (or keyword) leaves unset from the model's own
`generation_config.json`, then from its global defaults (`top_k=50`). A Qwen2.5-Instruct checkpoint ships
`repetition_penalty=1.05`, `top_k=20`: sampled "at temperature 0.7, top-p 0.95" without more, it is sampled with those
too, and a greedy probe of it penalises repetition. The paper samples with temperature and top-p only, and TRL's
training rollouts pass `top_k`, `repetition_penalty` and the other knobs explicitly. Every rollout trl_esr samples
outside TRL's loop (the diagnostics, the demo's probe, `trl-esr evaluate`) takes its settings from here, so that what
the docs say is what `generate` does.
"""

# Every logits processor or warper that `generate` would take from the checkpoint when unset, set to its no-op.
_NEUTRAL = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, top_k=0, min_p=0.0, typical_p=1.0,
                epsilon_cutoff=0.0, eta_cutoff=0.0)  # fmt: skip


def plain_sampling(temperature: float, top_p: float) -> dict:
    """`GenerationConfig` / `generate` keyword arguments for sampling at `temperature` with `top_p` and nothing else
    (greedy when `temperature` is 0)."""
    if temperature == 0:
        return greedy()
    return dict(do_sample=True, temperature=temperature, top_p=top_p, **_NEUTRAL)


def greedy() -> dict:
    """Keyword arguments for greedy decoding with no penalty (the sampling knobs unset: `generate` would warn that
    they are ignored)."""
    return dict(do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=0)
