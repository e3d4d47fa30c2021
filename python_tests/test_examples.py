"""The example scripts run end to end on tiny settings: the loss falls, the result files are written and
hold what they should, runs repeat exactly, and fine-tuning really trains the centroids."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def restore_torch_globals():
    """The examples switch on deterministic algorithms and set the thread count for the whole process;
    undo that so later tests (CUDA ones especially) run as they would alone."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_example("train_digits")


@pytest.fixture(scope="module")
def common():
    load_example("train_digits")  # puts examples/ on sys.path, as the scripts do
    return sys.modules["common"]


def fell(losses, part=0.25):
    """Mean of the last `part` of a loss curve is below the mean of its first `part`."""
    k = max(1, int(len(losses) * part))
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


@pytest.mark.parametrize("name", ["train_digits", "train_many_classes", "make_figures"])
def test_help(name, capsys):
    module = load_example(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_train_digits_writes_table(digits, tmp_path):
    result = digits.main(["--seeds", "2", "--epochs", "2", "--no-progress", "--out", str(tmp_path)])
    labels = [label for label, *_ in digits.METHODS.values()]
    assert [row["label"] for row in result["rows"]] == labels
    written = json.loads((tmp_path / "digits_accuracy.json").read_text())
    assert written["command"].startswith("python examples/train_digits.py --seeds 2")
    for row in written["rows"]:
        assert len(row["accuracies"]) == 2
        assert all(0.0 <= a <= 1.0 for a in row["accuracies"])
        assert row["mean"] == pytest.approx(sum(row["accuracies"]) / 2)
        for epoch_losses in row["epoch_losses"]:
            assert epoch_losses[1] < epoch_losses[0], row["method"]
        # Two epochs on 898 images already beat chance (10%) by far.
        assert row["mean"] > 0.5, row
    table = (tmp_path / "digits_accuracy.md").read_text()
    body = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0][2:] for line in body] == labels
    assert written["command"] in table


def test_train_digits_is_deterministic(digits):
    args = digits.parse_args(["--epochs", "1", "--no-progress", "--classes", "4"])
    data = digits.load_digits_split(classes=4)
    first = digits.run_one("pedcc_n2", 3, data, args)
    second = digits.run_one("pedcc_n2", 3, data, args)
    assert first == second


def test_finetuning_trains_the_centroids(common):
    train_x, train_y, _, _ = common.load_digits_split(classes=4)
    common.make_deterministic(0)
    model = common.DigitsNet(8)
    head = common.make_head("pedcc", 4, 8, s=15.0, m=0.5)
    before = head.criterion.centroids.clone()
    common.train(model, head, train_x, train_y, epochs=2, batch_size=64, lr=0.05, finetune_epoch=1,
                 finetune_lr=0.01, progress=False)
    assert head.criterion.finetuning
    assert isinstance(head.criterion.centroids, torch.nn.Parameter)
    assert (head.criterion.centroids.detach() - before).abs().max() > 1e-4

    fixed = common.make_head("pedcc", 4, 8, s=15.0, m=0.5)
    common.train(common.DigitsNet(8), fixed, train_x, train_y, epochs=1, batch_size=64, lr=0.05,
                 progress=False)
    assert not fixed.criterion.finetuning
    assert torch.equal(fixed.criterion.centroids, before)


def test_make_figures_writes_pngs(tmp_path):
    figures = load_example("make_figures")
    # 4 classes in 2-D and 3-D, and 4 and 6 centroids in 3-D, fit the closed-form generators.
    summary = figures.main(["--epochs", "2", "--classes", "4", "--centroid-counts", "4,6", "--no-progress",
                            "--out", str(tmp_path)])
    for key in ("fig2", "fig3"):
        png = tmp_path / summary[key]["file"]
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 10_000
    record = json.loads((tmp_path / "figures.json").read_text())
    assert set(record["fig2"]["models"]) == {f"{k}_d{d}" for k in ("ce", "am", "pedcc") for d in (2, 3)}
    for name, model in record["fig2"]["models"].items():
        assert model["epoch_losses"][1] < model["epoch_losses"][0], name
    assert record["fig3"]["centroids"]["4"]["max_cos"] == pytest.approx(-1 / 3, abs=1e-5)
    assert record["fig3"]["centroids"]["6"]["max_cos"] == pytest.approx(0.0, abs=1e-5)

    figures.main(["--only", "fig3", "--centroid-counts", "4", "--out", str(tmp_path)])
    merged = json.loads((tmp_path / "figures.json").read_text())
    assert "fig2" in merged and list(merged["fig3"]["centroids"]) == ["4"]


def test_train_many_classes_fused_and_unfused(tmp_path):
    many = load_example("train_many_classes")
    result = many.main(["--device", "cpu", "--classes", "64", "--dim", "32", "--input-dim", "32",
                        "--hidden", "64", "--batch-size", "64", "--steps", "30", "--warmup", "2",
                        "--no-progress", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "many_classes.json").read_text())
    assert [row["backend"] for row in written["rows"]] == ["auto", "reference"]
    fused, unfused = written["rows"]
    for row in (fused, unfused):
        assert len(row["losses"]) == 32
        assert fell(row["losses"]), row["losses"]
        assert row["samples_per_s"] > 0 and row["peak_memory_mib"] > 0 and row["step_memory_mib"] >= 0
    # Same seed, same data, same initial model: both backends start from the same loss.
    assert fused["losses"][0] == pytest.approx(unfused["losses"][0], rel=1e-5)
    table = (tmp_path / "many_classes.md").read_text()
    assert "| fused (auto) |" in table and "| unfused (reference) |" in table
    assert result["rows"] == written["rows"]
