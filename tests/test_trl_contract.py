"""Contract tests for every TRL private name that `trl_esr/_trl_compat.py` relies on.

If one of these fails after a TRL upgrade, the shim (not the trainer) is what needs updating.
"""

import copy
import inspect
import re
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig
from trl import DistillationConfig, DistillationTrainer
from trl.generation.vllm_generation import VLLMGeneration

from trl_esr import _trl_compat
from trl_esr.loss import DivergenceLoss


@pytest.fixture
def trl_trainer(make_trainer, make_args):
    """TRL's own trainer on the test models: what the shim is checked against."""
    return make_trainer(make_args(config_class=DistillationConfig, max_completion_length=24), DistillationTrainer)


def batch_with_loss_mask():
    return {
        "prompt_ids": torch.tensor([[6, 7, 8], [9, 10, 11]]),
        "prompt_mask": torch.ones(2, 3, dtype=torch.long),
        "completion_ids": torch.tensor([[12, 13, 14, 15], [16, 17, 18, 19]]),
        "completion_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        _trl_compat.LOSS_MASK_KEY: torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]),
    }


def test_overridden_methods_keep_their_signatures():
    assert list(inspect.signature(DistillationTrainer._generate_and_score_completions).parameters) == [
        "self",
        "inputs",
    ]
    assert list(inspect.signature(DistillationTrainer._compute_loss).parameters) == [
        "self",
        "unwrapped_student",
        "inputs",
        "num_items_in_batch",
    ]


def test_our_divergence_is_a_drop_in_for_trls():
    trl_params = inspect.signature(_trl_compat.chunked_divergence_loss).parameters
    for normalization in ("token", "sequence"):
        ours = inspect.signature(DivergenceLoss(normalization, 1.0)).parameters
        assert list(ours) == list(trl_params)
        assert [p.default for p in ours.values()] == [p.default for p in trl_params.values()]


