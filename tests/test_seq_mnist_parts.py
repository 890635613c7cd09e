"""The parts of bench/seq_mnist.py (bench/mnist_irnn/), each on its own:
the import graph, their sizes, settings, batching, the model and its
evaluation, the run directory, atomic writes, the reports, checkpoints and
the process-group teardown."""
import ast
import datetime
import json
import os
import sys

import pytest
import torch

import irnn_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
PACKAGE = os.path.join(BENCH, "mnist_irnn")
sys.path.insert(0, BENCH)
from mnist_irnn import (checkpoints, config, data, distributed,  # noqa: E402
                        evaluation, files, model, reporting)
from mnist_irnn.errors import (CheckpointError, ConfigError,  # noqa: E402
                               DivergedError, OutputError, RunError)
from test_package import find_cycle  # noqa: E402
from test_seq_mnist_defects import FrozenClock  # noqa: E402

MODULES = sorted(name[:-3] for name in os.listdir(PACKAGE)
                 if name.endswith(".py") and name != "__init__.py")


def package_imports(path):
    """The package modules the file at `path` imports."""
    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            inside = node.level == 1 or (node.module or "").startswith(
                "mnist_irnn")
            if not inside:
                continue
            module = (node.module or "").removeprefix("mnist_irnn").lstrip(".")
            if module:
                found.add(module.split(".")[0])
            else:  # from . import a, b
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mnist_irnn."):
                    found.add(alias.name.split(".")[1])
    return found


def test_imports_between_the_parts_run_one_way():
    graph = {m: package_imports(os.path.join(PACKAGE, m + ".py"))
             for m in MODULES}
    for module, imported in graph.items():
        assert imported <= set(MODULES), (module, imported)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the script sits on top; nothing in the package imports it
    for module in MODULES:
        with open(os.path.join(PACKAGE, module + ".py")) as f:
            assert "seq_mnist" not in {
                alias.name for node in ast.walk(ast.parse(f.read()))
                if isinstance(node, ast.Import) for alias in node.names}


