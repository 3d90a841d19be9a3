"""The bad-input catalogue: every case is one line on stderr naming the problem and the fix, exit status 2, no
traceback, and nothing already under --out changed. Cases run the CLI in-process (`leankd.cli.main`), so an
unexpected exception fails the test with its traceback; docs/reliability.md lists the same cases."""
import hashlib
import json
import re
import resource
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import leankd.results.store as store_mod
from leankd.cli import main
from leankd.results.store import ResultsStore

from conftest import REPO

TINY = str(REPO / "tests/configs/tiny-cifar10.yaml")
TINY_TEXT = str(REPO / "tests/configs/tiny-sst2.yaml")


def _npz(path: Path, **arrays) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return str(path.parent.parent)


def _cifar(tmp: Path, data_dir: Path, images=None, labels=None, raw: bytes | None = None) -> str:
    """A data dir whose train file is 600 real images (or `images`/`labels`, or `raw` bytes); real test file."""
    root = tmp / "data"
    (root / "cifar10").mkdir(parents=True, exist_ok=True)
    shutil.copy(data_dir / "cifar10" / "cifar10_test.npz", root / "cifar10" / "cifar10_test.npz")
    train = root / "cifar10" / "cifar10_train.npz"
    if raw is not None:
        train.write_bytes(raw)
        return str(root)
    real = np.load(data_dir / "cifar10" / "cifar10_train.npz")
    pick = np.r_[0:60, 5000:5060, 10000:10060, 15000:15060, 20000:20060, 25000:25060, 30000:30060, 35000:35060,
                 40000:40060, 45000:45060]
    np.savez_compressed(train, images=real["images"][pick] if images is None else images,
                        labels=real["labels"][pick] if labels is None else labels, classes=real["classes"])
    return str(root)


def _sst2(tmp: Path, data_dir: Path, bad_row: str | None) -> str:
    """A data dir whose SST-2 train.tsv is the real header and 200 rows plus `bad_row`, or (None) lacks the
    label column; the real dev file."""
    root = tmp / "data" / "glue" / "SST-2"
    root.mkdir(parents=True)
    shutil.copy(data_dir / "glue" / "SST-2" / "dev.tsv", root / "dev.tsv")
    lines = (data_dir / "glue" / "SST-2" / "train.tsv").read_text().splitlines(keepends=True)[:201]
    if bad_row is None:
        lines = [line.split("\t")[0] + "\n" for line in lines]
    (root / "train.tsv").write_text("".join(lines) + (bad_row or ""))
    return str(tmp / "data")


def _write(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return str(path)


def _sidecar(tmp: Path, text: str) -> str:
    (tmp / "m.safetensors").write_bytes(b"\0" * 16)
    (tmp / "m.json").write_text(text)
    return str(tmp / "m.safetensors")


def _sidecar_folder(tmp: Path) -> str:
    (tmp / "m.safetensors").write_bytes(b"\0" * 16)
    (tmp / "m.json").mkdir()
    return str(tmp / "m.safetensors")


def _sst2_raw(tmp: Path, data_dir: Path, edit) -> str:
    """A data dir whose SST-2 train.tsv is `edit`(the real file's header and first 400 lines, as bytes); the real dev
    file."""
    root = tmp / "data" / "glue" / "SST-2"
    root.mkdir(parents=True)
    shutil.copy(data_dir / "glue" / "SST-2" / "dev.tsv", root / "dev.tsv")
    lines = (data_dir / "glue" / "SST-2" / "train.tsv").read_bytes().splitlines(keepends=True)[:401]
    (root / "train.tsv").write_bytes(b"".join(edit(lines)))
    return str(tmp / "data")


def _folder_in_place(tmp: Path, data_dir: Path, file: str) -> str:
    """A data dir with the real data files of `file`'s folder, `file` itself a folder."""
    src = data_dir / Path(file).parent
    (tmp / "data" / file).mkdir(parents=True)
    for f in src.iterdir():
        if f.name != Path(file).name and f.suffix in (".npz", ".tsv"):
            shutil.copy(f, tmp / "data" / Path(file).parent / f.name)
    return str(tmp / "data")


def _stored_teacher(tmp: Path, data_dir: Path, damage: str) -> list[str]:
    """--data-dir and --out: a small data dir, an --out holding the tiny config's stored teacher for it (its files'
    sha256 recorded as leankd records them), then damaged: a flipped byte in its weights, or garbage for its eval
    logits."""
    from leankd.config import load_config
    from leankd.experiment import teachers
    from leankd.tasks import data_identity

    cfg, out, data = load_config(TINY), tmp / "teacher-out", _cifar(tmp, data_dir)
    key = teachers.teacher_key(cfg, data_identity(cfg, Path(data)))
    folder = teachers.teacher_dir(out, key)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 16)
    np.save(folder / "eval_logits.npy", np.zeros((256, 10), np.float32))
    (folder / "model.json").write_text(json.dumps({"model": "resnet8", "weights": "0" * 16}))
    teachers.save_row(out, key, {"experiment": "tiny-cifar10", "role": "teacher", "arm": "teacher", "metrics": {}})
    if damage == "flip":
        data_bytes = bytearray((folder / "model.safetensors").read_bytes())
        data_bytes[1000] ^= 0x01
        (folder / "model.safetensors").write_bytes(bytes(data_bytes))
    else:
        (folder / "eval_logits.npy").write_bytes(b"garbage" * 10)
    return ["--data-dir", data, "--out", str(out)]


