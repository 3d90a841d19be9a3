"""Your own data (README "Your own data"): the two example configs run end to end on a small folder of real CIFAR-10
PNGs and on real SST-2 rows written as CSV, a second run reads the decoded images from the cache, and every bad
input is one line naming the file and the fix."""
import csv
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leankd.cli import main
from leankd.config import load_config
from leankd.results.store import ResultsStore

from conftest import REPO

IMAGES = str(REPO / "configs/demo/imagefolder-example.yaml")
TEXT = str(REPO / "configs/demo/textfile-example.yaml")
CLASSES = ("airplane", "automobile", "bird")  # CIFAR-10 classes 0-2; the test npz is class-major, 1000 each
FAST = ["precision=fp32", "metering.isolate_arms=false", "metering.latency_warmup=1", "seeds=[0]",
        "guard.refuse_chance_teacher=false"]  # a one-epoch teacher on 60 images may well be at chance
TINY_VISION = FAST + ["teacher.model=resnet8", "teacher.train.epochs=1", "train.epochs=1",
                      "teacher.train.batch_size=20", "train.batch_size=20"]
TINY_TEXT = FAST + ["teacher.model=bert-tiny", "student.layers=[1]", "data.max_length=16",
                    "teacher.train.batch_size=48", "train.batch_size=48", "teacher.train.freeze_embeddings=true",
                    "train.freeze_embeddings=true"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, data_dir) -> Path:
    """<data>/my-images/{train,test}/<class>/NNN.png: 20 train and 10 test images of 3 classes, real CIFAR-10."""
    root = tmp_path_factory.mktemp("data")
    with np.load(data_dir / "cifar10" / "cifar10_test.npz") as z:
        images = z["images"]
    for c, name in enumerate(CLASSES):
        for split, idx in (("train", range(0, 20)), ("test", range(20, 30))):
            folder = root / "my-images" / split / name
            folder.mkdir(parents=True)
            for i in idx:
                Image.fromarray(images[c * 1000 + i]).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, data_dir) -> Path:
    """<data>/my-text/{train,test}.{csv,jsonl}: 240 + 60 real SST-2 sentences, labels as words."""
    root = tmp_path_factory.mktemp("data")
    (root / "my-text").mkdir()
    with open(data_dir / "glue" / "SST-2" / "train.tsv", encoding="utf-8") as f:
        rows = [r for _, r in zip(range(301), csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))][1:]
    rows = [{"sentence": s, "label": ("negative", "positive")[int(y)]} for s, y in rows]
    for split, part in (("train", rows[:240]), ("test", rows[240:])):
        with open(root / "my-text" / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["sentence", "label"])
            writer.writeheader()
            writer.writerows(part)
        (root / "my-text" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return root


def _run(argv: list[str], capsys):
    """main(argv) must succeed; its captured (out, err)."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured


def _check_rows(rows: list[dict], task: str) -> dict:
    by_arm = {r["arm"]: r for r in rows}
    assert sorted(by_arm) == ["kd", "plain", "teacher"]
    for r in rows:
        assert r["task"] == task
        assert 0 <= r["metrics"]["accuracy"] <= 1 and 0 <= r["metrics"]["macro_f1"] <= 1
        assert r["train_flops"] > 0 and r["params"] > 0
    assert by_arm["kd"]["teacher_s"] > 0 and by_arm["plain"]["teacher_s"] == 0
    assert 0 <= by_arm["kd"]["metrics"]["agreement"] <= 1
    return by_arm


def test_imagefolder_example_end_to_end_and_the_decoded_cache_is_reused(image_dir, tmp_path, capsys, monkeypatch,
                                                                         caplog):
    from leankd.data import imagefolder
    from leankd.tasks import build_task

    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="leankd.data.imagefolder")
    _run(["run", IMAGES, *TINY_VISION, "--data-dir", str(image_dir), "--out", str(out)], capsys)
    decoded = [m.split(" (")[0] for m in caplog.messages if m.startswith("decoding")]
    assert decoded == [f"decoding 60 images of {image_dir / 'my-images' / 'train'}",
                       f"decoding 30 images of {image_dir / 'my-images' / 'test'}"]  # once each, in the parent
    by_arm = _check_rows(ResultsStore(out / "results.db").rows("imagefolder-example"), "imagefolder-my-images")
    student = out / "students" / "imagefolder-example" / "kd-seed0.safetensors"
    assert json.loads(student.with_suffix(".json").read_text())["num_classes"] == 3  # built for the folder's classes
    text = _run(["eval", str(student), "--data-dir", str(image_dir)], capsys).out  # re-scored from the folder
    accuracy = f"{100 * by_arm['kd']['metrics']['accuracy']:.2f}%"
    assert "imagefolder-my-images test (30 samples" in text and f"accuracy: {accuracy}  (recorded at training: " \
        f"{accuracy})" in text
    assert by_arm["kd"]["metrics"]["accuracy"] * 30 == round(by_arm["kd"]["metrics"]["accuracy"] * 30)  # of 30
    assert "imagefolder-my-images" in (out / "report.md").read_text()
    cached = sorted((out / "cache" / "images").glob("*.npz"))
    assert len(cached) == 2  # train and test, decoded once
    stamps = [p.stat().st_mtime_ns for p in cached]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")
    monkeypatch.setattr(imagefolder, "decode", no_decoding)
    monkeypatch.setattr("leankd.api._report", lambda *args: None)  # the report was checked above: skip its plots
    caplog.clear()
    _run(["run", IMAGES, *TINY_VISION, "--data-dir", str(image_dir), "--out", str(out)], capsys)
    assert not [m for m in caplog.messages if m.startswith("decoding")]
    assert len(ResultsStore(out / "results.db").rows("imagefolder-example")) == 3
    assert sorted((out / "cache" / "images").glob("*.npz")) == cached
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    # normalised by the train split's own statistics, not CIFAR-10's constants
    task = build_task(load_config(IMAGES, [f"data.root={image_dir / 'my-images'}"]), image_dir, out / "cache")
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted((image_dir / "my-images" / "train").rglob("*.png"))])
    assert np.allclose(task.norm[0], pixels.reshape(-1, 3).mean(0) / 255, atol=1e-6)
    assert np.allclose(task.norm[1], pixels.reshape(-1, 3).std(0) / 255, atol=1e-6)


def test_textfile_example_end_to_end_with_absolute_paths_and_no_data_dir(text_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LEANKD_DATA_DIR", raising=False)  # absolute paths need no data directory
    files = [f"data.train_file={text_dir / 'my-text' / 'train.csv'}", f"data.eval_file={text_dir / 'my-text/test.csv'}"]
    _run(["run", TEXT, *TINY_TEXT, *files, "--out", str(tmp_path)], capsys)
    by_arm = _check_rows(ResultsStore(tmp_path / "results.db").rows("textfile-example"), "textfile-train")
    assert by_arm["kd"]["extra"]["layers"] == [1]
    text = _run(["eval", str(tmp_path / "students" / "textfile-example" / "kd-seed0")], capsys).out
    accuracy = f"{100 * by_arm['kd']['metrics']['accuracy']:.2f}%"
    assert "textfile-train eval (60 samples" in text and f"accuracy: {accuracy}  (recorded at training: {accuracy})" \
        in text
    assert len(list((tmp_path / "cache" / "tokens").glob("*.npz"))) == 2  # the GLUE path: tokenised once, cached


def test_jsonl_reads_as_the_csv_does_and_integer_labels_sort_numerically(text_dir, tmp_path):
    from leankd.data.textfile import TextFiles

    def files(train: str, eval_: str, **kw):
        cfg = load_config(TEXT, [f"data.train_file={train}", f"data.eval_file={eval_}", *[f"data.{k}={v}" for k, v in
                                                                                          kw.items()]]).data
        return TextFiles(text_dir, cfg)
    csv_, jsonl = files("my-text/train.csv", "my-text/test.csv"), files("my-text/train.jsonl", "my-text/test.jsonl")
    for split in ("train", "eval"):
        a, b = csv_.load(split), jsonl.load(split)
        assert a.texts_a == b.texts_a and a.labels.tolist() == b.labels.tolist() and len(a) in (240, 60)
    assert csv_.label_names == ("negative", "positive")
    rows = [{"q": f"question {i}", "a": f"answer {i}", "y": y} for i, y in enumerate([10, 2, 1, 2, 10])]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = files(str(tmp_path / "pairs.jsonl"), str(tmp_path / "pairs.jsonl"), text_column="q",
                  text_pair_column="a", label_column="y")
    assert pairs.label_names == ("1", "2", "10") and pairs.load("eval").labels.tolist() == [2, 1, 0, 1, 2]
    assert pairs.load("train").texts_b[0] == "answer 0"


def test_a_changed_file_gives_new_data_identities(image_dir, text_dir, tmp_path):
    from leankd.tasks import data_identity

    root = tmp_path / "my-images"
    shutil.copytree(image_dir / "my-images", root)
    cfg = load_config(IMAGES, [f"data.root={root}"])
    before = data_identity(cfg, tmp_path)
    path = root / "train" / "bird" / "000.png"
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    after = data_identity(cfg, tmp_path)
    assert after[0] != before[0] and after[1] == before[1]  # train changed, test did not
    shutil.copy(text_dir / "my-text" / "train.csv", tmp_path / "train.csv")
    tcfg = load_config(TEXT, [f"data.train_file={tmp_path / 'train.csv'}", f"data.eval_file={tmp_path / 'train.csv'}"])
    first = data_identity(tcfg, tmp_path)
    with open(tmp_path / "train.csv", "a") as f:
        f.write("one more sentence,positive\n")
    assert data_identity(tcfg, tmp_path) != first


def _images(t: Path, d: Path, change=None) -> list[str]:
    """--data-dir of a copy of the image folder, after `change(root)`."""
    root = t / "data" / "my-images"
    shutil.copytree(d / "my-images", root)
    if change is not None:
        change(root)
    return ["--data-dir", str(t / "data")]


def _text(t: Path, content: str | None, **kw) -> list[str]:
    """Overrides pointing the textfile example at `content` written to t/train.csv (None: a folder there)."""
    path = t / "train.csv"
    path.mkdir() if content is None else path.write_text(content)
    files = {"train_file": str(path), "eval_file": str(path), **kw}
    return [f"data.{k}={v}" for k, v in files.items()]


EVAL_WITH_NEW_LABEL = "sentence,label\nc,x\n"


def _corrupt(root: Path) -> None:
    (root / "train" / "bird" / "007.png").write_bytes(b"\x89PNG not really" * 20)


def _resize(root: Path) -> None:
    Image.new("RGB", (48, 40)).save(root / "test" / "bird" / "020.png")


CASES = [  # (id, argv builder (tmp, image data dir, text data dir) -> argv after the config, message regex)
    ("root-missing", lambda t, i, x: [IMAGES, "data.root=nope", "--data-dir", str(i)], r"data.root '.*nope' not found"),
    ("root-is-a-file", lambda t, i, x: [IMAGES, f"data.root={IMAGES}"], r"is a file, not a folder"),
    ("no-test-folder", lambda t, i, x: [IMAGES, *_images(t, i, lambda r: shutil.rmtree(r / "test"))],
     r"no test/ or val/ folder"),
    ("empty-class-folder", lambda t, i, x: [IMAGES, *_images(t, i, lambda r: (r / "train" / "cat").mkdir())],
     r"class folder '.*train/cat' holds no .png/.jpg/.jpeg images"),
    ("test-class-not-in-train", lambda t, i, x: [IMAGES, *_images(t, i, lambda r: shutil.copytree(
        r / "test" / "bird", r / "test" / "cat"))], r"'.*test/cat' has no counterpart in train/"),
    ("corrupt-image", lambda t, i, x: [IMAGES, *_images(t, i, _corrupt)], r"'.*bird/007.png' is not a readable image"),
    ("sizes-differ", lambda t, i, x: [IMAGES, "data.image_size=null", *_images(t, i, _resize)],
     r"images differ in size.*020.png' is 48x40; set data.image_size=N"),
    ("one-class", lambda t, i, x: [IMAGES, *_images(t, i, lambda r: [shutil.rmtree(r / s / c) for s in (
        "train", "test") for c in CLASSES[1:]])], r"every label is 'airplane'; distillation needs >= 2 classes"),
    ("textfile-no-columns", lambda t, i, x: [TEXT, "data.text_column=null"], r"needs data.text_column"),
    ("textfile-key-on-cifar", lambda t, i, x: [str(REPO / "tests/configs/tiny-cifar10.yaml"), "data.root=x"],
     r"data.root applies to data.dataset=imagefolder only"),
    ("textfile-missing-file", lambda t, i, x: [TEXT, "--data-dir", str(t)], r"data.train_file '.*train.csv' not found"),
    ("textfile-is-a-folder", lambda t, i, x: [TEXT, *_text(t, None)], r"train.csv' is a folder, not a file"),
    ("textfile-empty", lambda t, i, x: [TEXT, *_text(t, "")], r"train.csv' is empty"),
    ("textfile-missing-column", lambda t, i, x: [TEXT, *_text(t, "text,label\na,b\n")],
     r"no column 'sentence' \(data.text_column\); its columns are \['text', 'label'\]"),
    ("textfile-one-class", lambda t, i, x: [TEXT, *_text(t, "sentence,label\na,pos\nb,pos\n")],
     r"every label in '.*train.csv' is 'pos'; distillation needs >= 2 classes"),
    ("textfile-row-without-label", lambda t, i, x: [TEXT, *_text(t, "sentence,label\na,pos\nb\n")],
     r"train.csv' line 3 has no value in column 'label'"),
    ("textfile-unknown-eval-label", lambda t, i, x: [TEXT, *_text(t, "sentence,label\na,pos\nb,neg\n"),
                                                      f"data.eval_file={_write(t, 'e.csv', EVAL_WITH_NEW_LABEL)}"],
     r"e.csv' line 2 has label 'x', which the train file lacks"),
    ("textfile-bad-jsonl", lambda t, i, x: [TEXT, f"data.train_file={_write(t, 't.jsonl', '[1, 2]')}",
                                            f"data.eval_file={t / 't.jsonl'}"], r"t.jsonl' line 1 is a JSON list"),
    ("textfile-unknown-format", lambda t, i, x: [TEXT, f"data.train_file={_write(t, 't.xlsx', 'x')}",
                                                 f"data.eval_file={t / 't.xlsx'}"], r"unknown format '.xlsx'"),
]


def _write(t: Path, name: str, text: str) -> Path:
    (t / name).write_text(text)
    return t / name


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_user_data_is_one_line_exit_2_before_any_work(case, image_dir, text_dir, tmp_path, capsys):
    _, argv, expected = case
    out = tmp_path / "out"
    code = main(["run", *argv(tmp_path, image_dir, text_dir), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert re.search(expected, err.splitlines()[-1]), err.splitlines()[-1]
    assert not out.exists()  # refused before any work: --out not even created


def test_parquet_without_pyarrow_names_the_install(tmp_path, capsys):
    try:
        import pyarrow  # noqa: F401
        pytest.skip("pyarrow is installed here: Parquet is read")
    except ImportError:
        pass
    path = _write(tmp_path, "t.parquet", "PAR1")
    code = main(["run", TEXT, f"data.train_file={path}", f"data.eval_file={path}", "--out", str(tmp_path / "o")])
    assert code == 2 and "pip install pyarrow" in capsys.readouterr().err.strip().splitlines()[-1]
