"""A user's own models run with the default isolated jobs (a child process per job): named by import path
(`FILE.py:FUNCTION`, relative to the config file, or `package.module:FUNCTION`, importable from the working
directory) or registered with `@register_model` in a script that guards its run with `if __name__ == "__main__":`.
Every mistake is one line naming the key and the fix."""
import subprocess
import sys

import pytest
import yaml
from torch import nn

from leankd.api import run_experiment
from leankd.cli import main
from leankd.config import build_config, load_config
from leankd.errors import ConfigError, ModelError
from leankd.metering.ledger import PEAK_CHILD
from leankd.models import create_model, resolve_model
from leankd.models.registry import ORIGINS
from leankd.models.user import IN_JOB_ENV, StartedInJob
from leankd.results.store import ResultsStore

NETS = '''
from torch import nn


def _net(width, num_classes):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def teacher(num_classes=10):
    return _net(16, num_classes)


def student(num_classes=10):
    return _net(8, num_classes)


def not_a_module(num_classes=10):
    return [num_classes]


def no_classes():
    return _net(8, 10)


WIDTH = 8
'''
SMALL = {"data": {"train_limit": 256, "test_limit": 128}, "train": {"epochs": 1, "batch_size": 128, "lr": 0.2},
         "arms": {"plain": {"method": "plain"}, "kd": {"method": "kd"}}, "seeds": [0], "precision": "fp32",
         "metering": {"latency_batches": 20, "latency_warmup": 1}}


def _config(folder, name, teacher, student, **more):
    """A config file in `folder` naming the two models (as written: relative paths stay relative)."""
    folder.mkdir(parents=True, exist_ok=True)
    tree = {"name": name, **SMALL, "teacher": {"model": teacher, "train": {"epochs": 1, "lr": 0.2}},
            "student": {"model": student}, **more}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(tree))
    return folder / f"{name}.yaml"


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def own_run(tmp_path_factory, data_dir):
    """`leankd run` (in this process) of a config naming a teacher and a student in a file beside it."""
    root = tmp_path_factory.mktemp("own")
    (root / "cfg").mkdir()
    (root / "cfg" / "nets.py").write_text(NETS)
    config = _config(root / "cfg", "own", "nets.py:teacher", "nets.py:student")
    out = root / "runs"
    code = main(["run", str(config), "--out", str(out), "--data-dir", str(data_dir)])
    return root, out, code


def test_models_from_a_file_beside_the_config_run_in_isolated_jobs(own_run, capsys):
    root, out, code = own_run
    assert code == 0
    nets = root / "cfg" / "nets.py"
    rows = {r["arm"]: r for r in ResultsStore(out / "results.db").rows("own")}
    assert sorted(rows) == ["kd", "plain", "teacher"]
    assert rows["teacher"]["model"] == f"{nets}:teacher" and rows["kd"]["model"] == f"{nets}:student"
    assert all(r["peak_mem_source"] == PEAK_CHILD for r in rows.values())  # each job ran in its own process
    built = {role: _params(create_model(f"{nets}:{role}", 10)) for role in ("teacher", "student")}
    assert rows["kd"]["params"] == built["student"] < rows["teacher"]["params"] == built["teacher"]
    assert rows["kd"]["teacher_s"] > 0 and "agreement" in rows["kd"]["metrics"]
    saved = yaml.safe_load(next((out / "configs").glob("own-*.yaml")).read_text())
    assert saved["student"]["model"] == f"{nets}:student"  # the absolute path: children and identities see one
    assert (out / "report.md").is_file() and "| kd" in (out / "report.md").read_text()