def test_package_imports_reads_every_form(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("from . import a\nimport mnist_irnn.c\n")
    assert package_imports(str(tmp_path / "a.py")) == {"b"}
    assert package_imports(str(tmp_path / "b.py")) == {"a", "c"}


def test_no_part_is_long_and_the_package_does_not_shadow_the_script():
    for module in MODULES:
        with open(os.path.join(PACKAGE, module + ".py")) as f:
            assert len(f.readlines()) <= 300, module
    assert not os.path.exists(os.path.join(BENCH, "seq_mnist"))


# ----------------------------------------------------------------- settings

def test_presets_saved_settings_and_flags_layer_in_order():
    resolved = config.resolve_config({"preset": "keras-example",
                                      "epochs": 3})
    assert (resolved["batch_size"], resolved["epochs"]) == (32, 3)
    assert resolved["lr"] == config.DEFAULT_LR["rmsprop"]
    saved = dict(resolved, hidden=8, out="elsewhere")
    resumed = config.resolve_config({"epochs": 5}, saved)
    assert (resumed["hidden"], resumed["epochs"], resumed["out"]) == (8, 5, None)
    with pytest.raises(ConfigError, match="--hidden 16 conflicts"):
        config.resolve_config({"hidden": 16}, saved)
    evaluated = config.resolve_config({"impl": "torch"}, saved,
                                      config.EVAL_MAY_CHANGE)
    assert evaluated["impl"] == "torch"


def test_data_dir_is_saved_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist").mkdir()
    resolved = config.resolve_config({"data_dir": "mnist"})
    assert resolved["data_dir"] == str(tmp_path / "mnist")
    with pytest.raises(ConfigError, match="pass --data-dir"):
        config.resolve_config({}, {"data_dir": "not-here"})


# ----------------------------------------------------- data, model, eval

def test_epoch_order_and_batches():
    assert torch.equal(data.epoch_order(10, 3, 2), data.epoch_order(10, 3, 2))
    assert not torch.equal(data.epoch_order(10, 3, 1),
                           data.epoch_order(10, 3, 2))
    assert data.epoch_batches(10, 4, 1) == [(0, 4), (4, 8), (8, 10)]
    # two ranks: the last batch is cut to an even size, a lone image dropped
    assert data.epoch_batches(9, 4, 2) == [(0, 4), (4, 8)]
    assert data.epoch_batches(11, 4, 2) == [(0, 4), (4, 8), (8, 10)]


@pytest.mark.parametrize("impl", ["fused", "torch", "reference"])
def test_every_impl_gives_the_same_logits(impl):
    torch.manual_seed(0)
    pixels = torch.rand(3, data.STEPS)
    torch.manual_seed(1)
    fused = model.SeqMNISTModel(4, "fused", "irnn")
    torch.manual_seed(1)
    other = model.SeqMNISTModel(4, impl, "irnn")
    assert other.state_dict().keys() == fused.state_dict().keys()
    torch.testing.assert_close(other(pixels), fused(pixels))


def test_crop_lengths_end_after_the_last_nonzero_row():
    pixels = torch.zeros(4, data.STEPS)
    pixels[0, 5] = 0.5              # row 0 only
    pixels[1, 27 * 28 + 3] = 1.0    # the last row
    pixels[2, 10 * 28 + 27] = 0.1   # row 10, last column; row 3 too
    pixels[2, 3 * 28] = 0.2
    # pixels[3] is blank: at least one row
    assert model.crop_lengths(pixels).tolist() == [28, 784, 11 * 28, 28]
    assert model.mean_length((pixels > 0).to(torch.uint8)) == (
        28 + 784 + 11 * 28 + 28) / 4


@pytest.mark.parametrize("impl", ["fused", "torch", "reference"])
def test_variable_length_logits_are_each_image_cropped(impl):
    """--variable-length: every image's logits are those of the same model
    on that image alone, cut after its last non-zero row."""
    g = torch.Generator().manual_seed(2)
    pixels = torch.rand(3, data.STEPS, generator=g)
    pixels[0, 20 * 28:] = 0
    pixels[2, 9 * 28:] = 0
    torch.manual_seed(1)
    cropped = model.SeqMNISTModel(4, impl, "torch", variable_length=True)
    logits = cropped(pixels)
    plain = model.SeqMNISTModel(4, impl, "torch")
    plain.load_state_dict(cropped.state_dict())
    for b, n in enumerate(model.crop_lengths(pixels).tolist()):
        rows = pixels[b:b + 1, :n]
        x = rows.t().unsqueeze(-1)
        rnn = plain.rnn
        h0 = x.new_zeros(1, 1, rnn.hidden_size)
        _, h_n = irnn_cuda.irnn_reference(
            x, h0, [rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0,
                    rnn.bias_hh_l0])
        torch.testing.assert_close(logits[b], plain.fc(h_n[-1])[0])


def test_variable_length_needs_pixel_order():
    with pytest.raises(ConfigError, match="drop --permute or --variable-length"):
        config.resolve_config({"variable_length": True, "permute": True})
    saved = config.resolve_config({})
    del saved["variable_length"]  # a checkpoint from before the flag
    assert config.resolve_config({}, saved)["variable_length"] is False


@pytest.mark.parametrize("variable_length", [False, True])
def test_input_norm_standard_feeds_standardized_pixels(variable_length):
    """--input-norm standard: the layer sees (pixel - mean) / std, the same
    logits as the [0, 1] model fed standardized pixels (the crop lengths
    still come from the raw pixels)."""
    torch.manual_seed(0)
    pixels = torch.rand(3, data.STEPS)
    pixels[:, 500:] = 0  # every image ends early
    torch.manual_seed(1)
    std = model.SeqMNISTModel(4, "fused", "irnn", variable_length,
                              input_norm="standard")
    torch.manual_seed(1)
    unit = model.SeqMNISTModel(4, "fused", "irnn", variable_length)
    standardized = (pixels - model.MNIST_MEAN) / model.MNIST_STD
    if variable_length:
        # the unit model would crop the standardized pixels at their last
        # nonzero value: compare the cropped states instead
        lengths = model.crop_lengths(pixels)
        x = standardized.t().unsqueeze(-1).contiguous()
        torch.testing.assert_close(
            std(pixels), unit.fc(unit._last_state_cropped(x, lengths)))
    else:
        torch.testing.assert_close(std(pixels), unit(standardized))
    with pytest.raises(ValueError, match="input_norm"):
        model.SeqMNISTModel(4, "fused", "irnn", input_norm="minmax")


def test_input_norm_is_saved_and_old_checkpoints_read_unit():
    assert config.resolve_config({})["input_norm"] == "unit"
    saved = config.resolve_config({"input_norm": "standard"})
    assert config.resolve_config({}, saved)["input_norm"] == "standard"
    with pytest.raises(ConfigError, match="input-norm"):
        config.resolve_config({"input_norm": "unit"}, saved)
    del saved["input_norm"]  # a checkpoint from before the flag
    assert config.resolve_config({}, saved)["input_norm"] == "unit"


def test_evaluate_counts_every_image_once():
    torch.manual_seed(0)
    classifier = model.SeqMNISTModel(4, "fused", "irnn")
    images = torch.randint(0, 256, (7, data.STEPS), dtype=torch.uint8)
    labels = torch.randint(0, 10, (7,))
    logits = classifier(data.to_pixels(images))
    expected = (torch.nn.functional.cross_entropy(logits, labels).item(),
                (logits.argmax(1) == labels).float().mean().item())
    loss, acc = evaluation.evaluate(classifier, (images, labels), 3,
                                    distributed.Dist("cpu"))
    assert loss == pytest.approx(expected[0], rel=1e-5)
    assert acc == pytest.approx(expected[1])
    assert classifier.training  # left as it was


# ------------------------------------------------------------ run directory

def test_default_run_dirs_are_unique_within_a_second(tmp_path, monkeypatch):
    monkeypatch.setattr(datetime, "datetime", FrozenClock)
    runs = str(tmp_path / "runs")
    first = files.create_run_dir(None, runs)
    second = files.create_run_dir(None, runs)
    assert first == os.path.join(runs, "20260102-030405")
    assert second == first + "-2"
    for out in (first, second):
        assert os.listdir(out) == ["config.json"]  # claimed


def test_out_must_be_new_or_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert files.create_run_dir(str(empty)) == str(empty)
    with pytest.raises(OutputError, match="already holds files.*--resume"):
        files.create_run_dir(str(empty))  # claimed by the first
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the run directory"):
        files.create_run_dir(str(tmp_path / "file" / "run"))


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.json")
    files.atomic_write(path, "old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OutputError, match=r"cannot write .*metrics.json: No "
                                          r"space left on device"):
        files.atomic_write(path, "new")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_stale_temporaries_are_removed(tmp_path):
    for name in ("last.pt.tmp.123", "metrics.csv.tmp.9", "notes.tmp.txt",
                 "last.pt"):
        (tmp_path / name).write_text("x")
    removed = files.remove_stale_temporaries(str(tmp_path))
    assert sorted(map(os.path.basename, removed)) == [
        "last.pt.tmp.123", "metrics.csv.tmp.9"]
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "notes.tmp.txt"]


