# /// script
# dependencies = [
#     "trl-esr",
#     "peft",
# ]
# ///

"""
On-policy distillation with Early Stopping Rollout. The logic lives in `trl_esr/scripts/esr_distill.py` (also run as
`trl-esr train`); every option of `ESRConfig`, TRL's `ModelConfig` and `ESRScriptArguments` is accepted, and `--config`
reads them from a YAML file (see `examples/configs/`).

# Full training
```bash
python examples/scripts/esr_distill.py \
    --model_name_or_path Qwen/Qwen2.5-Math-1.5B \
    --teacher_model_name_or_path Qwen/Qwen3-1.7B \
    --dataset_name AI-MO/NuminaMath-CoT \
    --dataset_train_split "train[:3200]" \
    --prompt_column problem \
    --system_prompt "Please reason step by step, and put your final answer within \\boxed{}." \
    --teacher_chat_template teacher \
    --teacher_chat_template_kwargs '{"enable_thinking": false}' \
    --esr_k 100 \
    --learning_rate 5.0e-6 \
    --per_device_train_batch_size 16 \
    --max_steps 200 \
    --dtype bfloat16 \
    --bf16 True \
    --output_dir Qwen2.5-Math-1.5B-ESR
```

# LoRA
```bash
python examples/scripts/esr_distill.py \
    --model_name_or_path Qwen/Qwen2.5-Math-1.5B \
    --teacher_model_name_or_path Qwen/Qwen3-1.7B \
    --dataset_name AI-MO/NuminaMath-CoT \
    --dataset_train_split "train[:3200]" \
    --prompt_column problem \
    --system_prompt "Please reason step by step, and put your final answer within \\boxed{}." \
    --teacher_chat_template teacher \
    --teacher_chat_template_kwargs '{"enable_thinking": false}' \
    --esr_k 100 \
    --learning_rate 5.0e-5 \
    --per_device_train_batch_size 16 \
    --max_steps 200 \
    --dtype bfloat16 \
    --bf16 True \
    --output_dir Qwen2.5-Math-1.5B-ESR-LoRA \
    --use_peft \
    --lora_r 32 \
    --lora_alpha 64 \
    --lora_target_modules all-linear
```

# Multi-GPU (any accelerate config of examples/accelerate_configs/)
```bash
accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/scripts/esr_distill.py \
    --config examples/configs/paper_qwen25math_1.5b_from_qwen3_1.7b.yaml
```
"""

from trl_esr.scripts.esr_distill import main


if __name__ == "__main__":
    main()
