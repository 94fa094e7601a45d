"""`run_diagnostics`: sample full-length student rollouts, score them with the teacher, recommend k, probe decay.

With `save_dir`, finished work is written as it is made, so a crash or Ctrl-C loses at most the batch in flight:

- `rollouts.jsonl`: one row per student rollout (`index`, `prompt`, `completion`, `completion_ids`), after each batch;
- `scores.jsonl`: one row per scored rollout (`index` and its per-token `reverse_kl`, `student_entropy`,
  `teacher_entropy`, `teacher_agrees`), after each batch;
- `teacher_decay.jsonl`: one row per probe length (`k`, `accuracy`, `num_prompts`, `num_short`);
- `progress.json`: the settings, how far each stage got and the sampling RNG state after the last saved batch.

Running again with the same settings and `save_dir` resumes an unfinished run where it stopped, with the numbers an
uninterrupted run gives (the RNG state is restored; the batches are the same).
"""

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..sampling import plain_sampling
from ..teacher_view import TeacherPromptRenderer
from .decay import AnswerChecker, DecayResult, teacher_decay_probe
from .per_position import (
    PositionStats,
    PositionSummary,
    eos_token_ids,
    sample_completions,
    score_completions,
    seeded_sampling,
    summarize,
)
from .prompts import prompt_from_row, tokenize_prompts
from .recommend import DEFAULT_THRESHOLD, KRecommendation, recommend_k


