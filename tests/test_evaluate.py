"""common/evaluate.py: each protocol on tiny data with a known answer, kNN against brute force, the CLI.

Known answers: well-separated classes reach 100% with the kNN, the linear probe (precomputed and
augmented on a frozen body) and fine-tuning; random labels stay near chance (10%); the kNN matches a
plain numpy implementation; the command line on a SimCLR smoke run reproduces the run's own kNN monitor
and writes the linear probe's JSON.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from common import data, evaluate

# --------------------------------------------------------------------------------------------------
# kNN and accuracy against plain numpy
# --------------------------------------------------------------------------------------------------


def knn_bruteforce(train_f, train_y, test_f, test_y, num_classes, k, temperature):
    """DINO's weighted kNN written out with loops over test examples."""
    train_n = train_f / np.linalg.norm(train_f, axis=1, keepdims=True)
    top1 = top5 = 0
    for f, y in zip(test_f, test_y):
        sim = train_n @ (f / np.linalg.norm(f))
        nearest = np.argsort(-sim, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for i in nearest:
            votes[train_y[i]] += np.exp(sim[i] / temperature)
        ranked = np.argsort(-votes, kind="stable")
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
    return 100.0 * top1 / len(test_y), 100.0 * top5 / len(test_y)


@pytest.mark.parametrize("seed,k,temperature", [(0, 5, 0.1), (1, 20, 0.07), (2, 1, 1.0)])
def test_knn_matches_bruteforce(seed, k, temperature):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, 6))
    train_y = rng.integers(0, 8, 120)
    test_y = rng.integers(0, 8, 45)
    # Noisy clusters: neither chance nor perfect, so a wrong vote or ranking changes the numbers.
    train_f = centers[train_y] + 1.2 * rng.normal(size=(120, 6))
    test_f = centers[test_y] + 1.2 * rng.normal(size=(45, 6))
    want_top1, want_top5 = knn_bruteforce(train_f, train_y, test_f, test_y, 8, k, temperature)
    got = evaluate.knn_classify(train_f, train_y, test_f, test_y, 8, k=k, temperature=temperature, chunk=16)
    assert 15 < want_top1 < 95  # the case is informative
    np.testing.assert_allclose([got["top1"], got["top5"]], [want_top1, want_top5], atol=1e-9)


