"""Every example of the documentation runs: README.md and docs/**/*.md.

Python blocks (```python) of one file run in order in one namespace, in a fresh working
directory; a comment `# prints: TEXT` says that a line of the block's output is TEXT (the
lines are checked in order). Console blocks (```console) run each `$ moefast ...` command in
one fresh directory per file; the lines shown after a command must appear in its output, in
order (`...` stands for lines left out). A block whose info string carries `no-run`
(```python no-run, ```console no-run) is shown only: code that needs torch, a GPU, a cluster
or a running engine. A failure names the file and the line of the block.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,})(?P<info>[^`]*)$")
PRINTS = re.compile(r"#\s*prints:\s?(?P<text>.*)$")
CLI = "import sys; from moefast.cli import main; sys.exit(main())"


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    language: str
    run: bool
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the line each starts on."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None or not opening["info"].strip():
            i += 1
            continue
        words = opening["info"].split()
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: unclosed code block")
        blocks.append(Block(path, i + 2, words[0], "no-run" not in words[1:], "\n".join(body)))
        i = j + 1
    return blocks


def runnable(language: str) -> list[Path]:
    return [p for p in DOC_FILES if any(b.run and b.language == language for b in blocks_of(p))]


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def check_lines(expected: list[str], output: str, where: str) -> None:
    """Each expected line is a line of the output, in order ('...' skips)."""
    got = [line.strip() for line in output.splitlines()]
    at = 0
    for want in expected:
        want = want.strip()
        if want in ("", "..."):
            continue
        try:
            at = got.index(want, at) + 1
        except ValueError:
            pytest.fail(f"{where}: expected the output line\n  {want}\nin the output:\n{output}")


def test_the_documentation_has_examples() -> None:
    python, console = runnable("python"), runnable("console")
    assert ROOT / "README.md" in python and ROOT / "README.md" in console
    assert len(python) >= 5 and len(console) >= 2


@pytest.mark.parametrize("path", runnable("python"), ids=ids(runnable("python")))
def test_python_examples(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in blocks_of(path):
        if block.language != "python" or not block.run:
            continue
        # Padding with blank lines makes a traceback's line numbers those of the file.
        code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(code, namespace)
        except Exception:
            pytest.fail(f"{block.where}: the example failed:\n{traceback.format_exc()}")
        expected = [m["text"] for m in map(PRINTS.search, block.code.splitlines()) if m]
        check_lines(expected, out.getvalue(), block.where)


def commands(block: Block) -> list[tuple[list[str], list[str], int]]:
    """(moefast arguments, output lines shown, line) of each command of a console block."""
    runs: list[tuple[list[str], list[str], int]] = []
    lines = block.code.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if runs:
                runs[-1][1].append(line)
            i += 1
            continue
        start = i
        text = line[2:]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i].strip()
        words = shlex.split(text, comments=True)
        if not words or words[0] != "moefast":
            pytest.fail(
                f"{block.path.relative_to(ROOT)}:{block.line + start}: only `$ moefast` "
                "commands run; mark the block `console no-run`"
            )
        runs.append((words[1:], [], block.line + start))
        i += 1
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("path", runnable("console"), ids=ids(runnable("console")))
def test_command_lines(path: Path, tmp_path: Path) -> None:
    for block in blocks_of(path):
        if block.language != "console" or not block.run:
            continue
        for args, shown, line in commands(block):
            where = f"{path.relative_to(ROOT)}:{line}"
            done = subprocess.run(
                [sys.executable, "-c", CLI, *args],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=300,
            )
            output = done.stdout + done.stderr
            if done.returncode != 0:
                command = f"moefast {shlex.join(args)}"
                pytest.fail(f"{where}: `{command}` exited {done.returncode}:\n{output}")
            check_lines(shown, output, where)


def test_readme_links_resolve() -> None:
    """The README's relative links (to docs pages and files) name files that exist."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to a missing file: {target}"
