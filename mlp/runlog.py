"""--log PATH: one row per epoch, CSV (LF line ends) or JSON lines for .jsonl/.ndjson
(docs/outputs.md). The file is not touched until the run's first epoch ends, then replaced whole,
then appended a flushed line per epoch (`tail -f`). A resumed run's log is read first, bounded,
and refused in one line naming its first bad line rather than dropping a row. A write that fails
(a full disk) stops the log, not the run: `error` holds it for the command to report.
"""

import csv
import io
import json
import math
from pathlib import Path

from .settings import MAX_COUNT
from .errors import UserError
from .files import atomic_write, read_json, written_path

#: the columns of the --log file, one row per epoch
COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_accuracy", "seconds")
MAX_LOG_BYTES = 64 << 20        # ~800,000 epochs of rows
MAX_LINE_BYTES = 4096           # a row is under 200 bytes
_OPTIONAL = ("val_loss", "val_accuracy")


class EpochLog:
    def __init__(self, path, keep_until: int = 0):
        """A log at `path`; resuming a run (keep_until = the checkpoint's epoch), the rows of an
        existing log up to that epoch are read (and checked) now, and kept."""
        self.path = Path(path)
        self.json = self.path.suffix.lower() in (".jsonl", ".ndjson")
        self.rows = [r for r in self._read() if r["epoch"] <= keep_until] if keep_until else []
        self.file = None
        self.error: OSError | None = None

    def _refuse(self, line: int, why: str) -> UserError:
        return UserError(f"--log {self.path}: line {line} is not a row of this log ({why}); it was left as it "
                         "was: fix or delete that line (or the file), or give another --log")

    def _read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_LOG_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise UserError(f"--log {self.path}: cannot read the log to continue it ({exc.strerror}); "
                            "check its permissions or give another --log") from None
        if len(raw) > MAX_LOG_BYTES:
            raise UserError(f"--log {self.path}: larger than {MAX_LOG_BYTES >> 20} MB, so not a log of ours; "
                            "give another --log")
        rows, previous, header = [], 0, self.json
        for n, line in enumerate(raw.split(b"\n"), start=1):
            line = line.removesuffix(b"\r")
            if not line.strip():
                continue
            if len(line) > MAX_LINE_BYTES:
                raise self._refuse(n, f"{len(line):,} bytes long")
            if b"\0" in line:
                raise self._refuse(n, "it holds a NUL byte")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise self._refuse(n, "not UTF-8 text") from None
            if not header:   # a CSV log starts with its header
                if next(csv.reader([text])) != list(COLUMNS):
                    raise self._refuse(n, f"the header must be {','.join(COLUMNS)}")
                header = True
                continue
            row = self._parse(n, text)
            if row["epoch"] <= previous:
                raise self._refuse(n, f"epoch {row['epoch']} after epoch {previous}")
            previous = row["epoch"]
            rows.append(row)
        return rows

    def _parse(self, n: int, text: str) -> dict:
        if self.json:
            try:
                values = read_json(text)
            except RecursionError:
                raise self._refuse(n, "JSON nested too deeply") from None
            except ValueError as exc:
                raise self._refuse(n, f"not JSON: {str(exc)[:80]}") from None
            if not isinstance(values, dict) or set(values) != set(COLUMNS):
                raise self._refuse(n, f"not an object of the fields {', '.join(COLUMNS)}")
        else:
            try:
                fields = next(csv.reader([text]))
            except csv.Error as exc:
                raise self._refuse(n, f"not CSV: {exc}") from None
            if len(fields) != len(COLUMNS):
                raise self._refuse(n, f"{len(fields)} fields, not {len(COLUMNS)}")
            values = {k: None if v == "" and k in _OPTIONAL else v for k, v in zip(COLUMNS, fields)}
        return {k: self._number(n, k, values[k]) for k in COLUMNS}

    def _number(self, n: int, key: str, value):
        if value is None and key in _OPTIONAL:
            return None
        whole = key in ("epoch", "step")
        try:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise ValueError
            number = int(value) if whole else float(value)
        except (ValueError, OverflowError):
            raise self._refuse(n, f"{key} is {str(value)[:40]!r}, not a {'whole ' if whole else ''}number") from None
        if whole and not (1 if key == "epoch" else 0) <= number <= MAX_COUNT:
            raise self._refuse(n, f"{key} {number} is out of range")
        if key == "val_accuracy" and not 0 <= number <= 1 or key == "seconds" and not 0 <= number < math.inf:
            raise self._refuse(n, f"{key} {value} is out of range")
        return number

    def _text(self, rows, header: bool = False) -> str:
        if self.json:
            return "".join(json.dumps({k: row.get(k) for k in COLUMNS}) + "\n" for row in rows)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([list(COLUMNS)] if header else [])
        writer.writerows([["" if row.get(k) is None else row[k] for k in COLUMNS] for row in rows])
        return buf.getvalue()

    def write(self, row: dict) -> None:
        """Log the epoch that just ended (the first one replaces the old log, whole)."""
        if self.error is not None:
            return
        try:
            if self.file is None:
                with atomic_write(self.path, "w", encoding="utf-8", newline="") as f:
                    f.write(self._text([*self.rows, row], header=True))
                self.file = open(written_path(self.path), "a", encoding="utf-8", newline="")
            else:
                self.file.write(self._text([row]))
                self.file.flush()
            self.rows.append(row)
        except OSError as exc:
            self.error = exc
            self.close()

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError as exc:   # the last flush
                self.error = self.error or exc
            self.file = None