def test_topk_accuracy_by_hand():
    logits = np.array(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0],  # predicts 1, label 1: top-1 hit
            [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 1 is second: top-5 hit only
            [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 6 is last: miss
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )  # ties go to the lowest index: 0 hits
    got = evaluate.topk_accuracy(logits, np.array([1, 1, 6, 0]))
    assert got == {"top1": 50.0, "top5": 75.0}


# --------------------------------------------------------------------------------------------------
# Linear probe and kNN on synthetic features
# --------------------------------------------------------------------------------------------------


def clusters(rng, n, num_classes, dim, spread):
    labels = rng.integers(0, num_classes, n)
    centers = np.random.default_rng(123).normal(size=(num_classes, dim)) * 5.0  # same for train and test
    return (centers[labels] + spread * rng.normal(size=(n, dim)) + 3.0).astype(np.float32), labels


def test_separable_features_reach_100_percent():
    rng = np.random.default_rng(0)
    train_f, train_y = clusters(rng, 600, 10, 16, 0.3)
    test_f, test_y = clusters(rng, 300, 10, 16, 0.3)
    linear = evaluate.linear_probe(train_f, train_y, test_f, test_y, 10, epochs=10, batch_size=64)
    knn = evaluate.knn_classify(train_f, train_y, test_f, test_y, 10)
    assert linear == {"top1": 100.0, "top5": 100.0}
    assert knn == {"top1": 100.0, "top5": 100.0}


def test_linear_probe_needs_a_linear_boundary_not_a_lookup():
    # Labels = sign of one coordinate among 8 noise dimensions: learnable by a linear probe (~100%),
    # and a regression check that training happens at all (zero weights would score ~50%).
    rng = np.random.default_rng(1)
    train_f = rng.normal(size=(800, 8)).astype(np.float32)
    test_f = rng.normal(size=(400, 8)).astype(np.float32)
    train_y, test_y = (train_f[:, 3] > 0).astype(int), (test_f[:, 3] > 0).astype(int)
    linear = evaluate.linear_probe(train_f, train_y, test_f, test_y, 2, epochs=20, batch_size=64)
    assert linear["top1"] >= 97.0


def test_random_labels_stay_near_chance():
    rng = np.random.default_rng(2)
    train_f = rng.normal(size=(3000, 32)).astype(np.float32)
    test_f = rng.normal(size=(2000, 32)).astype(np.float32)
    train_y, test_y = rng.integers(0, 10, 3000), rng.integers(0, 10, 2000)
    linear = evaluate.linear_probe(train_f, train_y, test_f, test_y, 10, epochs=5)
    knn = evaluate.knn_classify(train_f, train_y, test_f, test_y, 10)
    for scores in (linear, knn):  # chance: 10% top-1, 50% top-5; binomial sd over 2000 is ~0.7 / 1.1
        assert 6.5 < scores["top1"] < 13.5, scores
        assert 44.0 < scores["top5"] < 56.0, scores


# --------------------------------------------------------------------------------------------------
# Protocols on a tiny body and tiny images
# --------------------------------------------------------------------------------------------------


class TinyBody(nnx.Module):
    """conv 3x3 -> BN -> ReLU -> global mean pool: [B, H, W, 3] -> [B, 8]."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)

    def __call__(self, x):
        return jnp.mean(jax.nn.relu(self.bn(self.conv(x))), axis=(1, 2))


def brightness_dataset(n, seed, split):
    """3 classes of 8x8 images whose class is the brightness (40, 128, 215) plus pixel noise: every
    crop and flip of an image keeps its class, so the task is separable for the protocols."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = np.array([40, 128, 215])[labels][:, None, None, None] + rng.normal(0, 8, (n, 8, 8, 3))
    images = np.clip(images, 0, 255).astype(np.uint8)
    labels = labels.astype(np.int32)
    return data.Dataset(
        "bright", split, n, 3, (8, 8, 3), read=lambda i: (images[i], labels[i]), read_labels=lambda i: labels[i]
    )


MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_linear_probe_augmented_on_a_frozen_body_reaches_100_and_leaves_it_unchanged():
    body = TinyBody(nnx.Rngs(0))
    body.eval()
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(body)))
    mesh = data.make_mesh()
    scores = evaluate.linear_probe_augmented(
        body,
        MEAN,
        STD,
        brightness_dataset(256, 0, "train"),
        brightness_dataset(96, 1, "test"),
        mesh,
        epochs=4,
        batch_size=32,
        crop_scale=(0.3, 1.0),
        eval_batch_size=32,
    )
    assert scores["top1"] == 100.0
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(body)))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_finetune_on_a_labelled_fraction_reaches_100_percent():
    mesh = data.make_mesh()
    train = brightness_dataset(600, 0, "train")
    labelled = evaluate.labelled_fraction(train, 0.1, seed=0)  # 60 images, 20 per class
    assert labelled.num_examples == 60
    np.testing.assert_array_equal(np.bincount(labelled.labels()), [20, 20, 20])
    test = brightness_dataset(90, 1, "test")
    scores = evaluate.finetune(
        TinyBody(nnx.Rngs(0)),
        MEAN,
        STD,
        labelled,
        test,
        mesh,
        epochs=15,
        batch_size=20,
        lr=0.1,
        crop_scale=(0.3, 1.0),
        eval_batch_size=30,
    )
    assert scores["top1"] == 100.0