def test_metrics_files_and_the_epoch_line(tmp_path):
    rows = [{"epoch": 1, "partial": False, "steps": 3, "train_loss": 2.5,
             "train_acc": 0.25, "skipped_steps": 1, "test_loss": 2.25,
             "test_acc": 0.5, "seconds": 1.5, "samples_per_s": 64.0}]
    reporting.write_metrics(str(tmp_path), rows)
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == rows
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,partial,steps,train_loss")
    assert csv_lines[1].startswith("1,False,3,2.5")
    line = reporting.epoch_line(rows[0], 3)
    assert line.startswith("epoch 1  train_loss 2.5000  train_acc 0.2500  "
                           "skipped 1/3 steps  test_loss 2.2500")


# -------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_and_incomplete_files(tmp_path):
    state = {key: 0 for key in checkpoints.KEYS}
    state.update(config={"hidden": 4}, model={"w": torch.ones(2)},
                 metrics=[])
    path = str(tmp_path / "last.pt")
    checkpoints.save_checkpoint(state, path)
    loaded, found = checkpoints.load_checkpoint(str(tmp_path))
    assert found == path and torch.equal(loaded["model"]["w"], torch.ones(2))
    del state["config"]
    checkpoints.save_checkpoint(state, path)
    with pytest.raises(CheckpointError, match="incomplete.*config"):
        checkpoints.load_checkpoint(path)


def test_every_failure_is_a_one_line_exit():
    for error in (ConfigError, CheckpointError, OutputError, DivergedError):
        exc = error("what went wrong")
        assert isinstance(exc, RunError) and isinstance(exc, SystemExit)
        assert exc.code == "seq_mnist: error: what went wrong"


# -------------------------------------------------------------- distributed

@pytest.mark.parametrize("succeeded, calls", [
    (True, ["barrier", "destroy_process_group"]),
    (False, ["destroy_process_group"])])
def test_ranks_meet_before_the_group_is_destroyed(monkeypatch, succeeded,
                                                  calls):
    d = distributed.Dist("cpu")
    d.enabled = True  # as under torchrun, without starting a group
    made = []
    for name in ("barrier", "destroy_process_group"):
        monkeypatch.setattr(distributed.dist, name,
                            lambda name=name: made.append(name))
    d.close(succeeded)
    assert made == calls
