"""Run the commands of README.md and docs/*.md word for word, in a fresh clone: `python tools/run_docs.py`.

The clone is made from this checkout's HEAD in a temporary folder, with the checkout's `../shared`
linked beside it (the docs' `--data-dir ../shared/datasets/mnist-3-7`). In document order:

- a ```bash block's commands run one by one (a line, with its `\` continuations or its heredoc), in
  the clone's root, with the clone's `.venv` active once a command has made it;
- a ```text block's `$ command` lines run one by one, and each line of output shown under a command
  must appear in what it printed (timings, `... s` and `s/epoch`, are compared as numbers of any
  value; a `...` line stands for lines left out). A command whose shown output says `error:`
  must fail; any other must succeed.

Commands that need what a CPU machine lacks (a GPU, other machines, a pid) or that CI runs anyway
(the test suite) are listed as skipped with the reason. Prints one line per command and a total;
exit status 1 when any command failed or printed something other than what the docs show.
"""

import argparse
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = ((r"--device cuda|gpu_check\.sh|gpu_wheels\.sh", "needs a CUDA GPU"),
        (r"tcp://10\.|dask scheduler\b|dask worker\b|/shared/mnist", "needs other machines"),
        (r"<[a-z][^>]*>|\bREPO\b|\bCOMMIT\b", "has a placeholder to fill in"),
        (r"\./mlp-by-hand\b|~/mlp-venv|~/run\b", "uses the clone or venv of the other machines' recipe"),
        (r"(^|&& )pytest\b", "the test suite: CI runs it"),
        (r"download\.pytorch\.org", "needs an index this machine cannot reach"))
TIMING = re.compile(r"\d+(\.\d+)?( ?s\b| s/epoch|s/epoch)")


def blocks(path: Path):
    """(kind, first line number, lines) of each fenced block of a markdown file."""
    kind, start, body = None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and kind is None:
            kind, start, body = fence.group(1) or "plain", number + 1, []
        elif fence:
            yield kind, start, body
            kind = None
        elif kind is not None:
            body.append(line)


def commands(path: Path):
    """(line number, command, shown output lines or None for a bash block) in document order."""
    for kind, start, body in blocks(path):
        if kind == "bash":
            yield from bash_commands(start, body)
        elif kind == "text":
            for i, line in enumerate(body):
                if line.startswith("$ "):
                    shown = list(itertools.takewhile(lambda after: not after.startswith("$ "), body[i + 1:]))
                    yield start + i, line[2:].split("  #")[0].strip(), shown


def bash_commands(start: int, body: list[str]):
    """The commands of a bash block: a line with its continuation lines, or with its heredoc."""
    i = 0
    while i < len(body):
        line, first = body[i], start + i
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lines = [line]
        while lines[-1].rstrip().endswith("\\") and i < len(body):
            lines.append(body[i])
            i += 1
        heredoc = re.search(r"<<-?'?(\w+)'?", line)
        if heredoc:
            while i < len(body):
                lines.append(body[i])
                i += 1
                if lines[-1].strip() == heredoc.group(1):
                    break
        yield first, "\n".join(lines), None


def skipped(command: str) -> str | None:
    return next((why for pattern, why in SKIP if re.search(pattern, command, re.M)), None)


def matches(shown: list[str], printed: str) -> str | None:
    """None when every shown line appears in what was printed (timings as any number), else the first missing."""
    normal = [TIMING.sub("T", line.strip()) for line in printed.splitlines()]
    for line in map(str.strip, shown):
        if line and not line.startswith("...") and TIMING.sub("T", line) not in normal:
            return line
    return None


def run(clone: Path, command: str, timeout: float) -> subprocess.CompletedProcess:
    script = f"set -e\n[ -f .venv/bin/activate ] && . .venv/bin/activate\n{command}\n"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLP_DATA_DIR", "PYTHONPATH")}
    try:
        return subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(command, 124, "", f"timed out after {timeout:g} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/run_docs.py", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help="markdown files, relative to the repository (default: README.md docs/*.md)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per command (default: 900)")
    p.add_argument("--keep", action="store_true", help="keep the clone and print where it is")
    args = p.parse_args(argv)
    files = args.files or ["README.md", *sorted(str(f.relative_to(ROOT)) for f in (ROOT / "docs").glob("*.md"))]
    top = Path(tempfile.mkdtemp(prefix="mlp-docs-"))
    clone = top / "clone"
    failed = 0
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
        if (ROOT.parent / "shared").is_dir():
            (top / "shared").symlink_to(ROOT.parent / "shared")
        for name in files:
            for line, command, shown in commands(clone / name):
                where = f"{name}:{line}"
                head = command.splitlines()[0][:90]
                why = skipped(command)
                if why:
                    print(f"skipped  {where}  {head}  ({why})")
                    continue
                done = run(clone, command, args.timeout)
                expect_failure = shown is not None and any("error:" in s for s in shown)
                missing = matches(shown or [], done.stdout + done.stderr)
                ok = (done.returncode != 0) == expect_failure and missing is None
                failed += not ok
                detail = "" if ok else (f"  exit {done.returncode}" + (f"; not printed: {missing!r}" if missing else "")
                                        + f"; last output: {(done.stderr or done.stdout).strip()[-300:]!r}")
                print(f"{'ok' if ok else 'FAILED':8s} {where}  {head}{detail}", flush=True)
    finally:
        if args.keep:
            print(f"the clone: {clone}")
        else:
            shutil.rmtree(top, ignore_errors=True)
    print(f"{failed} failed" if failed else "every command ran as documented")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
