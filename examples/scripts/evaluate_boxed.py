# /// script
# dependencies = [
#     "trl-esr",
# ]
# ///

"""
MATH-500 avg@n / pass@n with the answer read from `\\boxed{}`. The logic lives in `trl_esr/scripts/evaluate_boxed.py`
(also run as `trl-esr evaluate`; the scoring itself is `trl_esr.evaluation`); every option of `EvaluateArguments` and
TRL's `ModelConfig` is accepted, and `--config` reads them from a YAML file.

```bash
# the paper's protocol: 4 samples per problem at T = 0.7, top-p 0.95
python examples/scripts/evaluate_boxed.py \
    --model_name_or_path Qwen2.5-Math-1.5B-ESR-LoRA \
    --dataset_name HuggingFaceH4/MATH-500 \
    --n 4 \
    --temperature 0.7 \
    --dtype bfloat16 \
    --output_file math500_samples.jsonl

# the same with vLLM (install it first; merge a LoRA adapter into its base model before, vLLM loads full models)
python examples/scripts/evaluate_boxed.py --model_name_or_path merged-model --use_vllm

# greedy, one response per problem, prompts rendered as a Qwen3 student was trained (non-thinking)
python examples/scripts/evaluate_boxed.py --model_name_or_path my-qwen3-student --n 1 --temperature 0 \
    --chat_template_kwargs '{"enable_thinking": false}'

# re-score saved responses (one JSON object per line: {"answer": "...", "responses": ["...", ...]})
python examples/scripts/evaluate_boxed.py --responses_file math500_samples.jsonl --answer_from first
```

`--output_file` is written batch by batch: after a crash or Ctrl-C it holds every finished problem (the last line
printed says how many), and `--responses_file` scores them.
"""

import sys

from trl_esr.scripts.evaluate_boxed import main


if __name__ == "__main__":
    sys.exit(main())
