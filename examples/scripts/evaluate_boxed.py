"""
MATH-500 avg@n / pass@n with the answer read from `\\boxed{}` (logic in `trl_esr/evaluation.py`).

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

# re-score saved responses (one JSON object per line: {"answer": "...", "responses": ["...", ...]})
python examples/scripts/evaluate_boxed.py --responses_file math500_samples.jsonl --answer_from first
```

`--output_file` is written batch by batch: after a crash or Ctrl-C it holds every finished problem (the last line
printed says how many), and `--responses_file` scores them.
"""

import sys

from trl_esr.evaluation import main


if __name__ == "__main__":
    sys.exit(main())
