"""Selective layer distillation end to end on a real CIFAR-10 slice: `leankd run` with preset, ranked and
features-only arms; `leankd layers` listing and `--rank`; a bad layer name fails before any training."""
import pytest

from leankd.results.store import ResultsStore

from test_end_to_end import leankd

ARMS = ("arms={plain: {method: plain}, skip: {method: kd, pairs: skip}, "
        "auto: {method: kd, pairs: auto, feature_losses: {attention_transfer: 1000}}, "
        "feat: {method: features, pairs: [{student: 0, teacher: 2}]}}")
CONFIG = ["tests/configs/tiny-cifar10.yaml", "teacher.model=resnet20", "name=tiny-selective"]


@pytest.fixture(scope="module")
def selective_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs")
    proc = leankd("run", *CONFIG, ARMS, "--out", str(out), data_dir=data_dir)
    return out, proc


def test_feature_arms_record_their_layer_pairs_and_costs(selective_run):
    out, proc = selective_run
    rows = {r["arm"]: r for r in ResultsStore(out / "results.db").rows("tiny-selective")}
    assert set(rows) == {"teacher", "plain", "skip", "auto", "feat"}
    assert rows["skip"]["extra"]["teacher_layers"] == [2, 5, 8]
    assert [p["teacher"] for p in rows["skip"]["extra"]["layer_pairs"]] == ["layer1.2", "layer2.2", "layer3.2"]
    assert rows["skip"]["extra"]["layer_pairs"][0]["adapter"] == "none"  # 16 channels on both sides
    auto = rows["auto"]["extra"]
    assert auto["ranking"]["by"] == "ablation" and len(auto["teacher_layers"]) == 3
    assert auto["teacher_layers"] == sorted(auto["teacher_layers"])
    # the ranking's seconds are charged to the one job that uses it (one auto arm x one seed), as a stated share
    assert rows["auto"]["ranking_share_s"] == auto["ranking"]["seconds"] > 0
    assert rows["auto"]["total_s"] == rows["auto"]["train_s"] + rows["auto"]["ranking_share_s"]
    assert "/ 1 job(s) of this experiment" in rows["auto"]["sources"]["ranking_share_s"]
    assert rows["skip"]["ranking_share_s"] == 0 and rows["skip"]["total_s"] == rows["skip"]["train_s"]
    # features only: the teacher stops after block 2 (layer1.2), so it costs far less than a full forward
    assert rows["feat"]["extra"]["teacher_flops"] < 0.5 * rows["skip"]["extra"]["teacher_flops"]
    assert rows["feat"]["train_flops"] < rows["skip"]["train_flops"]
    report = (out / "report.md").read_text()  # the full ledger; the terminal shows the headline and points to it
    assert "| teacher layers |" in report and "| 2,5,8 |" in report and "Full ledger (every figure)" in proc.stdout
    assert "layer pairs (student <- teacher)" in proc.stderr


def test_layers_rank_reuses_the_stored_ranking(selective_run, data_dir):
    out, _ = selective_run
    text = leankd("layers", *CONFIG, ARMS, "--rank", "--out", str(out), data_dir=data_dir).stdout
    lines = [line for line in text.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert len(lines) == 9 and "reused the stored ranking" in text
    auto = ResultsStore(out / "results.db").rows("tiny-selective")
    picks = next(r for r in auto if r["arm"] == "auto")["extra"]["teacher_layers"]
    assert f"distils teacher layers {picks}" in text


def test_layers_lists_candidates_with_shapes(data_dir):
    text = leankd("layers", "resnet20", data_dir=data_dir).stdout
    assert "9 candidate layers" in text and "layer3.2  (1, 64, 8, 8)" in text


def test_unknown_layer_fails_before_training(tmp_path, data_dir):
    proc = leankd("run", *CONFIG, "arms={x: {method: kd, pairs: [0, layr2.0, 8]}}", "--out", str(tmp_path),
                  data_dir=data_dir, check=False)
    assert proc.returncode == 2 and "arm 'x'" in proc.stderr and "did you mean 'layer2.0'" in proc.stderr
    errors = [line for line in proc.stderr.strip().splitlines() if " INFO " not in line]
    assert len(errors) == 1 and errors[0].startswith("arm 'x': layer error")
    assert not (tmp_path / "teachers").exists()  # nothing trained