def test_compute_loss_calls_the_replaceable_divergence_with_the_loss_mask(trl_trainer):
    received = {}

    def fake_divergence(*args, **kwargs):
        received["mask"], received["temperature"] = args[4], kwargs["temperature"]
        return _trl_compat.chunked_divergence_loss(*args, **kwargs)

    trl_trainer.model.eval()
    with _trl_compat.replace_divergence_loss(fake_divergence):
        trl_trainer.compute_loss(trl_trainer.model, batch_with_loss_mask())
    assert received["mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]  # completion_mask * tool_mask
    assert received["temperature"] == trl_trainer.args.temperature  # TRL ties the loss to sampling temperature

    received.clear()
    trl_trainer.compute_loss(trl_trainer.model, batch_with_loss_mask())
    assert received == {}  # restored on exit


def test_rollout_length_attributes_and_their_restoration(trl_trainer):
    assert trl_trainer.generation_config.max_new_tokens == 24
    assert trl_trainer.generation_kwargs["max_new_tokens"] == 24
    assert trl_trainer.max_completion_length == 24
    trl_trainer.use_vllm = True  # stand-in engine: the attribute TRL's vLLM path reads on each call
    trl_trainer.vllm_generation = SimpleNamespace(max_completion_length=24)
    with _trl_compat.cap_rollout_length(trl_trainer, 5):
        assert trl_trainer.generation_config.max_new_tokens == 5
        assert trl_trainer.generation_kwargs["max_new_tokens"] == 5
        assert trl_trainer.max_completion_length == 5
        assert trl_trainer.vllm_generation.max_completion_length == 5
    assert trl_trainer.generation_config.max_new_tokens == 24
    assert trl_trainer.generation_kwargs["max_new_tokens"] == 24
    assert trl_trainer.max_completion_length == 24
    assert trl_trainer.vllm_generation.max_completion_length == 24


def test_vllm_reads_max_completion_length_on_every_call():
    assert "max_completion_length = self.max_completion_length" in inspect.getsource(VLLMGeneration.generate)
    assert "max_completion_length" in inspect.signature(VLLMGeneration.__init__).parameters


def test_metrics_dict_is_averaged_into_the_logs(trl_trainer):
    trl_trainer.model.train()
    _trl_compat.metrics(trl_trainer, "train")["esr/probe"].extend([1.0, 3.0])
    trl_trainer.log({})
    assert trl_trainer.state.log_history[-1]["esr/probe"] == 2.0


def test_compute_loss_runs_student_then_teacher_through_get_last_hidden_state(trl_trainer):
    params = list(inspect.signature(DistillationTrainer._get_last_hidden_state).parameters)
    assert params[:5] == ["self", "unwrapped_model", "input_ids", "attention_mask", "logits_to_keep"]
    calls, returned, original = [], [], trl_trainer._get_last_hidden_state

    def recording(unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs):
        calls.append((unwrapped_model, input_ids.shape, logits_to_keep))
        returned.append(original(unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs))
        return returned[-1]

    received = []

    def spy(*args, **kwargs):
        received.append(args[:2])
        return _trl_compat.chunked_divergence_loss(*args, **kwargs)

    trl_trainer._get_last_hidden_state = recording
    trl_trainer.model.eval()
    with _trl_compat.replace_divergence_loss(spy):
        trl_trainer.compute_loss(trl_trainer.model, batch_with_loss_mask())
    teacher = trl_trainer.accelerator.unwrap_model(trl_trainer.teacher_model)
    assert [call[0] for call in calls] == [trl_trainer.accelerator.unwrap_model(trl_trainer.model), teacher]
    assert calls[0][1:] == calls[1][1:] == (torch.Size([2, 7]), 4)  # same input ids; the completion is last
    # both hidden states reach the divergence as they were returned (the aligned path returns the teacher's own)
    ((student_hidden, teacher_hidden),) = received
    assert torch.equal(student_hidden, returned[0]) and torch.equal(teacher_hidden, returned[1])


def test_compute_loss_reads_the_logit_scales_and_softcaps_it_passes():
    """The aligned path relies on TRL's `_compute_loss` for every model's logit post-processing (it runs inside it)."""
    source = inspect.getsource(DistillationTrainer._compute_loss)
    passed = [
        "student_logit_scale=student_logit_scale",
        "teacher_logit_scale=teacher_logit_scale",
        'student_final_logit_softcapping=getattr(student_config, "final_logit_softcapping", None)',
        'teacher_final_logit_softcapping=getattr(teacher_config, "final_logit_softcapping", None)',
        "student_lm_head_bias=student_lm_head.bias",
        "teacher_lm_head_bias=teacher_lm_head.bias",
    ]
    for argument in passed:
        assert argument in source, argument


def test_stop_token_ids_are_what_trl_generates_with(trl_trainer, tokenizer):
    assert _trl_compat.stop_token_ids(trl_trainer) == [tokenizer.eos_token_id]
    assert '"eos_token_id": self.eos_token_ids' in inspect.getsource(DistillationTrainer)  # HF generate's stop list
    # and where TRL cuts a rollout (its completion mask), whatever `generation_kwargs` made `generate` stop on
    cut = "torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=device))"
    assert cut in inspect.getsource(DistillationTrainer._generate_single_turn)


def statements(source: str) -> list[str]:
    """The code lines of `source`, comments and indentation stripped."""
    lines = (line.split("#")[0].strip() for line in source.splitlines())
    return [line for line in lines if line]


def block_of(source: str, first: str, end: str) -> list[str]:
    """The statements of `source` from the line starting with `first` up to (without) the one starting with `end`."""
    lines = statements(source)
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    stop = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(end))
    return lines[start:stop]