def test_a_saved_student_is_rebuilt_from_its_import_path(own_run, data_dir, capsys):
    _, out, _ = own_run
    capsys.readouterr()
    ckpt = out / "students" / "own" / "kd-seed0.safetensors"
    assert main(["eval", str(ckpt), "--data-dir", str(data_dir)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "accuracy" in x)
    now, recorded = [float(p.split("%")[0].split()[-1]) for p in line.split("accuracy:")[1].split("(recorded")]
    assert now == recorded


def _package(where, name: str) -> None:
    (where / name).mkdir(parents=True)
    (where / name / "__init__.py").write_text("")
    (where / name / "nets.py").write_text(NETS)


def test_a_module_importable_from_the_working_directory(own_run, data_dir, tmp_path, monkeypatch):
    """`package.module:FUNCTION` from the working directory, as `python -m` has it: imported by each job too. The
    teacher is the stored one of own_run (same settings), so one job runs."""
    root, out, _ = own_run
    _package(tmp_path, "leankd_test_pkg_cwd")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    config = root / "cfg" / "own.yaml"
    assert main(["run", str(config), "name=pkg", "student.model=leankd_test_pkg_cwd.nets:student",
                 "arms={plain: {method: plain}}", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    rows = {r["arm"]: r for r in ResultsStore(out / "results.db").rows("pkg")}
    assert rows["plain"]["model"] == "leankd_test_pkg_cwd.nets:student"
    assert rows["plain"]["peak_mem_source"] == PEAK_CHILD and rows["plain"]["metrics"]["accuracy"] >= 0


def test_a_child_that_cannot_import_the_model_blames_the_key_not_the_teacher(tmp_path, data_dir, monkeypatch,
                                                                               capsys):
    """Importable here (sys.path changed in this process) but not in a job's process: a config error naming
    student.model, raised by the first job (the teacher's), without blaming the teacher."""
    _package(tmp_path / "elsewhere", "leankd_test_pkg_away")
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path / "cfg", "away", "resnet8", "leankd_test_pkg_away.nets:student")
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(tmp_path / "runs"), "--data-dir", str(data_dir)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("config error: student.model: cannot import 'leankd_test_pkg_away.nets' "
                           "(ModuleNotFoundError") and "teacher" not in line


REGISTERED = """

import os
import sys

from leankd.cli import main
from leankd.models import register_model

if os.environ.get("LEANKD_IN_JOB"):  # the test's witness: a job's child process imported this script
    open("imported_by_a_job", "w").close()


@register_model
def reg_s(num_classes=10):
    return student(num_classes)
"""


def _run_line(config, out, data_dir) -> str:
    return (f'main(["run", {str(config)!r}, "name=reg", "student.model=reg_s", "arms={{plain: {{method: plain}}}}", '
            f'"--out", {str(out)!r}, "--data-dir", {str(data_dir)!r}])')


def test_registered_models_of_a_guarded_script_run_in_isolated_jobs(own_run, tmp_path, data_dir):
    """A user's script registers its student and runs `leankd run` naming it, under the guard, with own_run's
    config and out (its teacher is stored there: only the student's job runs)."""
    root, out, _ = own_run
    run = _run_line(root / "cfg" / "own.yaml", out, data_dir)
    guarded = f'\n\nif __name__ == "__main__":\n    sys.exit({run})\n'
    (tmp_path / "train_mine.py").write_text(NETS + REGISTERED + guarded)
    proc = subprocess.run([sys.executable, "train_mine.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["arm"]: r for r in ResultsStore(out / "results.db").rows("reg")}
    assert rows["plain"]["model"] == f"{(tmp_path / 'train_mine.py').resolve()}:reg_s"
    assert rows["plain"]["peak_mem_source"] == PEAK_CHILD and "reusing stored teacher" in proc.stderr
    assert (tmp_path / "imported_by_a_job").is_file()


def test_an_unguarded_script_imported_by_a_job_is_stopped_with_the_guard_to_add(tmp_path, monkeypatch):
    """What a job's child process does with a config naming a script that starts its run unguarded (rebuild the
    config, which imports the script), here in this process: one line naming the key and the guard."""
    (tmp_path / "train_mine.py").write_text(NETS + f"\n\nimport sys\nfrom leankd.cli import main\n\n"
                                            f"sys.exit({_run_line(tmp_path / 'c.yaml', tmp_path, tmp_path)})\n")
    monkeypatch.setenv(IN_JOB_ENV, "1")
    with pytest.raises(ConfigError) as err:
        build_config({"name": "x", "student": {"model": f"{tmp_path / 'train_mine.py'}:student"}})
    assert str(err.value).startswith("config error: student.model: importing ") and "\n" not in str(err.value)
    assert str(err.value).endswith('put your script\'s run under `if __name__ == "__main__":` (each job process '
                                   "imports the file to find its models, as multiprocessing does)")
    with pytest.raises(StartedInJob):  # what the script's run met (cli.main does not swallow it)
        load_config(tmp_path / "c.yaml")


def test_a_model_registered_from_a_file_resolves_to_its_import_path(tmp_path):
    (tmp_path / "regd.py").write_text("from torch import nn\nfrom leankd.models import register_model\n\n\n"
                                      "@register_model\ndef leankd_test_regd(num_classes=10):\n"
                                      "    return nn.Linear(4, num_classes)\n")
    ref = resolve_model("regd.py:leankd_test_regd", tmp_path)
    assert ref == f"{(tmp_path / 'regd.py').resolve()}:leankd_test_regd" == ORIGINS["leankd_test_regd"]
    assert resolve_model("regd.py:leankd_test_regd", tmp_path) == ref  # the file is not executed twice
    assert resolve_model("leankd_test_regd") == ref and resolve_model("resnet8") == "resnet8"


@pytest.mark.parametrize("model, message", [
    ("missing.py:student", "student.model: file '{cfg}/missing.py' not found; give FILE.py:FUNCTION"),
    ("broken.py:student", "student.model: cannot import '{cfg}/broken.py' (RuntimeError: boom); fix the file"),
    ("nets.py:studnet", "student.model: '{cfg}/nets.py' has no 'studnet' (did you mean 'student'?)"),
    ("nets.py:WIDTH", "student.model: '{cfg}/nets.py:WIDTH' is not callable (int)"),
    ("nets.py:no_classes", "student.model: '{cfg}/nets.py:no_classes' cannot be called as fn(num_classes=N)"),
    ("leankd_no_such_pkg.nets:student", "student.model: cannot import 'leankd_no_such_pkg.nets' "
     "(ModuleNotFoundError: No module named 'leankd_no_such_pkg')"),
])
def test_bad_model_paths_are_one_line_config_errors(tmp_path, model, message):
    (tmp_path / "nets.py").write_text(NETS)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    config = _config(tmp_path, "bad", "resnet8", model)
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert str(err.value).startswith("config error: " + message.format(cfg=tmp_path.resolve()))
    assert "\n" not in str(err.value)


def test_a_factory_that_returns_no_module_fails_before_any_job(tmp_path, data_dir):
    (tmp_path / "nets.py").write_text(NETS)
    cfg = load_config(_config(tmp_path, "nomod", "resnet8", "nets.py:not_a_module"))
    with pytest.raises(ModelError, match=r"^model error: student.model: '.*nets.py:not_a_module' returned a list, "
                                         r"not a torch.nn.Module; make it return the model"):
        run_experiment(cfg, data_dir, tmp_path / "runs")
    assert not list((tmp_path / "runs").rglob("model.json"))  # no teacher was trained


def test_import_paths_are_for_vision_models(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    with pytest.raises(ConfigError, match="teacher.model: an import path names a vision model factory; a text "
                                          "model is a Hugging Face name or a local folder"):
        load_config(_config(tmp_path, "txt", "nets.py:teacher", "bert-tiny", data={"dataset": "glue",
                                                                                  "task": "sst2"}))


def test_a_model_registered_where_no_job_can_import_it_needs_in_process_jobs(tmp_path):
    from leankd.models import register_model

    @register_model
    def leankd_test_local(num_classes=10):  # inside a function: no import path reaches it
        return nn.Linear(4, num_classes)

    config = _config(tmp_path, "local", "resnet8", "leankd_test_local")
    with pytest.raises(ConfigError, match="student.model: model 'leankd_test_local' was registered where a job's "
                                          "child process cannot import it from .*metering.isolate_arms=false"):
        load_config(config)
    assert load_config(config, ["metering.isolate_arms=false"]).student.model == "leankd_test_local"


def test_an_edited_model_file_is_a_new_teacher_and_new_rows(tmp_path):
    """A row's identity and the stored teacher's key hash the model file's contents, not only its path: editing
    the file never reuses rows or a teacher trained from the old code."""
    from leankd.experiment import identity, teachers

    (tmp_path / "nets.py").write_text(NETS)
    cfg = load_config(_config(tmp_path, "own", "nets.py:teacher", "nets.py:student"))
    resolved = {"precision": "fp32", "device": "cpu", "views": 1}
    before = (teachers.teacher_key(cfg, []), identity.row_identity(cfg, "plain", ["k", "w"], [], resolved))
    assert before == (teachers.teacher_key(cfg, []), identity.row_identity(cfg, "plain", ["k", "w"], [], resolved))
    (tmp_path / "nets.py").write_text(NETS.replace("_net(8,", "_net(12,"))
    after = (teachers.teacher_key(cfg, []), identity.row_identity(cfg, "plain", ["k", "w"], [], resolved))
    assert after[0] != before[0] and after[1] != before[1]
