"""Reading a JSON Lines file line by line, keeping each line's number, so an error can say where the file is wrong.

Two kinds of user file are read with it, each caller wording its own error around the line number: the saved
responses of `trl-esr evaluate --responses_file`, and the `--dataset_files` that `datasets` failed to read. Standard
library only: the trainer's checks (`trl_esr.validation`) import it, and they must stay light.
"""

import json
import os
from collections.abc import Iterator
from typing import Any


class JSONLineError(ValueError):
    """A line of a JSON Lines file that is not valid JSON.

    Carries the parts a caller needs to write its own message: `path` (as given), `line_number` (1-based, blank lines
    counted), `line` (the line's text, stripped) and `msg` (`json`'s description of the problem, without position).
    """

    def __init__(self, path: str | os.PathLike, line_number: int, line: str, msg: str):
        super().__init__(f"{path} line {line_number} is not valid JSON ({msg}).")
        self.path, self.line_number, self.line, self.msg = path, line_number, line, msg


def json_lines(path: str | os.PathLike, errors: str = "strict") -> Iterator[tuple[int, str, Any]]:
    """Yield `(line_number, line, value)` for every non-blank line of the UTF-8 file at `path`: the 1-based number
    (blank lines count, so it is the number an editor shows), the line stripped, and its parsed JSON value (any JSON
    value: whether it must be an object is the caller's rule).

    Raises `JSONLineError` at the first line that is not valid JSON. `errors` is `open`'s: "replace" for a caller that
    is only explaining another error and must not fail on an undecodable byte itself.
    """
    with open(path, encoding="utf-8", errors=errors) as f:
        for line_number, line in enumerate(f, start=1):
            stripped = line.strip()
            if not stripped:
                continue
            try:
                value = json.loads(line)  # the line as read: `strip()` removes more than JSON's whitespace
            except json.JSONDecodeError as error:
                raise JSONLineError(path, line_number, stripped, error.msg) from error
            yield line_number, stripped, value