def test_load_teacher_repeats_trls_teacher_loading(trl_trainer, model_paths, make_args):
    """TRL's own teacher loading, statement for statement: if it changes, `load_teacher` must follow."""
    init = inspect.getsource(DistillationTrainer.__init__)
    assert block_of(init, "if isinstance(teacher_model, str):", "elif args.teacher_model_init_kwargs") == [
        "if isinstance(teacher_model, str):",
        'dtype = teacher_model_init_kwargs.get("dtype")',
        'teacher_model_init_kwargs["dtype"] = dtype if dtype in ["auto", None] else getattr(torch, dtype)',
        "if args.teacher_model_revision is not None:",
        'teacher_model_init_kwargs.setdefault("revision", args.teacher_model_revision)',
        'if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:',
        'teacher_model_init_kwargs["device_map"] = None',
        'teacher_model_init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)',
        "teacher_model = create_model_from_path(teacher_model, **teacher_model_init_kwargs)",
    ]
    assert "teacher_model_init_kwargs = dict(args.teacher_model_init_kwargs or {})" in statements(init)
    # and the result: the model TRL loads, with the dtype from `teacher_model_init_kwargs`
    args = make_args(config_class=DistillationConfig, teacher_model_init_kwargs={"dtype": "bfloat16"})
    ours = _trl_compat.load_teacher(args, model_paths["teacher"])
    theirs = trl_trainer.accelerator.unwrap_model(trl_trainer.teacher_model)
    assert type(ours) is type(theirs) and ours.dtype == torch.bfloat16
    assert all(torch.equal(p.float(), theirs.get_parameter(n).bfloat16().float()) for n, p in ours.named_parameters())
    assert _trl_compat.load_teacher(args, theirs) is theirs  # an instance is TRL's business


def test_prepare_teacher_repeats_trls_teacher_placement(trl_trainer, model_paths):
    init = statements(inspect.getsource(DistillationTrainer.__init__))
    deepspeed = init.index("self.teacher_model = prepare_deepspeed(teacher_model, self.accelerator)")
    assert init[deepspeed - 1] == "if self.is_deepspeed_enabled:"
    assert init[deepspeed + 1 : deepspeed + 3] == [
        "else:",
        "self.teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)",
    ]
    teacher = AutoModelForCausalLM.from_pretrained(model_paths["teacher"])
    prepared = _trl_compat.prepare_teacher(trl_trainer, teacher)
    assert type(prepared) is type(trl_trainer.teacher_model)
    assert prepared.device == trl_trainer.teacher_model.device == trl_trainer.accelerator.device


def test_suppressed_ids_reach_hf_generate_and_vllm(trl_trainer, train_dataset):
    single_turn = inspect.getsource(DistillationTrainer._generate_single_turn)
    assert "generation_kwargs=self.generation_kwargs" in single_turn  # overrides the model's generation config
    assert "generation_config=self.generation_config" in single_turn
    vllm = inspect.getsource(VLLMGeneration)
    assert "generation_kwargs.update(self.generation_kwargs)" in vllm  # colocate: merged into SamplingParams
    assert "SamplingParams(**generation_kwargs)" in vllm
    assert '"generation_kwargs": self.generation_kwargs' in vllm  # server: sent with every request
    # and in a real rollout: no id at or above the limit is sampled
    limit = 12
    _trl_compat.suppress_ids_above(trl_trainer, limit)
    assert trl_trainer.generation_config.suppress_tokens[-1] == len(trl_trainer.processing_class) - 1
    trl_trainer.model.train()
    batch = trl_trainer._generate_and_score_completions([train_dataset[i] for i in range(4)])
    generated = batch["completion_ids"][batch["completion_mask"].bool()]
    assert generated.numel() > 0 and int(generated.max()) < limit
    trl_trainer.use_vllm = True  # a stand-in engine with the user's own restriction: the two are intersected
    trl_trainer.vllm_generation = SimpleNamespace(generation_kwargs={"allowed_token_ids": [3, 11, 20]})
    _trl_compat.suppress_ids_above(trl_trainer, limit)
    assert trl_trainer.vllm_generation.generation_kwargs == {"allowed_token_ids": [3, 11]}


