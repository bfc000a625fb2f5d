"""The repository's own plumbing: CI runs the README's demo command, then its test command (found by its marker,
wherever the block is), in one clone."""

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_demo_block_then_the_block_after_the_marker_in_one_folder(tmp_path):
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "README.md").write_text(
        "```bash\necho demo ran > left_by_demo\n```\n\ntext\n\n```bash\necho other\n"
        "```\n\n<!-- ci: test command -->\n"
        "```bash\ncat left_by_demo && echo pytest ran from the marked block\n```\n"
    )
    r = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-2:] == ["demo ran", "pytest ran from the marked block"]
    (tmp_path / "README.md").write_text("```bash\necho no marker\n```\n")
    r = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no pytest command" in r.stderr


def test_the_readme_marks_its_test_command():
    text = (ROOT / "README.md").read_text()
    marked = text.split("<!-- ci: test command -->\n```bash\n", 1)[1].splitlines()[0]
    assert "pytest" in marked and text.index(marked) < text.index("# ramstrans")  # one of the two set-up commands
