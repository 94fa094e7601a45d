"""trl_esr/jsonl.py: JSON Lines read with line numbers, and the two callers' messages unchanged by using it."""

import pytest

from trl_esr.jsonl import JSONLineError, json_lines
from trl_esr.scripts.evaluate_boxed import _read_responses_file
from trl_esr.validation import explain_dataset_error


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n   \n  [2, 3]  \n\t\n"x"\n', encoding="utf-8")
    assert list(json_lines(path)) == [(1, '{"a": 1}', {"a": 1}), (4, "[2, 3]", [2, 3]), (6, '"x"', "x")]


def test_an_empty_file_yields_nothing(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    assert list(json_lines(path)) == []


def test_invalid_json_raises_with_its_line_number_and_message(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"a": 1}\n\n  {"a": \n{"a": 2}\n', encoding="utf-8")
    rows = json_lines(path)
    assert next(rows) == (1, '{"a": 1}', {"a": 1})  # the lines before the bad one are yielded first
    with pytest.raises(JSONLineError) as caught:
        next(rows)
    error = caught.value
    assert isinstance(error, ValueError)
    assert (error.path, error.line_number, error.line, error.msg) == (path, 3, '{"a":', "Expecting value")
    assert str(error) == f"{path} line 3 is not valid JSON (Expecting value)."


def test_utf8_multibyte_characters_are_read_whatever_the_locale(tmp_path):
    path = tmp_path / "unicode.jsonl"
    path.write_text('{"prompt": "½ · π ≈ 3.14 — 日本語 🙂"}\n', encoding="utf-8")
    assert list(json_lines(path)) == [
        (1, '{"prompt": "½ · π ≈ 3.14 — 日本語 🙂"}', {"prompt": "½ · π ≈ 3.14 — 日本語 🙂"})
    ]


def test_undecodable_bytes_raise_unless_replaced(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(UnicodeDecodeError):
        list(json_lines(path))
    assert list(json_lines(path, errors="replace")) == [(1, '{"prompt": "caf\ufffd"}', {"prompt": "caf\ufffd"})]


# The callers' messages, written out by hand: moving the loop into trl_esr/jsonl.py must not change a byte of them.


def test_responses_file_messages_are_unchanged(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"answer": "1", "responses": ["a"]}\n\n{"answer": "2", "responses": [\n', encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        _read_responses_file(str(broken))
    assert str(caught.value) == f"`--responses_file` {broken} line 3 is not valid JSON (Expecting value)."
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('\n{"answer": "1", "response": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        _read_responses_file(str(wrong))
    assert str(caught.value) == (
        f"`--responses_file` {wrong} line 2 needs an 'answer' and a 'responses' list, as `--output_file` writes "
        """them; got '{"answer": "1", "response": "a"}'."""
    )

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        _read_responses_file(str(empty))
    assert str(caught.value) == f"`--responses_file` {empty} is empty."

    good = tmp_path / "good.jsonl"
    good.write_text('{"answer": "1", "responses": ["a", "b"]}\n', encoding="utf-8")
    assert _read_responses_file(str(good)) == [{"answer": "1", "responses": ["a", "b"]}]


def test_dataset_files_messages_are_unchanged(tmp_path):
    original = RuntimeError("datasets failed")
    long_line = '{"prompt": "' + "w" * 100
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "w1"}\n\n' + long_line + "\n", encoding="utf-8")
    explained = explain_dataset_error([str(broken)], original)  # parsed as read: the "\n" is inside the string
    assert type(explained) is ValueError
    assert str(explained) == (
        f"`--dataset_files`: {broken} line 3 is not valid JSON (Invalid control character at): "
        """'{"prompt": "wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww'. """
        "Each line must be one JSON object."
    )

    listed = tmp_path / "list.jsonl"
    listed.write_text('{"prompt": "w1"}\n["w2"]\n', encoding="utf-8")
    assert str(explain_dataset_error([str(listed)], original)) == (
        f"`--dataset_files`: {listed} line 2 is a JSON list, not an object: '[\"w2\"]'. "
        """Each line must be one object, e.g. {"prompt": "..."}."""
    )

    array = tmp_path / "array.json"  # one JSON array: `datasets` reads it whole, so it is no line's fault
    array.write_text('[{"prompt": "w1"},\n', encoding="utf-8")
    not_jsonl = tmp_path / "broken.csv"
    not_jsonl.write_text("{not json\n", encoding="utf-8")
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "w1"}\n', encoding="utf-8")
    assert explain_dataset_error([str(array), str(not_jsonl), str(good)], original) is original
    assert explain_dataset_error(None, original) is original