@dataclass
class DiagnosticsResult:
    """Everything `suggest-k` measures. `stats` and `completion_ids` are kept for further analysis, not written out.

    Attributes:
        settings: the sampling settings and seed, recorded in `diagnostics.json`.
        summary: per-position statistics (see [`PositionSummary`]).
        recommendation: the cumulative-KL-share rule's answer (see [`recommend_k`]).
        decay: the teacher-decay probe, when it ran.
        stats: per-token statistics of every rollout, `(N, T)` tensors.
        completion_ids: the student's rollouts, EOS included.
    """

    settings: dict
    summary: PositionSummary
    recommendation: KRecommendation
    decay: DecayResult | None = None
    stats: PositionStats | None = field(default=None, repr=False)
    completion_ids: list[list[int]] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class MeasurementSettings:
    """How `run_diagnostics` samples and reads the rollouts: the numbers it gives depend on these (and on the models
    and prompts) only. The defaults are the paper's sampling.

    Parameters:
        max_completion_length (`int`):
            Length of the full rollouts: the training's `max_completion_length` (the paper's 3,584 for math). The rule
            is read off this curve, so a shorter budget gives a smaller k.
        temperature (`float`, *optional*, defaults to `0.7`):
            Sampling temperature of the rollouts (the KL always uses untempered logits).
        top_p (`float`, *optional*, defaults to `0.95`):
            Top-p of sampling; there is no top-k.
        batch_size (`int`, *optional*, defaults to `8`):
            Rollouts generated and scored at once. Scoring materialises `(batch, length, vocab)` logits for both
            models.
        seed (`int`, *optional*, defaults to `0`):
            The same seed and `batch_size` give the same numbers.
        threshold (`float`, *optional*, defaults to `0.45`):
            Share of the total per-position KL the first k tokens must hold (the paper's rule).
        probe_k_grid (`tuple[int, ...]`, *optional*, defaults to `()`):
            Student-prefix lengths for the teacher-decay probe; empty: no probe.
    """

    max_completion_length: int = field(metadata={"help": "Length of the full rollouts."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the rollouts."})
    top_p: float = field(default=0.95, metadata={"help": "Top-p of sampling (no top-k)."})
    batch_size: int = field(default=8, metadata={"help": "Rollouts generated and scored at once."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling."})
    threshold: float = field(
        default=DEFAULT_THRESHOLD, metadata={"help": "Share of the total KL the first k tokens must hold."}
    )
    probe_k_grid: tuple[int, ...] = field(
        default=(), metadata={"help": "Student-prefix lengths for the teacher-decay probe; empty: no probe."}
    )

    def as_dict(self, num_prompts: int) -> dict:
        """The settings as `diagnostics.json` and `progress.json` record them, with the number of prompts."""
        return {"num_prompts": num_prompts, **asdict(self), "probe_k_grid": list(self.probe_k_grid)}


def run_diagnostics(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_rows: Sequence[dict],
    settings: MeasurementSettings,
    answer_checker: AnswerChecker | None = None,
    *,
    show_progress: bool = True,
    save_dir: str | Path | None = None,
    run_identity: dict | None = None,
    template_options: dict | None = None,
    teacher_prompt_renderer: TeacherPromptRenderer | None = None,
) -> DiagnosticsResult:
    """Measure where along full-length student rollouts the teacher disagrees, and recommend k.

    One rollout per row of `prompt_rows` (rows with a `prompt` or `messages` column) is sampled from the student with
    HF `generate` as `settings` say, scored by the teacher position by position, and read by the paper's rule. If
    `settings.probe_k_grid` is not empty, the teacher-decay probe runs too and grades with `answer_checker`.

    With `save_dir`, rollouts, scores and probe results are written there batch by batch (see the module docstring);
    an exception or `KeyboardInterrupt` then carries a note saying what was kept, and a second call with the same
    settings (and `run_identity`, e.g. the model paths, which must match too) resumes from there.

    Prompts are rendered as training renders them: the student's with `template_options` (TRL's
    `chat_template_kwargs`, such as `enable_thinking=False`), the teacher's, where it has its own view
    (`ESRConfig.teacher_chat_template`), with `teacher_prompt_renderer`; the teacher then scores and continues each
    rollout after its own prompt.
    """
    if settings.probe_k_grid and answer_checker is None:
        raise ValueError("`probe_k_grid` is set but `answer_checker` is None: the probe needs a way to grade answers.")
    recorded = settings.as_dict(len(prompt_rows))
    prompts = [prompt_from_row(row) for row in prompt_rows]
    saved = None
    if save_dir is not None:
        saved = PartialResults.open(save_dir, measured_settings(recorded, run_identity), prompts)
    measurement = _Measurement(student, teacher, tokenizer, settings, show_progress, saved)
    try:
        prompt_ids = tokenize_prompts(tokenizer, prompts, **(template_options or {}))
        teacher_prompt_ids = prompt_ids
        if teacher_prompt_renderer is not None:  # the teacher's own view of the prompt
            teacher_prompt_ids = teacher_prompt_renderer.prompt_ids(prompts)
        completion_ids = measurement.rollouts(prompt_ids)
        stats = measurement.scores(prompt_ids, completion_ids, teacher_prompt_ids)
        summary = summarize(stats)
        recommendation = recommend_k(summary.kl_mean, summary.alive, settings.threshold)
        decay = None
        if settings.probe_k_grid:
            decay = measurement.probe(prompt_rows, teacher_prompt_ids, completion_ids, answer_checker)
        if saved is not None:
            saved.finish()
    except BaseException as error:  # KeyboardInterrupt too: say what was kept, then let it propagate
        if saved is not None:
            error.add_note(saved.describe())
        raise
    return DiagnosticsResult(recorded, summary, recommendation, decay, stats, completion_ids)


@dataclass
class _Measurement:
    """The three stages of `run_diagnostics`, each continuing from what `saved` already holds (if anything)."""

    student: PreTrainedModel
    teacher: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    settings: MeasurementSettings
    show_progress: bool
    saved: "PartialResults | None"

    def rollouts(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """One sampled student rollout per prompt, EOS included: the saved ones, then the rest."""
        settings, saved, pad_id = self.settings, self.saved, self.tokenizer.pad_token_id
        eos_ids = eos_token_ids(self.tokenizer, self.student)
        generation_config = GenerationConfig(
            max_new_tokens=settings.max_completion_length,
            **plain_sampling(settings.temperature, settings.top_p),  # the paper's: no top-k, no penalty
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
        )
        done = saved.completion_ids if saved is not None else []
        with seeded_sampling(settings.seed, self.student.device):
            if saved is not None and saved.rng_state is not None:
                _set_rng_state(saved.rng_state, self.student.device)  # continue the interrupted run's sampling exactly
            on_batch = None if saved is None else lambda start, batch: saved.add_rollouts(
                len(done) + start, batch, self.tokenizer, _rng_state(self.student.device)
            )  # fmt: skip
            return done + sample_completions(
                self.student, prompt_ids[len(done) :], generation_config, pad_id, eos_ids, settings.batch_size,
                self.show_progress, on_batch=on_batch,
            )  # fmt: skip

    def scores(self, prompt_ids, completion_ids, teacher_prompt_ids) -> PositionStats:
        """The teacher's per-position statistics of every rollout, `(N, T)`: the saved ones, then the rest (each
        argument a list of token-id lists, one per rollout)."""
        length = max(len(completion) for completion in completion_ids)
        saved = self.saved
        scored = saved.scored_stats(length) if saved is not None else None
        first = 0 if scored is None else scored.mask.size(0)
        stats = score_completions(
            self.student, self.teacher, prompt_ids[first:], completion_ids[first:], self.tokenizer.pad_token_id,
            self.settings.batch_size, self.show_progress, teacher_prompt_ids[first:], length=length,
            on_batch=None if saved is None else lambda start, batch: saved.add_scores(first + start, batch),
        )  # fmt: skip
        if scored is None:
            return stats
        return PositionStats(*(torch.cat([a, b]) for a, b in zip(_fields(scored), _fields(stats), strict=True)))

    def probe(self, prompt_rows, teacher_prompt_ids, completion_ids, answer_checker: AnswerChecker) -> DecayResult:
        """The teacher's accuracy when it continues each rollout's first k tokens (after its own prompt), for every k
        of the grid."""
        saved = self.saved
        return teacher_decay_probe(
            self.teacher, self.tokenizer, prompt_rows, teacher_prompt_ids, completion_ids,
            list(self.settings.probe_k_grid),
            answer_checker, self.settings.max_completion_length, self.settings.batch_size, self.show_progress,
            done=saved.probed if saved is not None else None, on_k=saved.add_probe if saved is not None else None,
        )  # fmt: skip


def _fields(stats: PositionStats) -> tuple[torch.Tensor, ...]:
    return (stats.reverse_kl, stats.student_entropy, stats.teacher_entropy, stats.teacher_agrees, stats.mask)


# Partial results on disk

ROLLOUTS_FILE, SCORES_FILE, PROBE_FILE, PROGRESS_FILE = (
    "rollouts.jsonl", "scores.jsonl", "teacher_decay.jsonl", "progress.json"
)  # fmt: skip
_STAT_NAMES = ("reverse_kl", "student_entropy", "teacher_entropy", "teacher_agrees")
# Settings that do not change what is measured: a resumed run may change them (`threshold` only reads the KL curve;
# the probe reuses the lengths already measured).
_UNMEASURED = ("threshold", "probe_k_grid")


def measured_settings(settings: dict, run_identity: dict | None = None) -> dict:
    """What must be equal for saved rollouts and scores to be reused: the sampling settings and `run_identity`."""
    return {**{k: v for k, v in settings.items() if k not in _UNMEASURED}, **(run_identity or {})}


def check_resumable(save_dir: str | Path, settings: dict, prompts: Sequence) -> str | None:
    """Raise `ValueError` if `save_dir` holds an unfinished run with other settings or prompts (resuming it would mix
    two runs, starting over would discard it); return a line describing what will be resumed, or `None`."""
    saved = PartialResults.read(save_dir, settings, prompts)
    return None if saved is None else f"Resuming the unfinished run in {save_dir}: {saved.counts()}."


class PartialResults:
    """The finished part of a `run_diagnostics` call, in `directory`, updated after every batch."""

    def __init__(self, directory: Path, settings: dict, prompts: Sequence):
        self.directory, self.settings, self.prompts = directory, settings, prompts
        self.rollout_rows: list[dict] = []
        self.score_rows: list[dict] = []
        self.probed: dict[int, tuple[float, int, int]] = {}
        self.rng_state: dict | None = None  # the sampling RNG after the last saved batch of rollouts

    @property
    def completion_ids(self) -> list[list[int]]:
        return [row["completion_ids"] for row in self.rollout_rows]

    @classmethod
    def read(cls, directory, settings: dict, prompts: Sequence) -> "PartialResults | None":
        """The unfinished run saved in `directory` if its settings and prompts match; `None` if there is none (or it
        finished); `ValueError` if it is another run's."""
        directory = Path(directory)
        try:
            progress = json.loads((directory / PROGRESS_FILE).read_text())
        except (OSError, ValueError):  # none, or unreadable: nothing to resume
            return None
        if progress.get("complete", True):
            return None
        theirs = progress.get("settings", {})
        differing = sorted(
            key for key in {*theirs, *settings} if _canonical(theirs.get(key)) != _canonical(settings.get(key))
        )
        where = f"The output folder (`--output_dir`) {str(directory)!r} holds the partial results of an unfinished run"
        discard = f"delete {directory / PROGRESS_FILE} to discard them"
        if differing:
            changes = "; ".join(f"{key}: {theirs.get(key)!r}, now {settings.get(key)!r}" for key in differing[:4])
            raise ValueError(
                f"{where} with other settings ({changes}). Rerun with its settings to resume it, choose another "
                f"`--output_dir`, or {discard}."
            )
        saved = cls(directory, settings, prompts)
        rows = _read_rows(directory / ROLLOUTS_FILE)[: progress.get("rollouts", 0)]
        for row in rows:
            index = row.get("index")
            if index is None or index >= len(prompts) or _canonical(row.get("prompt")) != _canonical(prompts[index]):
                raise ValueError(
                    f"{where} on other prompts (prompt {index} differs: the dataset changed). Choose another "
                    f"`--output_dir`, or {discard}."
                )
        saved.rollout_rows = rows
        saved.rng_state = progress.get("rng_state") if rows else None
        saved.score_rows = _read_rows(directory / SCORES_FILE)[: min(progress.get("scored", 0), len(rows))]
        saved.probed = {
            row["k"]: (row["accuracy"], row["num_prompts"], row["num_short"])
            for row in _read_rows(directory / PROBE_FILE)
        }
        return saved

    @classmethod
    def open(cls, directory, settings: dict, prompts: Sequence) -> "PartialResults":
        """Resume the unfinished run in `directory` (see `read`) or start a new one there; rewrite the files to hold
        exactly what is reused."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        saved = cls.read(directory, settings, prompts) or cls(directory, settings, prompts)
        _write_rows(directory / ROLLOUTS_FILE, saved.rollout_rows)
        _write_rows(directory / SCORES_FILE, saved.score_rows)
        _write_rows(directory / PROBE_FILE, [
            {"k": k, "accuracy": a, "num_prompts": n, "num_short": s} for k, (a, n, s) in saved.probed.items()
        ])  # fmt: skip
        saved._write_progress()
        return saved

    def add_rollouts(self, start: int, completions: list[list[int]], tokenizer, rng_state: dict) -> None:
        rows = [
            {"index": start + i, "prompt": self.prompts[start + i],
             "completion": tokenizer.decode(ids, skip_special_tokens=True), "completion_ids": ids}
            for i, ids in enumerate(completions)
        ]  # fmt: skip
        _append_rows(self.directory / ROLLOUTS_FILE, rows)
        self.rollout_rows += rows
        self.rng_state = rng_state
        self._write_progress()

    def add_scores(self, start: int, batch: tuple[torch.Tensor, ...]) -> None:
        *values, mask = batch
        rows = []
        for i in range(mask.size(0)):
            n = int(mask[i].sum())
            stats = {name: value[i, :n].tolist() for name, value in zip(_STAT_NAMES, values, strict=True)}
            rows.append({"index": start + i, **stats})
        _append_rows(self.directory / SCORES_FILE, rows)
        self.score_rows += rows
        self._write_progress()

    def add_probe(self, k: int, accuracy: float, num_prompts: int, num_short: int) -> None:
        _append_rows(self.directory / PROBE_FILE, [
            {"k": k, "accuracy": accuracy, "num_prompts": num_prompts, "num_short": num_short}
        ])  # fmt: skip
        self.probed[k] = (accuracy, num_prompts, num_short)

    def scored_stats(self, length: int) -> PositionStats | None:
        """The saved scores as `(n, length)` tensors, padded as `score_completions` pads them; `None` if none."""
        if not self.score_rows:
            return None
        n = len(self.score_rows)
        values = [torch.zeros(n, length) for _ in _STAT_NAMES]
        mask = torch.zeros(n, length, dtype=torch.bool)
        for i, row in enumerate(self.score_rows):
            width = len(row["reverse_kl"])
            for tensor, name in zip(values, _STAT_NAMES, strict=True):
                tensor[i, :width] = torch.tensor(row[name], dtype=torch.float32)
            mask[i, :width] = True
        return PositionStats(*values, mask)

    def finish(self) -> None:
        self._write_progress(complete=True)

    def counts(self) -> str:
        parts = [
            f"{len(self.rollout_rows)} of {len(self.prompts)} rollouts ({ROLLOUTS_FILE})",
            f"{len(self.score_rows)} of {len(self.prompts)} scored ({SCORES_FILE})",
        ]
        if self.probed:
            parts.append(f"{len(self.probed)} probe length(s) ({PROBE_FILE})")
        return ", ".join(parts)

    def describe(self) -> str:
        return (
            f"Partial results kept in {self.directory}: {self.counts()}. Run again with the same settings and output "
            "folder to resume from there."
        )

    def _write_progress(self, complete: bool = False) -> None:
        progress = {
            "settings": self.settings,
            "rollouts": len(self.rollout_rows),
            "scored": len(self.score_rows),
            "rng_state": self.rng_state,
            "complete": complete,
        }
        temporary = self.directory / (PROGRESS_FILE + ".tmp")
        temporary.write_text(json.dumps(progress, indent=1) + "\n")
        os.replace(temporary, self.directory / PROGRESS_FILE)  # atomic: a crash leaves the old or the new file


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _read_rows(path: Path) -> list[dict]:
    """The complete JSON lines of `path` (a line cut short by a crash ends the list); `[]` if there is no file."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    break
    except OSError:
        return []
    return rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(row, default=str) + "\n" for row in rows)


def _append_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        f.writelines(json.dumps(row, default=str) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())  # on disk before `progress.json` counts it


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if device.type == "cuda":
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state(device).numpy().tobytes()).decode()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["cpu"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(tensor(state["cuda"]), device)
