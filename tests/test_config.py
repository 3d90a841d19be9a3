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


def test_overrides_win_over_the_file_and_leave_siblings_alone(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train: {epochs: 5, lr: 0.3}\narms: {kd: {method: kd, alpha: 0.5}}\n")
    cfg = load_config(path, ["train.epochs=2", "seeds=[0,1]", "arms.kd.temperature=2", "arms.new.method=plain"])
    assert (cfg.train.epochs, cfg.train.lr) == (2, 0.3)  # the override replaced one key of the section only
    assert cfg.seeds == [0, 1] and cfg.name == "exp"  # YAML values; the name defaults to the file stem
    assert (cfg.arms["kd"].temperature, cfg.arms["kd"].alpha) == (2.0, 0.5)
    assert set(cfg.arms) == {"kd", "new"}


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


def test_budget_matched_arms_are_checked_at_load():
    assert "method 'plain'" in _err("arms.kd.match=plain")
    msg = _err("arms.longer={method: plain, match: kdd}")
    assert msg.startswith("config error: arms.longer.match:") and "'kd'" in msg
    assert "itself budget-matched" in _err("arms.a={method: plain, match: kd}", "arms.b={method: plain, match: a}")
    msg = _err("arms={kd: {method: kd}, longer: {method: plain, match: kd}}")
    assert "unmatched plain arm" in msg and "plain: {method: plain}" in msg
    cfg = load_config(DEMO, ["arms.longer={method: plain, match: kd, match_by: seconds}"])
    assert cfg.base_arm("longer") == "plain" and cfg.arms["longer"].match_by == "seconds"
    # arms without the keys added for matching keep the identity their rows were stored under
    assert set(cfg.arms["kd"].identity()) == set(cfg.arms["kd"].model_dump()) - {"precision", "match", "match_by"}
    assert "match" in cfg.arms["longer"].identity()


def test_an_arms_precision_is_checked_like_the_experiments():
    assert _err("arms.kd.precision=fp16", "device=cpu").startswith("config error: arms.kd.precision=fp16 is refused")
    assert load_config(DEMO, ["arms.kd.precision=fp32"]).arms["kd"].identity()["precision"] == "fp32"


def test_fp16_on_cpu_refused():
    msg = _err("precision=fp16", "device=cpu")
    assert "fp16" in msg and "bf16" in msg


def test_missing_config_file():
    assert "not found" in _err(path="configs/nope.yaml")


def test_bad_override_syntax():
    assert "key=value" in _err("train.epochs")


def test_missing_data_dir_is_one_line_error(tmp_path, monkeypatch):
    from leankd.data.cifar10 import check_cifar10
    from leankd.data.files import resolve_data_dir
    from leankd.errors import DataError

    monkeypatch.delenv("LEANKD_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="--data-dir"):
        resolve_data_dir(None)
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")
    with pytest.raises(DataError, match="cifar10_train.npz' not found"):
        check_cifar10(tmp_path)
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10_train.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not an .npz archive"):
        check_cifar10(tmp_path)


def test_unknown_model_name_suggests_closest():
    msg = _err("teacher.model=resnet2")
    assert "teacher.model" in msg and "did you mean 'resnet20'" in msg


def test_paper_config_is_refused_on_cpu_until_precision_is_changed():
    assert "precision=fp16 is refused on CPU" in _err(path="configs/paper/cifar10-resnet50-resnet18.yaml")
    assert load_config("configs/paper/cifar10-resnet50-resnet18.yaml", ["precision=bf16"]).precision == "bf16"


def test_unknown_device_is_one_line():
    assert "unknown device 'tpu9'" in _err("device=tpu9")


def test_attention_transfer_refused_on_text_layers():
    msg = _err("arms={x: {method: kd, pairs: skip, feature_losses: {attention_transfer: 1}}}",
               path="tests/configs/tiny-sst2.yaml")
    assert "arms.x: attention_transfer" in msg and "hint_mse" in msg


def test_temperature_refused_for_regression_where_kd_is_an_mse():
    msg = _err("data.task=stsb", "arms={kd: {method: kd, temperature: 2.0}}", path="tests/configs/tiny-sst2.yaml")
    assert "arms.kd.temperature does not apply" in msg and "stsb" in msg
    cfg = load_config("tests/configs/tiny-sst2.yaml", ["data.task=stsb", "arms={kd: {method: kd, alpha: 0.5}}"])
    assert cfg.arms["kd"].alpha == 0.5  # the default temperature is not an error: it is never used or recorded


def test_overrides_may_follow_a_flag_on_the_command_line():
    from leankd.cli import parse

    args = parse(["run", DEMO, "seeds=[0]", "--smoke", "device=cpu", "--out", "x", "train.epochs=2"])
    assert args.overrides == ["seeds=[0]", "device=cpu", "train.epochs=2"] and args.smoke and args.out == "x"
    with pytest.raises(SystemExit):
        parse(["report", "a=b"])  # report takes no overrides


def test_a_relative_teacher_checkpoint_is_relative_to_the_config_files_folder(tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "c.yaml").write_text("teacher: {checkpoint: weights/t.safetensors}\n")
    monkeypatch.chdir(tmp_path)  # anywhere but the config's folder
    cfg = load_config("exp/c.yaml")
    assert cfg.teacher.checkpoint == str(tmp_path / "exp" / "weights" / "t.safetensors")
    # on the command line, like any path typed in a shell: relative to the working directory, as given
    assert load_config("exp/c.yaml", ["teacher.checkpoint=t.safetensors"]).teacher.checkpoint == "t.safetensors"


def test_numbers_are_never_booleans_nan_or_beyond_64_bits():
    assert "not the boolean true" in _err("train.epochs=true")
    assert "not the boolean false" in _err("arms.kd.alpha=false")
    assert "finite number" in _err("train.lr=.inf")
    assert "64 bits" in _err("seeds=[0, 9223372036854775808]")
    assert "greater than or equal to 0" in _err("ranking.seed=-1")
    cfg = load_config(DEMO, ["train.epochs='2'", "seeds=[9223372036854775807]"])  # text that is a number still is
    assert cfg.train.epochs == 2 and cfg.seeds == [2**63 - 1]
