"""`trl-esr evaluate --use_vllm` with a real vLLM engine: greedy, it writes the responses HF `generate` gives.

The command runs in its own process, as a user runs it: its `LLM` tears down vLLM's process-global parallel state on
exit, which would break the colocated engines of the tests that run after it in this process."""

import json
import subprocess
import sys

from datasets import Dataset

from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained
from trl_esr.evaluation import chat_prompts, generate_hf
from trl_esr.inference import InferenceModelConfig, load_causal_lm, load_tokenizer


def test_vllm_greedy_responses_are_hf_generates(tokenizer, tmp_path):
    """The same texts, lengths and truncation flags: this model ends two responses with EOS within 6 tokens (vLLM
    keeps the EOS in `token_ids`, HF pads after it; neither counts it) and runs the third to the cap."""
    # A Llama folder (AutoTokenizer keeps the word tokenizer) with a head size vLLM's CPU attention supports (32).
    model = save_pretrained(build_tiny_causal_lm(tokenizer, "llama", hidden_size=64, num_heads=2), tokenizer,
                            tmp_path / "m")  # fmt: skip
    problems = ["w1 w2", "w3 w4 w5", "w6"]
    Dataset.from_dict({"problem": problems, "answer": ["w1", "w2", "w3"]}).to_json(tmp_path / "math.jsonl")
    out = tmp_path / "vllm.jsonl"
    argv = ["--model_name_or_path", model, "--dtype", "float32", "--dataset_name", str(tmp_path / "math.jsonl"),
            "--system_prompt", "w9", "--n", "1", "--temperature", "0", "--top_p", "1.0", "--max_new_tokens", "6",
            "--use_vllm", "--output_file", str(out)]  # fmt: skip
    command = "import sys; from trl_esr.scripts.evaluate_boxed import main; sys.exit(main(sys.argv[1:]))"
    subprocess.run([sys.executable, "-c", command, *argv], check=True, timeout=600)
    model_args = InferenceModelConfig(model_name_or_path=model, dtype="float32")
    rows = [json.loads(line) for line in out.read_text().splitlines()]

    hf_tokenizer = load_tokenizer(model)
    prompts = chat_prompts(hf_tokenizer, problems, "w9")
    hf = [rs[0] for rs in generate_hf(load_causal_lm(model, model_args), hf_tokenizer, prompts, 1, 0, 1.0, 6)]
    # vLLM's incremental detokenizer puts a space before a word-level tokenizer's first word; the words are the same
    assert [row["responses"][0].strip() for row in rows] == [r.text for r in hf] and all(r.text for r in hf)
    assert [row["num_tokens"][0] for row in rows] == [r.num_tokens for r in hf]
    assert [row["truncated"][0] for row in rows] == [r.truncated for r in hf]
    assert [r.truncated for r in hf] == [False, False, True]  # both endings are compared
    assert [r.num_tokens for r in hf] == [len(r.text.split()) for r in hf]  # one word a token, EOS not written
