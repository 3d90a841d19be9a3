"""The bad-input catalogue: every case is one line on stderr naming the problem and the fix, exit status 2, no
traceback, and nothing already under --out changed. Cases run the CLI in-process (`leankd.cli.main`), so an
unexpected exception fails the test with its traceback; docs/reliability.md lists the same cases."""
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

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
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, tmp_path, data_dir, capsys):
    _, argv, expected = case
    out = tmp_path / "out"
    ResultsStore(out / "results.db")  # something already written
    (out / "notes.txt").write_text("earlier work")
    before = _snapshot(out)
    args = argv(tmp_path, str(out), data_dir)
    before_args = {a: _snapshot(Path(a)) for a in args if Path(a).is_dir() and Path(a) != out}
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    line = err.splitlines()[-1]  # the error: one line (progress logs may come before it)
    assert re.search(expected, line), line
    assert {k: v for k, v in _snapshot(out).items() if k in before} == before  # nothing written before changed
    for a, snap in before_args.items():
        assert {k: v for k, v in _snapshot(Path(a)).items() if k in snap} == snap


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
            args = argv(Path(tmp), str(out), data_dir)
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(args)
            shown = " ".join(a.replace(tmp, "<tmp>").replace(str(REPO) + "/", "").replace(str(data_dir), "<data>")
                             for a in args)
            message = err.getvalue().strip().splitlines()[-1].replace(tmp, "<tmp>").replace(str(data_dir), "<data>")
        lines.append(f"| `{name}` | `leankd {shown}` | {code} | {message.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":  # regenerate the table in docs/reliability.md
    import logging
    import os

    logging.disable(logging.INFO)
    print(catalogue(Path(os.environ.get("LEANKD_DATA_DIR", REPO.parent / "shared" / "data"))))
