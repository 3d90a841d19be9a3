"""The README's two commands are what CI runs: the test command verbatim in .ci/run (relative data dir and all),
so a command that passes in CI passes for a newcomer who copies it."""
import re

from conftest import REPO


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    test_cmd = next(b for b in _bash_blocks(readme) if "pytest" in b and "\n" not in b)
    assert test_cmd.startswith("LEANKD_DATA_DIR=../shared/data ")
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci, f".ci/run must run the README's test command as printed: {test_cmd}"
    assert not any(line.startswith("export LEANKD_DATA_DIR") for line in ci)  # no CI-only data dir


def test_relative_data_dir_is_made_absolute_where_it_enters(tmp_path, monkeypatch):
    from leankd.data.files import resolve_data_dir

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("data") == tmp_path / "data" and resolve_data_dir("data").is_absolute()
    monkeypatch.setenv("LEANKD_DATA_DIR", "./data")
    assert resolve_data_dir(None) == tmp_path / "data"