def test_tokenizer_of_is_trls_text_tokenizer(trl_trainer, tokenizer):
    assert _trl_compat.tokenizer_of(trl_trainer) is tokenizer is trl_trainer.processing_class
    assert _trl_compat.tokenizer_of(trl_trainer).pad_token is not None
    init = statements(inspect.getsource(DistillationTrainer.__init__))
    assert "self._tokenizer = processing_class.tokenizer" in init  # a processor's text tokenizer
    assert "self._tokenizer = processing_class" in init
    assert "self._tokenizer.pad_token = self._tokenizer.eos_token" in init


def test_generation_config_is_what_hf_generate_samples_with(trl_trainer, tokenizer):
    config = _trl_compat.generation_config(trl_trainer)
    assert isinstance(config, GenerationConfig) and config is trl_trainer.generation_config
    assert config.eos_token_id == _trl_compat.stop_token_ids(trl_trainer)
    assert config.pad_token_id == tokenizer.pad_token_id
    args = trl_trainer.args
    assert (config.temperature, config.top_p, config.max_new_tokens) == (
        args.temperature, args.top_p, args.max_completion_length,
    )  # fmt: skip
    assert config.suppress_tokens == args.generation_kwargs["suppress_tokens"]  # `generation_kwargs` applied


def test_model_id_is_the_name_trl_loads_the_processor_by(trl_trainer, model_paths):
    init = statements(inspect.getsource(DistillationTrainer.__init__))
    assert "model_name_or_path = get_config_model_id(model.config)" in init
    assert re.search(r"AutoProcessor\.from_pretrained\(\s*model_name_or_path", inspect.getsource(DistillationTrainer))
    student = trl_trainer.accelerator.unwrap_model(trl_trainer.model)
    assert _trl_compat.model_id(student) == model_paths["student"]


def test_pad_left_pads_like_trls_prompts():
    rows = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    assert _trl_compat.pad(rows, padding_value=0, padding_side="left").tolist() == [[1, 2, 3], [0, 0, 4]]
    assert _trl_compat.pad(rows, padding_value=9).tolist() == [[1, 2, 3], [4, 9, 9]]


def test_chat_template_options_are_what_trl_renders_training_prompts_with(make_trainer, make_args, tokenizer):
    """TRL's `_tokenize_prompts` renders with the trainer's tools, training chat template and `chat_template_kwargs`
    (read from its source), and `render_prompts` with `chat_template_options` gives TRL's ids on a template that reads
    a keyword."""
    from trl_esr.prompts import render_prompts

    source = statements(inspect.getsource(DistillationTrainer._tokenize_prompts))
    for passed in ("tools=self.tools or None,", "chat_template=self.chat_template,", "**self.chat_template_kwargs,"):
        assert passed in source, passed
    init = statements(inspect.getsource(DistillationTrainer.__init__))
    assert "self.chat_template_kwargs = args.chat_template_kwargs or {}" in init
    switch = tokenizer.chat_template.replace("{% endif %}", "{% if flag %} w30{% endif %}{% endif %}", 1)
    flagged = copy.deepcopy(tokenizer)  # the session's tokenizer stays as it is
    flagged.chat_template = switch
    trainer = make_trainer(make_args(config_class=DistillationConfig, chat_template_kwargs={"flag": True}),
                           DistillationTrainer, processing_class=flagged)  # fmt: skip
    prompts = [[{"role": "user", "content": "w1 w2"}], [{"role": "user", "content": "w3"}]]
    expected, _, _ = trainer._tokenize_prompts(prompts)
    options = _trl_compat.chat_template_options(trainer)
    assert render_prompts(flagged, prompts, **options) == [list(ids) for ids in expected]
    assert all(flagged.convert_tokens_to_ids("w30") in ids for ids in expected)