def pattern_dataset(n, seed, split):
    """3 classes of 8x8 images: horizontal stripes, vertical stripes, a checkerboard (plus noise).
    Brightness would not do here: cosine similarity ignores a pixel vector's length."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int32)
    r, c = np.mgrid[:8, :8]
    patterns = np.stack([r % 2, c % 2, (r + c) % 2]) * 160.0 + 40.0  # [3, 8, 8]
    images = patterns[labels][..., None] + rng.normal(0, 20, (n, 8, 8, 3))
    images = np.clip(images, 0, 255).astype(np.uint8)
    return data.Dataset(
        "patterns", split, n, 3, (8, 8, 3), read=lambda i: (images[i], labels[i]), read_labels=lambda i: labels[i]
    )


def test_raw_pixels_separate_patterns():
    mesh = data.make_mesh()
    got = evaluate.raw_pixels(
        pattern_dataset(200, 0, "train"), pattern_dataset(60, 1, "test"), mesh, epochs=5, batch_size=50
    )
    assert got["knn"]["top1"] == 100.0 and got["linear"]["top1"] == 100.0
    feats, _ = evaluate.pixel_features(pattern_dataset(4, 0, "train"), mesh, batch_size=2)
    images = pattern_dataset(4, 0, "train").get(np.arange(4))["image"]
    np.testing.assert_allclose(feats, images.reshape(4, -1) / 255.0, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# The command line on a SimCLR smoke run
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    from simclr import train as simclr
    from tests import helpers

    workdir = str(tmp_path_factory.mktemp("simclr_smoke"))
    simclr.main(helpers.smoke_config("simclr"), workdir)
    return workdir


def test_cli_knn_reproduces_the_runs_own_monitor(simclr_run):
    # The smoke preset's monitor uses the first 200 train and 100 test images, k=20, T=0.07: the same
    # restored body, rebuilt from the workdir alone, must give exactly the run's final numbers.
    results = json.loads(open(f"{simclr_run}/results.json").read())
    got = evaluate.main(
        ["--workdir", simclr_run, "--protocol", "knn", "--train_examples", "200", "--test_examples", "100"]
    )
    assert (got["top1"], got["top5"]) == (results["knn_top1"], results["knn_top5"])
    assert got["step"] == results["step"] == 4


def test_cli_linear_writes_json(simclr_run):
    got = evaluate.main(
        [
            "--workdir",
            simclr_run,
            "--protocol",
            "linear",
            "--epochs",
            "1",
            "--train_examples",
            "512",
            "--test_examples",
            "200",
            "--batch_size",
            "64",
        ]
    )
    saved = json.loads(open(f"{simclr_run}/eval_linear.json").read())
    assert saved == got
    assert saved["method"] == "simclr" and saved["epochs"] == 1 and saved["test_examples"] == 200
    assert saved["features"].startswith("on the fly")
    # Ten classes, 8 steps of a probe on a body trained 4 steps: above chance, and consistent.
    assert 15.0 < saved["top1"] <= saved["top5"] <= 100.0


# --------------------------------------------------------------------------------------------------
# scripts/plots.py (t-SNE) and scripts/benchmark_table.py (the table from JSON files)
# --------------------------------------------------------------------------------------------------


def load_script(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tsne_keeps_separated_clusters_apart():
    plots = load_script("plots")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    x = np.eye(4, 20)[labels] * 10.0 + rng.normal(size=(120, 20))
    p = plots.tsne_affinities(x, perplexity=10.0)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p, p.T)
    y = plots.tsne(x, perplexity=10.0, steps=1000)
    # Every point's nearest neighbour in the 2-D map is of its own cluster.
    d = ((y[:, None] - y[None]) ** 2).sum(-1) + np.diag(np.full(120, np.inf))
    assert np.all(labels[d.argmin(1)] == labels)


def test_benchmark_table_reads_the_json_files_and_says_what_has_not_run(tmp_path):
    table = load_script("benchmark_table")
    (tmp_path / "simclr").mkdir()
    (tmp_path / "baselines").mkdir()
    (tmp_path / "simclr" / "results.json").write_text(
        json.dumps(
            {
                "method": "simclr",
                "knn_top1": 81.25,
                "knn_top5": 99.5,
                "step": 468,
                "wall_time_s": 180.0,
                "knn_top1_init": 77.5,
                "knn_top5_init": 98.0,
            }
        )
    )
    (tmp_path / "simclr" / "config.json").write_text(
        json.dumps(
            {
                "model": {"name": "resnet_tiny", "stem": "small"},
                "optim": {"epochs": 2.0},
                "eval": {"knn_train_examples": 0, "knn_test_examples": 0},
            }
        )
    )
    (tmp_path / "simclr" / "eval_linear.json").write_text(
        json.dumps({"top1": 83.75, "top5": 99.25, "epochs": 10, "features": "on the fly, ..."})
    )
    (tmp_path / "baselines" / "eval_pixels.json").write_text(
        json.dumps({"top1": 84.0, "top5": 99.0, "knn_top1": 84.6, "knn_top5": 98.5, "epochs": 100})
    )
    # A semi-supervised method: its own 10% run is read, its 1% run says it has not run.
    (tmp_path / "paws").mkdir()
    (tmp_path / "paws" / "results.json").write_text(
        json.dumps(
            {
                "method": "paws",
                "knn_top1": 80.0,
                "knn_top5": 99.0,
                "snn_top1": 75.55,
                "step": 468,
                "wall_time_s": 300.0,
                "knn_top1_init": 77.5,
            }
        )
    )
    (tmp_path / "paws" / "config.json").write_text(
        json.dumps({"model": {"name": "resnet_tiny"}, "optim": {"epochs": 2.0}})
    )
    out = tmp_path / "B.md"
    text = table.write_table(["simclr", "byol", "paws"], table.argparse.Namespace(runs=str(tmp_path), output=str(out)))
    paws_row = next(row for row in text.splitlines() if row.startswith("| paws |"))
    assert "soft nearest neighbours: not run / 75.5 (5.0 min)" in paws_row
    assert out.read_text() == text
    simclr_row = next(row for row in text.splitlines() if row.startswith("| simclr | resnet_tiny"))
    assert "81.2 / 99.5 (init 77.5)" in simclr_row and "83.8 / 99.2 (10 ep, augmented)" in simclr_row
    assert "3.0 min" in simclr_row and "69.3" in simclr_row
    assert "| Raw pixels, kNN (k=20, T=0.07) | 84.6 / 98.5 |" in text
    assert "| Strong Sup (100% labels) | not run |" in text
    byol_row = next(row for row in text.splitlines() if row.startswith("| byol |"))
    assert "not run" in byol_row and "74.3" in byol_row
    assert "| Weak Sup (10% labels, PAWS' labelled budget) | not run |" in text

    # Weak Sup with PAWS' labelled budget: 468 steps x 10 classes x 8 images x 1 view = 37,440
    # presentations of 6,000 labelled images = 6 epochs (the protocol's 30 would show 180,000).
    config = {"data": {"label_fraction": 0.1}, "method": {"classes_per_batch": 10, "s_per_class": 8}}
    config["optim"], config["model"] = {"epochs": 1.0}, {"name": "resnet_tiny"}
    (tmp_path / "paws" / "config.json").write_text(json.dumps({**config, "views": {"supervised_views": 1}}))
    (tmp_path / "paws" / "labelled.json").write_text(json.dumps({"indices": list(range(6000))}))
    assert table.paws_presentations(tmp_path) == 37440 and table.paws_matched_epochs(tmp_path, 0.1) == 6
    assert table.paws_matched_epochs(tmp_path, 0.01) is None  # the run is the 10% one
    weak = {"top1": 70.0, "top5": 95.0, "epochs": 6, "labelled_examples": 6000, "body": "resnet_tiny"}
    (tmp_path / "baselines" / table.PAWS_BUDGET_NAME).write_text(json.dumps(weak))
    text = table.write_table(["paws"], table.argparse.Namespace(runs=str(tmp_path), output=str(out)))
    row = next(row for row in text.splitlines() if "PAWS' labelled budget" in row and row.startswith("| Weak"))
    assert "6 ep x 6000 images = 36,000 presentations; PAWS' support batches showed 37,440" in row, row
    # Sections other scripts measured (below the marker) survive a rewrite of the table, once.
    out.write_text(text + "\n" + table.KEPT + "\n## Speed\n\nfigures\n")
    text = table.write_table(["paws"], table.argparse.Namespace(runs=str(tmp_path), output=str(out)))
    assert text.count("## Speed") == 1 and text.endswith("## Speed\n\nfigures\n") and "| Weak Sup" in text


def test_benchmark_table_train_skips_finished_runs_and_rerun_keeps_the_old_one(tmp_path, monkeypatch):
    table = load_script("benchmark_table")
    calls = []
    monkeypatch.setattr(table, "call", lambda cmd, log: calls.append(cmd) or True)
    monkeypatch.setattr(table, "machine_description", lambda: "test machine")
    workdir = tmp_path / "simclr"
    workdir.mkdir()
    (workdir / "results.json").write_text(json.dumps({"knn_top1": 80.0, "step": 468}))
    assert table.train("simclr", str(workdir), [], "log") and calls == []  # finished: not retrained
    assert table.train("simclr", str(workdir), ["--config.seed=1"], "log", rerun=True)
    assert calls[0][-3:] == ["--workdir", str(workdir), "--config.seed=1"]
    (previous,) = tmp_path.glob("simclr.previous-*")  # the old run is kept beside, not resumed or deleted
    assert json.loads((previous / "results.json").read_text())["step"] == 468
    recorded = json.loads((workdir / "machine.json").read_text())
    assert recorded["machine"] == "test machine" and recorded["load_average"] >= 0.0
    assert recorded["load_average_end"] >= 0.0
    results = {"method": "simclr", "knn_top1": 80.0, "knn_top5": 99.0, "step": 468, "wall_time_s": 180.0}
    (workdir / "results.json").write_text(json.dumps(results))
    (workdir / "machine.json").write_text(json.dumps({**recorded, "load_average": 3.25, "load_average_end": 2.0}))
    (workdir / "config.json").write_text(json.dumps({"model": {"name": "resnet_tiny"}, "optim": {"epochs": 2.0}}))
    row = table.method_row("simclr", tmp_path)  # a wall time on a shared machine names its load
    assert "3.0 min, test machine, load average 3.2 at the start and 2.0 at the end" in row, row


# --------------------------------------------------------------------------------------------------
# The evaluation view on a folder of non-square images
# --------------------------------------------------------------------------------------------------


def colour_folder(root, sizes, per_class, seed):
    """root/<split>/<colour>/*.png: 3 classes (red, green, blue dominant) of noisy photos of the
    given (H, W) sizes, landscape and portrait."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(("red", "green", "blue")):
            for i in range(n):
                h, w = sizes[i % len(sizes)]
                image = rng.integers(20, 90, (h, w, 3))
                image[..., c] = rng.integers(160, 255, (h, w))
                os.makedirs(root / split / name, exist_ok=True)
                Image.fromarray(image.astype(np.uint8)).save(root / split / name / f"{i}.png")


def test_protocols_on_a_folder_of_non_square_images(tmp_path):
    """Whole images (4:3 and 3:4, on a 32 px canvas) seen through the protocol view (Resize(14) +
    CenterCrop(12), fraction 0.875): no padding reaches the body, and kNN, the linear probe and the
    pixel baseline separate the classes."""
    colour_folder(tmp_path, [(30, 40), (40, 30), (24, 36)], {"train": 24, "test": 8}, seed=0)
    config = ml_collections.ConfigDict(
        dict(
            data=dict(name="", folder=str(tmp_path), data_dir="", image_size=32, fit="whole"),
            eval=dict(image_size=12, crop_fraction=0.875),
        )
    )
    view = evaluate.protocol_view(config)
    assert view == (12, 0.875, "torch")
    default = ml_collections.ConfigDict(dict(data=dict(image_size=28), eval=dict(knn_k=20)))
    assert evaluate.protocol_view(default) == (28, 1.0, "torch")  # absent fields: today's behaviour
    train, test = data.load(config.data, "train"), data.load(config.data, "test")
    batch = train.get(np.arange(train.num_examples))
    assert {tuple(e) for e in batch["extent"].tolist()} == {(24, 32), (32, 24), (21, 32)}
    views = evaluate.preprocess(batch["image"], (0.0,) * 3, (1.0,) * 3, view, batch["extent"])
    assert views.shape == (train.num_examples, 12, 12, 3)
    assert float(views.max(axis=-1).min()) > 150 / 255  # every pixel from the photo, none from padding
    mesh = data.make_mesh()
    body = TinyBody(nnx.Rngs(0))
    body.eval()
    knn = evaluate.knn_monitor(evaluate.frozen_embed_fn(body, MEAN, STD, view), train, test, 24, mesh, k=5)
    assert knn["top1"] == 100.0
    linear = evaluate.linear_probe_augmented(
        body,
        MEAN,
        STD,
        train,
        test,
        mesh,
        epochs=3,
        batch_size=24,
        crop_scale=(0.3, 1.0),
        eval_batch_size=24,
        view=view,
    )
    assert linear["top1"] == 100.0
    pixels = evaluate.raw_pixels(train, test, mesh, k=5, epochs=3, batch_size=24, view=view)
    assert pixels["knn"]["top1"] == 100.0
