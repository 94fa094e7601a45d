"""Revisions: the pairing, the pre-flight checks and `trl-esr suggest-k` read each model's tokenizer and head size at
the revision its weights are loaded from. Checked on an offline Hub cache holding one repository with two branches
whose heads differ ("main": the student's rows, "v2": 8 rows more), built here in the cache's own layout."""

import hashlib
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
from trl import DistillationConfig
from trl.trainer import distillation_trainer as trl_distillation

from trl_esr import _trl_compat
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained
from trl_esr.diagnostics import cli as suggest_k_cli
from trl_esr.inference import InferenceModelConfig
from trl_esr.validation import check_model_path


PADDING_ROWS = 8


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """`publish(repo, {revision: folder})` copies each folder into an offline Hub cache as that branch's snapshot
    (`models--org--name/snapshots/<commit>`, `refs/<revision>`), the way `huggingface_hub` lays one out."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at each call
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def publish(repo: str, revisions: dict[str, str]) -> str:
        root = cache / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        for revision, folder in revisions.items():
            commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
            shutil.copytree(folder, root / "snapshots" / commit)
            (root / "refs" / revision).write_text(commit)
        return repo

    return publish


@pytest.fixture
def teacher_repo(hub_cache, tokenizer, tmp_path):
    """'esr-test/teacher': on "main" a teacher with the student's head size, on "v2" one with 8 padding rows."""
    same = build_tiny_causal_lm(tokenizer, "llama", hidden_size=48, seed=1)
    padded = build_tiny_causal_lm(tokenizer, "llama", hidden_size=48, seed=2)
    padded.resize_token_embeddings(len(tokenizer) + PADDING_ROWS, mean_resizing=False)
    folders = {name: save_pretrained(model, tokenizer, tmp_path / name) for name, model in [("main", same),
               ("v2", padded)]}  # fmt: skip
    return hub_cache("esr-test/teacher", folders)


def _teacher_rows(trainer) -> int:
    return trainer.accelerator.unwrap_model(trainer.teacher_model).get_input_embeddings().weight.shape[0]


@pytest.mark.parametrize(
    ("options", "mode", "rows"),
    [
        ({}, "same", 0),
        ({"teacher_model_revision": "v2"}, "padded", PADDING_ROWS),
        ({"teacher_model_init_kwargs": {"revision": "v2"}}, "padded", PADDING_ROWS),
        # TRL: `teacher_model_init_kwargs`' revision wins over `teacher_model_revision`
        ({"teacher_model_revision": "v2", "teacher_model_init_kwargs": {"revision": "main"}}, "same", 0),
    ],
)
def test_the_pairing_reads_the_teachers_revision(
    teacher_repo, make_args, make_trainer, tokenizer, options, mode, rows
):
    """The weights TRL (or the pairing) loads and the pairing's head sizes come from the same branch: on the old code
    the pairing read "main" and took the "same" path for the padded "v2" teacher."""
    trainer = make_trainer(make_args(**options), teacher_model=teacher_repo)
    assert trainer._pairing.mode == mode
    assert _teacher_rows(trainer) == len(tokenizer) + rows
    trainer.train()  # TRL's loss on both heads: the shapes agree


