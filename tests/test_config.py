"""Config errors are one line, name the key and suggest the fix."""
import pytest

from leankd.config import ConfigError, load_config

DEMO = "configs/demo/cifar10-resnet20-resnet8.yaml"


def _err(*overrides, path=DEMO):
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_demo_config_loads_with_overrides():
    cfg = load_config(DEMO, ["train.epochs=2", "seeds=[0,1]", "arms.kd.temperature=2"])
    assert cfg.train.epochs == 2 and cfg.seeds == [0, 1] and cfg.arms["kd"].temperature == 2.0


def test_unknown_key_suggests_closest():
    assert "did you mean 'train.epochs'" in _err("train.epoch=3")
    assert "unknown key 'teacher.modle'" in _err("teacher.modle=resnet8")
    assert "arms.<name>.temperature" in _err("arms.kd.temprature=3")


def test_wrong_type_names_key():
    msg = _err("train.epochs=abc")
    assert "train.epochs" in msg and "abc" in msg


def test_bad_layer_pairs_name_the_arm_key():
    msg = _err("arms.kd.pairs=lst")
    assert msg.startswith("config error: arms.kd.pairs:") and "'last'" in msg and "'lst'" in msg
    assert "arms.kd.pairs.0:" in _err("arms.kd.pairs=[1.5]")


def test_fp16_on_cpu_refused():
    msg = _err("precision=fp16", "device=cpu")
    assert "fp16" in msg and "bf16" in msg


def test_missing_config_file():
    assert "not found" in _err(path="configs/nope.yaml")


def test_bad_override_syntax():
    assert "key=value" in _err("train.epochs")


def test_missing_data_dir_is_one_line_error(tmp_path, monkeypatch):
    from leankd.data.cifar10 import DataError, resolve_data_dir, check_cifar10

    monkeypatch.delenv("LEANKD_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="--data-dir"):
        resolve_data_dir(None)
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")
    with pytest.raises(DataError, match="cifar10_train.npz' not found"):
        check_cifar10(tmp_path)
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10_train.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        check_cifar10(tmp_path)


def test_unknown_model_name_suggests_closest():
    msg = _err("teacher.model=resnet2")
    assert "teacher.model" in msg and "did you mean 'resnet20'" in msg


def test_paper_config_is_for_gpus_and_loads_with_cpu_precision():
    assert "fp16" in _err(path="configs/paper/cifar10-resnet50-resnet18.yaml")
    cfg = load_config("configs/paper/cifar10-resnet50-resnet18.yaml", ["precision=bf16"])
    assert (cfg.teacher.model, cfg.student.model, cfg.train.batch_size, cfg.train.epochs) == ("resnet50", "resnet18", 64, 50)
    assert cfg.train.optimizer == "adam" and cfg.train.lr == 0.001