def _store(tmp: Path, kind: str) -> str:
    """An --out whose results.db is another program's SQLite file, a newer leankd's store, one with a bad JSON
    cell, or one that another process holds in a write transaction."""
    out = tmp / f"{kind}-out"
    out.mkdir()
    db = out / "results.db"
    with sqlite3.connect(db) as conn:
        if kind == "foreign":
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.close()
    if kind != "foreign":
        ResultsStore(db).insert({"experiment": "x", "role": "student", "arm": "kd", "seed": 0, "metrics": {"a": 1}})
    with sqlite3.connect(db) as conn:
        if kind == "newer":
            conn.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
        if kind == "bad-json":
            conn.execute("UPDATE runs SET metrics = '{oops'")
    conn.close()
    if kind == "busy":  # held until the case ends (the test closes it)
        HELD.append(sqlite3.connect(db, isolation_level=None))
        HELD[-1].execute("BEGIN IMMEDIATE")
    return str(out)


def _file_size_limit(nbytes: int) -> None:
    """RLIMIT_FSIZE of this process lowered (the soft limit: the test puts it back after the case)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


HELD: list = []  # connections a case holds open while leankd runs
TINY_RELATIVE = (REPO / "tests/configs/tiny-cifar10.yaml").read_text().replace(
    "teacher:\n", "teacher:\n  checkpoint: w.safetensors\n")

# (id, argv builder (tmp, out, data_dir) -> argv, what the one line must say (regex))
CASES = [
    # config keys and values
    ("unknown-key", lambda t, o, d: ["run", TINY, "train.epoch=3"], r"unknown key 'train.epoch'.*'train.epochs'"),
    ("hf-style-key", lambda t, o, d: ["run", TINY, "train.learning_rate=0.1"], r"'train.learning_rate'.*'train.lr'"),
    ("hf-epochs-key", lambda t, o, d: ["run", TINY, "train.num_train_epochs=2"], r"did you mean 'train.epochs'"),
    ("arm-key-typo", lambda t, o, d: ["run", TINY, "arms.kd.temprature=2"], r"did you mean 'arms.<name>.temperature'"),
    ("bad-type", lambda t, o, d: ["run", TINY, "train.epochs=abc"], r"train.epochs.*integer"),
    ("negative-lr", lambda t, o, d: ["run", TINY, "train.lr=-1"], r"train.lr.*greater than 0"),
    ("unknown-method", lambda t, o, d: ["run", TINY, "arms.kd.method=foo"], r"arms.kd.method"),
    ("fp16-on-cpu", lambda t, o, d: ["run", TINY, "precision=fp16"], r"fp16 is refused on CPU.*bf16"),
    ("unknown-device", lambda t, o, d: ["run", TINY, "device=tpu9"], r"unknown device 'tpu9'.*auto, cpu"),
    ("no-cuda", lambda t, o, d: ["run", TINY, "device=cuda"], r"CUDA is not available.*device=cpu"),
    ("no-seeds", lambda t, o, d: ["run", TINY, "seeds=[]"], r"seeds.*at least one"),
    ("no-arms", lambda t, o, d: ["run", TINY, "arms={}"], r"at least one arm"),
    ("unknown-model", lambda t, o, d: ["run", TINY, "teacher.model=resnet21"], r"'resnet21'.*'resnet20'"),
    # your own models, by import path
    ("own-model-missing-file", lambda t, o, d: ["run", TINY, f"student.model={t}/nope.py:tiny8"],
     r"student.model: file '.*nope.py' not found"),
    ("own-model-no-function", lambda t, o, d: ["run", TINY, "student.model=" + _write(
        t, "mine.py", "def tiny8(num_classes=10):\n    pass\n") + ":tiny9"], r"no 'tiny9' \(did you mean 'tiny8'\?\)"),
    ("own-model-import-error", lambda t, o, d: ["run", TINY, "student.model=" + _write(
        t, "mine.py", "import no_such_module\n") + ":tiny8"], r"student.model: cannot import .*ModuleNotFoundError"),
    ("own-model-not-a-module", lambda t, o, d: ["run", TINY, "student.model=" + _write(
        t, "mine.py", "def tiny8(num_classes=10):\n    return None\n") + ":tiny8", "--data-dir", str(d), "--out", o],
     r"student.model: '.*mine.py:tiny8' returned a NoneType, not a torch.nn.Module"),
    ("int8-cnn-teacher", lambda t, o, d: ["run", TINY, "teacher.precision=int8"], r"int8.*bf16"),
    ("glue-without-task", lambda t, o, d: ["run", TINY, "data.dataset=glue"], r"data.task is required"),
    ("unknown-glue-task", lambda t, o, d: ["run", TINY_TEXT, "data.task=sst3"], r"sst3.*sst2"),
    ("override-not-kv", lambda t, o, d: ["run", TINY, "train.epochs"], r"not key=value"),
    ("override-not-section", lambda t, o, d: ["run", TINY, "train.lr.x=1"], r"'lr' is not a section"),
    # config files
    ("config-missing", lambda t, o, d: ["run", str(t / "nope.yaml")], r"not found"),
    ("config-not-utf8", lambda t, o, d: ["run", _write(t, "c.yaml", b"name: \xff\xfe\n")], r"not UTF-8"),
    ("yaml-syntax", lambda t, o, d: ["run", _write(t, "c.yaml", "name: x\ntrain: {epochs: 1\n")],
     r"not valid YAML.*line \d+, column \d+"),
    ("yaml-duplicate-key", lambda t, o, d: ["run", _write(t, "c.yaml", "name: x\nseeds: [0]\nseeds: [1]\n")],
     r"line 3, column 1: duplicate key 'seeds'"),
    ("yaml-empty", lambda t, o, d: ["run", _write(t, "c.yaml", "# nothing\n")], r"empty.*configs/"),
    ("yaml-list", lambda t, o, d: ["run", _write(t, "c.yaml", "- a\n- b\n")], r"mapping at the top level"),
    # names used as paths
    ("name-traversal", lambda t, o, d: ["run", TINY, "name=../../x"],
     r"name: '../../x' is used in file names.*letters, digits"),
    ("name-absolute", lambda t, o, d: ["run", TINY, "name=/tmp/x"], r"name: '/tmp/x'"),
    ("arm-name-slash", lambda t, o, d: ["run", TINY, "arms={a/b: {method: plain}}"], r"arm name 'a/b'"),
    # layers
    ("layer-missing", lambda t, o, d: ["run", TINY, "arms.kd.pairs=[layer9.9]", "--data-dir", str(d), "--out", o],
     r"layer9.9"),
    ("layers-unknown-model", lambda t, o, d: ["layers", "resnet21"], r"'resnet21'.*resnet20"),
    # data
    ("data-dir-missing", lambda t, o, d: ["run", TINY, "--data-dir", str(t / "nope"), "--out", o],
     r"does not exist.*--data-dir"),
    ("npz-random-bytes", lambda t, o, d: ["run", TINY, "--data-dir", _cifar(t, d, raw=b"\x93NUMPY garbage" * 50),
                                          "--out", o], r"not an .npz archive"),
    ("npz-zero-images", lambda t, o, d: ["run", TINY, "--data-dir", _cifar(
        t, d, images=np.zeros((0, 32, 32, 3), np.uint8), labels=np.zeros(0, np.int64)), "--out", o], r"no images"),
    ("labels-out-of-range", lambda t, o, d: ["run", TINY, "--data-dir", _cifar(
        t, d, labels=np.r_[np.full(599, 3), 12].astype(np.int64)), "--out", o], r"label 12"),
    ("labels-float", lambda t, o, d: ["run", TINY, "--data-dir", _cifar(
        t, d, labels=np.full(600, 1.5)), "--out", o], r"labels.*float"),
    ("val-size-too-large", lambda t, o, d: ["run", TINY, "data.val_size=600", "--data-dir", _cifar(t, d),
                                            "--out", o], r"val_size"),
    ("glue-file-missing", lambda t, o, d: ["run", TINY_TEXT, "--data-dir", str(t), "--out", o], r"not found"),
    ("glue-bad-label", lambda t, o, d: ["run", TINY_TEXT, "--data-dir", _sst2(t, d, "a fine film\tpositive\n"),
                                        "--out", o], r"train.tsv.*label"),
    ("glue-missing-column", lambda t, o, d: ["run", TINY_TEXT, "--data-dir", _sst2(t, d, None), "--out", o],
     r"train.tsv.*column"),
    # models and layers of the text pair
    ("student-layers-out-of-range", lambda t, o, d: ["run", TINY_TEXT, "student.layers=[1,9]", "--data-dir", str(d),
                                                     "--out", o], r"index 9 is out of range.*0\.\.3"),
    ("text-attention-transfer", lambda t, o, d: ["run", TINY_TEXT, "arms.kd.pairs=skip",
                                                 "arms.kd.feature_losses={attention_transfer: 1}"],
     r"attention_transfer.*hint_mse"),
    ("unknown-feature-loss", lambda t, o, d: ["run", TINY, "arms.kd.feature_losses={hint: 1}"], r"'hint'.*hint_mse"),
    ("negative-cache-budget", lambda t, o, d: ["run", TINY, "cache.max_gb=-1"], r"cache.max_gb.*greater than 0"),
    ("teacher-checkpoint-missing", lambda t, o, d: ["run", TINY, f"teacher.checkpoint={t / 'nope.safetensors'}",
                                                    "--data-dir", str(d), "--out", o], r"nope.safetensors.*not found"),
    # --out
    ("out-is-a-file", lambda t, o, d: ["run", TINY, "--data-dir", str(d), "--out", _write(t, "f", "x")],
     r"--out.*not a folder"),
    ("out-unwritable", lambda t, o, d: ["run", TINY, "--data-dir", str(d), "--out", "/proc/leankd-out"],
     r"--out.*cannot"),
    # report
    ("report-no-store", lambda t, o, d: ["report", "--out", str(t / "empty")], r"no results store"),
    ("report-unknown-experiment", lambda t, o, d: ["report", "--out", o, "--experiment", "nope"], r"no experiment"),
    ("report-garbage-db", lambda t, o, d: ["report", "--out", _garbage_db(t, b"not sqlite at all" * 300)],
     r"results.db.*not a leankd results store"),
    ("report-truncated-db", lambda t, o, d: ["report", "--out", _garbage_db(t, None)],
     r"results.db.*not a leankd results store"),
    ("run-garbage-db", lambda t, o, d: ["run", TINY, "--data-dir", str(d), "--out", _garbage_db(t, b"x" * 5000)],
     r"results.db.*not a leankd results store"),
    # eval
    ("eval-missing-checkpoint", lambda t, o, d: ["eval", str(t / "nope.safetensors")],
     r"'.*nope.safetensors' not found"),
    ("eval-corrupt-sidecar", lambda t, o, d: ["eval", _sidecar(t, "{not json")], r"m.json.*not valid JSON"),
    ("eval-batch-size-0", lambda t, o, d: ["eval", _sidecar(t, "{}"), "--batch-size", "0"], r"--batch-size"),
    # cache
    ("cache-rm-unknown", lambda t, o, d: ["cache", "rm", "nope", "--out", o], r"nope"),
    # numbers: never a boolean, never nan or inf, integers in 64 bits (seeds >= 0), checked before any work
    ("epochs-bool", lambda t, o, d: ["run", TINY, "train.epochs=true"], r"train.epochs: .*not the boolean true"),
    ("lr-not-finite", lambda t, o, d: ["run", TINY, "train.lr=.nan"], r"train.lr: .*finite number"),
    ("seed-too-large", lambda t, o, d: ["run", TINY, "seeds=[9223372036854775808]"], r"seeds.0: .*64 bits"),
    ("plan-flag-nan", lambda t, o, d: ["plan", TINY, "--gpu-tflops", "nan"], r"--gpu-tflops must be a finite"),
    ("layers-model-override", lambda t, o, d: ["layers", "resnet8", "train.epochs=3"], r"model name, not a config"),
    # names: file names under --out stay short enough for the file system
    ("name-too-long", lambda t, o, d: ["run", TINY, "name=" + "a" * 200], r"200 bytes long.*at most 160"),
    # config files: where a bracket or quote was opened; a folder is not a file
    ("yaml-unclosed-bracket", lambda t, o, d: ["run", _write(t, "c.yaml", "name: x\nseeds: [0, 1\ntrain: {}\n")],
     r"the '\[' at line 2, column 8 is never closed.*add the missing '\]'"),
    ("yaml-unclosed-quote", lambda t, o, d: ["run", _write(t, "c.yaml", 'name: "x\nseeds: [0]\n')],
     r"""the '"' at line 1, column 7 is never closed"""),
    ("yaml-stray-bracket", lambda t, o, d: ["run", _write(t, "c.yaml", "seeds: [0]]\n")],
     r"the '\]' at line 1, column 11 closes nothing"),
    ("config-is-a-folder", lambda t, o, d: ["run", str(t)], r"'.*' is a folder, expected a file"),
    ("teacher-checkpoint-relative", lambda t, o, d: ["run", _write(t, "c.yaml", TINY_RELATIVE), "--data-dir",
                                                     _cifar(t, d), "--out", o],
     r"teacher.checkpoint '.*/w.safetensors' not found"),
    ("teacher-checkpoint-is-a-folder", lambda t, o, d: ["run", TINY, f"teacher.checkpoint={t}", "--data-dir",
                                                        _cifar(t, d), "--out", o], r"is a folder, expected a file"),
    # data: a training set of one class, a file with no examples, an empty sentence, Latin-1, a folder for a file
    ("labels-one-class", lambda t, o, d: ["run", TINY, "--data-dir", _cifar(t, d, labels=np.full(600, 3)),
                                          "--out", o], r"every training label in .* is '3'; .*>= 2 classes"),
    ("npz-is-a-folder", lambda t, o, d: ["run", TINY, "--data-dir", _folder_in_place(
        t, d, "cifar10/cifar10_train.npz"), "--out", o], r"cifar10_train.npz' is a folder, expected a file"),
    ("glue-one-class", lambda t, o, d: ["run", TINY_TEXT, "--data-dir", _sst2_raw(
        t, d, lambda ls: [ln for ln in ls if not ln.endswith(b"\t0\n")]), "--out", o],
     r"every training label in .*train.tsv' \(its first 160: data.train_limit\) is '1'"),
    ("glue-header-only", lambda t, o, d: ["run", TINY_TEXT, "--data-dir", _sst2_raw(t, d, lambda ls: ls[:1]),
                                          "--out", o], r"train.tsv' holds no examples \(only its header\)"),
    ("glue-empty-sentence", lambda t, o, d: ["run", TINY_TEXT, "--data-dir", _sst2(t, d, "\t1\n"), "--out", o],
     r"train.tsv' line 202 has an empty 'sentence'"),
    ("glue-latin1", lambda t, o, d: ["run", TINY_TEXT, "--data-dir", _sst2_raw(
        t, d, lambda ls: ls[:201] + ["un caf\u00e9 noir\t1\n".encode("latin-1")]), "--out", o],
     r"train.tsv' line 202 is not UTF-8 text.*save the file as UTF-8"),
    ("glue-file-is-a-folder", lambda t, o, d: ["run", TINY_TEXT, "--data-dir", _folder_in_place(
        t, d, "glue/SST-2/train.tsv"), "--out", o], r"train.tsv' is a folder, expected a file"),
    ("eval-sidecar-is-a-folder", lambda t, o, d: ["eval", _sidecar_folder(t)], r"m.json' .* is a folder"),
    # stored teachers: every file checked against the sha256 recorded when it was stored
    ("teacher-weights-flipped", lambda t, o, d: ["run", TINY, *_stored_teacher(t, d, "flip")],
     r"stored teacher .* is damaged: model.safetensors does not match its sha256"),
    ("teacher-eval-logits-garbage", lambda t, o, d: ["run", TINY, *_stored_teacher(t, d, "garbage")],
     r"stored teacher .* is damaged: eval_logits.npy has 70 bytes"),
    # the results store: read before any write; busy, full and damaged named as such
    ("store-foreign", lambda t, o, d: ["report", "--out", _store(t, "foreign")],
     r"not a leankd results store \(it holds notes and no leankd schema version\)"),
    ("store-newer-schema", lambda t, o, d: ["report", "--out", _store(t, "newer")], r"schema version 6"),
    ("store-bad-json-cell", lambda t, o, d: ["report", "--out", _store(t, "bad-json")],
     r"row 1 has invalid JSON in column 'metrics'.*DELETE FROM runs WHERE id = 1"),
    ("store-busy", lambda t, o, d: ["report", "--out", _store(t, "busy")], r"results.db' is busy: .*store is intact"),
    ("store-file-size-limit", lambda t, o, d: _file_size_limit(1024) or ["run", TINY, "--data-dir", str(d), "--out",
                                                                         str(t / "fresh")],
     r"could not write .*fresh/results.db \(.*\); free disk space or raise the file-size limit"),
]


def _garbage_db(tmp: Path, content: bytes | None) -> str:
    """An --out whose results.db is garbage bytes, or (None) a real store cut to half its size."""
    out = tmp / "bad-out"
    out.mkdir(exist_ok=True)
    db = out / "results.db"
    if content is None:
        ResultsStore(db)
        for extra in ("-wal", "-shm"):
            Path(f"{db}{extra}").unlink(missing_ok=True)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    else:
        db.write_bytes(content)
    return str(out)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, tmp_path, data_dir, capsys, monkeypatch):
    _, argv, expected = case
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.3)  # a busy store is named after 0.3 s here, not 30
    out = tmp_path / "out"
    ResultsStore(out / "results.db")  # something already written
    (out / "notes.txt").write_text("earlier work")
    before = _snapshot(out)
    code, args, before_args = _run_case(argv, tmp_path, out, data_dir)
    err = capsys.readouterr().err.strip()
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = err.splitlines()[-1]  # the error: one line (progress logs may come before it)
    assert re.search(expected, line), line
    assert {k: v for k, v in _snapshot(out).items() if k in before} == before  # nothing written before changed
    for a, snap in before_args.items():
        assert {k: v for k, v in _snapshot(Path(a)).items() if k in snap} == snap


def _run_case(argv, tmp: Path, out: Path, data_dir: Path) -> tuple[int, list[str], dict]:
    """(exit status, argv, snapshots of the folders argv names) of one case; a file-size limit the case set is undone
    after it (a transaction it holds, by `release`)."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        args = [str(a) for a in argv(tmp, str(out), data_dir)]
        before_args = {a: _snapshot(Path(a)) for a in args if Path(a).is_dir() and Path(a) != out}
        return main(args), args, before_args
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)


