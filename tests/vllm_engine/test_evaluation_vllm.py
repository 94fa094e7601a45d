"""`trl-esr evaluate --use_vllm` with a real vLLM engine: greedy, it writes the responses HF `generate` gives; the
engine gets the prompts' token ids, one BOS each, and `--seed`.

The command runs in its own process, as a user runs it: its `LLM` tears down vLLM's process-global parallel state on
exit, which would break the colocated engines of the tests that run after it in this process."""

import json
import subprocess
import sys

import pytest
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


# A tokenizer that adds a BOS to text, as Llama-3's and Gemma's do, under a template that writes one: vLLM tokenizing
# the rendered text would add a second. The command runs three times (seeds 1, 1 and 2), recording what the engine saw.

RECORDING_MAIN = """
import json, sys
import vllm
from trl_esr.scripts.evaluate_boxed import main

generate = vllm.LLM.generate

def recording(self, *args, **kwargs):
    outputs = generate(self, *args, **kwargs)
    with open(sys.argv[1], "w") as f:
        json.dump([list(out.prompt_token_ids) for out in outputs], f)
    return outputs

vllm.LLM.generate = recording
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def bos_runs(tmp_path_factory):
    from tokenizers import processors

    from trl_esr.demo.tiny_models import CHAT_TEMPLATE, build_word_tokenizer

    root = tmp_path_factory.mktemp("bos")
    tokenizer = build_word_tokenizer(["<bos>", *(f"w{i}" for i in range(40))])
    bos = tokenizer.convert_tokens_to_ids("<bos>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
    )
    tokenizer.bos_token = "<bos>"
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    model = save_pretrained(build_tiny_causal_lm(tokenizer, "llama", hidden_size=64, num_heads=2), tokenizer,
                            root / "m")  # fmt: skip
    problems = ["w1 w2", "w3 w4 w5", "w6"]
    Dataset.from_dict({"problem": problems, "answer": ["w1", "w2", "w3"]}).to_json(root / "math.jsonl")
    runs = []
    for i, seed in enumerate((1, 1, 2)):
        seen, out = root / f"seen{i}.json", root / f"rows{i}.jsonl"
        argv = ["--model_name_or_path", model, "--dtype", "float32", "--dataset_name", str(root / "math.jsonl"),
                "--system_prompt", "w9", "--n", "2", "--temperature", "1.0", "--top_p", "1.0", "--max_new_tokens",
                "6", "--seed", str(seed), "--use_vllm", "--output_file", str(out)]  # fmt: skip
        subprocess.run([sys.executable, "-c", RECORDING_MAIN, str(seen), *argv], check=True, timeout=600)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        runs.append({"seen": json.loads(seen.read_text()), "responses": [row["responses"] for row in rows]})
    return {"model": model, "problems": problems, "bos": bos, "runs": runs}


def test_the_engine_sees_the_templates_bos_only(bos_runs):
    """Exactly one BOS, the template's, at the start of each prompt the engine got: the ids HF `generate` gets."""
    tokenizer, bos = load_tokenizer(bos_runs["model"]), bos_runs["bos"]
    assert tokenizer("w1").input_ids[0] == bos  # the saved tokenizer does add one to text
    texts = chat_prompts(tokenizer, bos_runs["problems"], "w9")
    assert all(text.startswith("<bos><|system|> w9 ") for text in texts)
    for run in bos_runs["runs"]:
        assert [ids.count(bos) for ids in run["seen"]] == [1, 1, 1] and {ids[0] for ids in run["seen"]} == {bos}
        assert run["seen"] == tokenizer(texts, add_special_tokens=False).input_ids


def test_the_seed_reaches_the_engine(bos_runs):
    """`--seed` seeds vLLM's sampling: the same seed gives the same samples at T = 1, another seed others."""
    first, again, other = (run["responses"] for run in bos_runs["runs"])
    assert first == again and other != first
    assert any(len(set(rs)) > 1 for rs in first)  # sampled: a problem's two responses differ
