r"""`BoxedAccuracyCallback`: the student's `\boxed{}` accuracy on held-out problems, measured during training.

The paper reports each run at its best step, and every full-rollout run it reports degraded later in training (its
figures: MATH-500 avg@4 65.6 → 43.8, with 89 % of the responses holding several `\boxed{}`) while ESR stayed near its
peak. The distillation loss shows none of this, and ESR's loss sees only the first k tokens of each response. This
callback generates full-length responses to a fixed set of problems every few optimizer steps and logs what
`trl-esr evaluate` prints (`trl_esr.evaluation`): `boxed/avg@n`, `boxed/pass@n`, `boxed/no_box`, `boxed/multi_box`,
`boxed/median_tokens`, `boxed/mean_tokens` and `boxed/truncated`, so the curve, and the step to keep, are in the run's
logs (and in TensorBoard / W&B, and `trainer_state.json`).
"""

from transformers import TrainerCallback

from ._trl_compat import chat_template_options, metrics
from .evaluation import PAPER_SYSTEM_PROMPT, Response, chat_prompts, generate_hf, score_generated


class BoxedAccuracyCallback(TrainerCallback):
    r"""Log the student's `\boxed{}` accuracy on `problems` every `every_n_steps` optimizer steps.

    Responses are generated with HF `generate` on the unwrapped student (a `PeftModel` with its adapter), in eval
    mode, up to `max_new_tokens` (default: the config's `max_completion_length`, never `esr_k`: ESR caps training
    rollouts only). Greedy by default (`temperature=0`): no sampling noise between measurements; with
    `temperature > 0` each measurement samples with the same `seed`. Either way it runs under a forked RNG, so
    training's random stream is unchanged. With several processes each one generates a contiguous share of the
    problems and the results are gathered (every process logs the same scores); a sharded student (FSDP, DeepSpeed
    ZeRO-3) is refused. The scores are also kept in `history` as `(step, scores)` pairs, and the last measurement's
    responses (`trl_esr.evaluation.Response`, a list per problem) in `responses`, to read what the student writes.

    Args:
        trainer: the trainer whose student is measured (its `processing_class` renders the prompts).
        problems: the problems' text; each becomes a user turn after `system_prompt`, in the student's chat template
            rendered as TRL renders the training prompts (`chat_template_kwargs` such as `enable_thinking=False`).
        answers: the reference answers, one per problem (compared as `trl-esr evaluate` compares them).
        every_n_steps: measure when `global_step` is a multiple of this.
        n, temperature, top_p, max_new_tokens: responses per problem and their sampling (temperature and top-p
            only, nothing from the student's generation config); greedy (`temperature=0`) takes `n=1`.
        system_prompt: the system message, as in training (default: the paper's, asking for a `\boxed{}` answer).
        batch_size: prompts per `generate` call; defaults to `max(8, per_device_train_batch_size)` (training already
            generates that many at once).
        answer_from: which box holds the answer, "last" or "first".
        seed: sampling seed; defaults to `trainer.args.seed`.
    """

    def __init__(
        self,
        trainer,
        problems: list[str],
        answers: list[str],
        every_n_steps: int = 25,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        system_prompt: str | None = PAPER_SYSTEM_PROMPT,
        batch_size: int | None = None,
        answer_from: str = "last",
        seed: int | None = None,
    ):
        from .diagnostics.callback import sharded_student

        max_new_tokens = trainer.args.max_completion_length if max_new_tokens is None else max_new_tokens
        batch_size = max(8, trainer.args.per_device_train_batch_size) if batch_size is None else batch_size
        for name, value in (("every_n_steps", every_n_steps), ("n", n), ("max_new_tokens", max_new_tokens),
                            ("batch_size", batch_size)):  # fmt: skip
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if len(problems) != len(answers) or not problems:
            raise ValueError(f"Got {len(problems)} problems and {len(answers)} answers: give one answer per problem.")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"`temperature` must be >= 0 (0 = greedy) and `top_p` in (0, 1]; got {temperature}, {top_p}."
            )
        if temperature == 0 and n > 1:  # HF `generate` refuses it, at the first measurement
            raise ValueError(
                f"`n` = {n} with `temperature` 0: greedy decoding gives {n} identical responses. Use `n=1` (or a "
                "`temperature` above 0 to sample)."
            )
        if answer_from not in ("last", "first"):
            raise ValueError(f"`answer_from` must be 'last' or 'first', got {answer_from!r}.")
        if sharded_student(trainer):
            raise ValueError(
                "BoxedAccuracyCallback cannot measure a sharded student (FSDP or DeepSpeed ZeRO-3): each process "
                "generates with its own copy. Evaluate the saved checkpoints with `trl-esr evaluate` instead."
            )
        self.trainer, self.every_n_steps, self.answer_from = trainer, every_n_steps, answer_from
        self.answers = [str(answer) for answer in answers]
        # text prompts: a processor's tokenizer (a VLM checkpoint's, such as Qwen3.5's, trained on text)
        self.tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        self.prompts = chat_prompts(self.tokenizer, list(problems), system_prompt, **chat_template_options(trainer))
        self.sampling = (n, temperature, top_p, max_new_tokens)
        self.batch_size = batch_size
        self.seed = trainer.args.seed if seed is None else seed
        self.history: list[tuple[int, dict]] = []
        self.responses: list[list[Response]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps != 0:
            return control
        scores = self.measure()
        self.history.append((state.global_step, scores))
        logged = metrics(self.trainer, "train")
        for key, value in scores.items():
            if key not in ("n", "problems"):
                logged[f"boxed/{key}"].append(value)
        control.should_log = True  # log at this step even if it is off the `logging_steps` grid
        return control

    def measure(self) -> dict:
        """Generate this process's share of the responses, gather every process's, score them (as `trl-esr evaluate`
        scores generated responses). The student's train/eval mode is restored."""
        from accelerate.utils import gather_object

        from .diagnostics.per_position import seeded_sampling

        accelerator = self.trainer.accelerator
        student = accelerator.unwrap_model(self.trainer.model)
        share = -(-len(self.prompts) // accelerator.num_processes)  # ceil: contiguous shares keep the problem order
        mine = self.prompts[accelerator.process_index * share : (accelerator.process_index + 1) * share]
        was_training = student.training
        student.eval()
        try:
            with seeded_sampling(self.seed + accelerator.process_index, student.device):
                responses = generate_hf(student, self.tokenizer, mine, *self.sampling, batch_size=self.batch_size)
        finally:
            student.train(was_training)
        if accelerator.num_processes > 1:
            responses = gather_object(responses)  # a list per problem, in rank order
        self.responses = responses
        return score_generated(responses, self.answers, self.answer_from)