@pytest.fixture(autouse=True)
def release():
    """Closes the connections a case held open, once it has been checked."""
    yield
    while HELD:
        HELD.pop().close()


def test_every_case_is_in_the_reliability_doc():
    doc = (REPO / "docs" / "reliability.md").read_text()
    missing = [c[0] for c in CASES if f"`{c[0]}`" not in doc]
    assert not missing, f"docs/reliability.md lacks {missing}; regenerate: python tests/test_bad_input.py"


def catalogue(data_dir: Path) -> str:
    """The catalogue as a Markdown table of the exact messages (temporary paths shown as <tmp>)."""
    import contextlib
    import io
    import tempfile

    lines = ["| case | command | exit | message |", "|---|---|---|---|"]
    for name, argv, _ in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            ResultsStore(out / "results.db")
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code, args, _ = _run_case(argv, Path(tmp), out, data_dir)
            while HELD:
                HELD.pop().close()
            shown = " ".join(a.replace(tmp, "<tmp>").replace(str(REPO) + "/", "").replace(str(data_dir), "<data>")
                             for a in args)
            message = err.getvalue().strip().splitlines()[-1].replace(tmp, "<tmp>").replace(str(data_dir), "<data>")
        lines.append(f"| `{name}` | `leankd {shown}` | {code} | {message.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":  # regenerate the table in docs/reliability.md
    import logging
    import os

    logging.disable(logging.INFO)
    store_mod.BUSY_TIMEOUT_S = 0.3
    print(catalogue(Path(os.environ.get("LEANKD_DATA_DIR", REPO.parent / "shared" / "data"))))