def test_the_pairing_reads_the_students_revision(hub_cache, tokenizer, tmp_path, make_args, make_trainer):
    """A student given by Hub id, its revision in `model_init_kwargs` as TRL reads it (the script puts
    `--model_revision` there): its padded "v2" head is cut to the teacher's rows."""
    student = build_tiny_causal_lm(tokenizer, "qwen2", hidden_size=32, seed=0)
    padded = build_tiny_causal_lm(tokenizer, "qwen2", hidden_size=32, seed=3)
    padded.resize_token_embeddings(len(tokenizer) + PADDING_ROWS, mean_resizing=False)
    repo = hub_cache("esr-test/student", {"main": save_pretrained(student, tokenizer, tmp_path / "s-main"),
                                          "v2": save_pretrained(padded, tokenizer, tmp_path / "s-v2")})  # fmt: skip
    assert make_trainer(make_args(), model=repo)._pairing.mode == "same"
    trainer = make_trainer(make_args(model_init_kwargs={"revision": "v2"}), model=repo)
    assert (trainer._pairing.mode, trainer._pairing.vocab_size) == ("padded", len(tokenizer))
    assert trainer.model.get_input_embeddings().weight.shape[0] == len(tokenizer) + PADDING_ROWS


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"model_init_kwargs": {"revision": "r1"}},
        {"teacher_model_revision": "r2"},
        {"teacher_model_init_kwargs": {"revision": "r3"}},
        {"teacher_model_revision": "r2", "teacher_model_init_kwargs": {"revision": "r3"}},
    ],
)
def test_revisions_are_the_ones_trl_loads_from(monkeypatch, model_paths, make_args, train_dataset, tokenizer, options):
    """`_trl_compat.model_revision` / `teacher_revision` against the revision TRL's constructor passes to
    `create_model_from_path` for each model (local folders ignore it, so the values can be made up)."""
    loaded = {}
    real = trl_distillation.create_model_from_path

    def spy(path, **kwargs):
        loaded[path] = kwargs.get("revision")
        return real(path, **kwargs)

    monkeypatch.setattr(trl_distillation, "create_model_from_path", spy)
    args = make_args(config_class=DistillationConfig, **options)
    student, teacher = model_paths["student"], model_paths["teacher"]
    trl_distillation.DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train_dataset,
                                         processing_class=tokenizer)  # fmt: skip
    assert loaded == {
        student: _trl_compat.model_revision(args, student),
        teacher: _trl_compat.teacher_revision(args, teacher),
    }
    assert _trl_compat.model_revision(args, object()) is None is _trl_compat.teacher_revision(args, object())


def test_the_offline_check_looks_for_the_revision(teacher_repo):
    check_model_path("teacher_model_name_or_path", teacher_repo, revision="v2")
    check_model_path("teacher_model_name_or_path", teacher_repo)
    with pytest.raises(
        ValueError, match=r"`--teacher_model_name_or_path` 'esr-test/teacher' not found.* at revision 'v3'"
    ):
        check_model_path("teacher_model_name_or_path", teacher_repo, revision="v3")


def test_suggest_k_checks_the_pair_at_the_teachers_revision(teacher_repo, tokenizer, tmp_path):
    """`trl-esr suggest-k` measures "same" pairs only: the "main" teacher passes, "v2" (a padded head) is refused
    before any weights load, and the teacher it loads is the branch it checked."""
    student = save_pretrained(build_tiny_causal_lm(tokenizer, "llama", seed=0), tokenizer, tmp_path / "student")
    model_args = InferenceModelConfig(model_name_or_path=student)
    args = suggest_k_cli.SuggestKArguments(teacher_model_name_or_path=teacher_repo)
    _, teacher, tokenizer, _ = suggest_k_cli._load_models(args, model_args)
    assert teacher.get_input_embeddings().weight.shape[0] == len(tokenizer)
    args.teacher_model_revision = "v2"
    with pytest.raises(ValueError, match="their heads have different sizes"):
        suggest_k_cli._load_models(args, model_args)
    assert suggest_k_cli._model_settings(args, model_args)["teacher_model_revision"] == "v2"  # part of the resume key


@pytest.mark.parametrize(
    "options", [{"teacher_model_revision": "v2"}, {"teacher_model_init_kwargs": {"revision": "v2"}}]
)
def test_the_model_card_names_the_teachers_revision(teacher_repo, make_args, make_trainer, options):
    """The card's teacher row names the revision the teacher was loaded from, however it was given."""
    trainer = make_trainer(make_args(max_steps=1, **options), teacher_model=teacher_repo)
    trainer.create_model_card()
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| teacher |"))
    assert row == "| teacher | `esr-test/teacher` (revision `v2`) |"


def test_a_local_teacher_has_no_revision_in_the_card(make_args, make_trainer, model_paths):
    trainer = make_trainer(make_args(max_steps=1))
    trainer.create_model_card()
    card = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert f"| teacher | `{model_paths['teacher']}` |" in card  # no revision: the default branch
