"""Runs every method present, its evaluation protocols and the baselines, and writes BENCHMARKS.md.

    python scripts/benchmark_table.py                         # everything (CPU: about an hour per method set)
    python scripts/benchmark_table.py --methods simclr,byol   # a subset
    python scripts/benchmark_table.py --dry_run               # only rebuild the table from runs/
    python scripts/benchmark_table.py --rerun                 # retrain and re-evaluate even complete runs

For each method M with M/train.py and M/config.py: trains the default preset into runs/M (skipped when
runs/M/results.json is complete, unless --rerun), then runs `python -m common.evaluate` for the linear
probe (and, with --finetune_all, fine-tuning on 1% and 10% of the labels), each skipped when its JSON
exists. The semi-supervised methods also run their own pipeline on 1% and 10% of the labels (simclr2:
stages 2 and 3 from runs/simclr2; paws: runs/paws is 10%, runs/paws_1pct 1%). The baselines use the
body and data of the first run (simclr when present): "Strong Sup" (the same body trained from a random
initialisation on all labels for as many epochs as that run: the same budget), "Weak Sup" (10% / 1% of
the labels, with the fine-tuning protocol's epochs, optimiser and augmentation) and raw pixels (kNN and
linear probe), written to runs/baselines/. Every number in BENCHMARKS.md is read
from those JSON files; a cell of something that has not been run says so.
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

METHODS = ("simclr", "moco", "byol", "swav", "dino", "pirl", "simclr2", "paws")
SEMI_SUPERVISED = ("simclr2", "paws")
FRACTIONS = (0.01, 0.1)

# Published ImageNet-1k results (linear probe on a frozen body unless noted), with where they are from.
PUBLISHED = {
    "simclr": (
        "64.5 (ResNet-50, 100 ep, batch 4096: the `:imagenet` command); 69.3 after 1000 ep",
        "google-research/simclr README (pretraining + linear-eval commands, 'around 64.5%'); "
        "Chen et al., ICML 2020, arXiv:2002.05709, Table 6 for the 1000-epoch 69.3",
    ),
    "moco": (
        "67.5 (MoCo v2, ResNet-50, 200 ep: the `:imagenet` command); 71.1 after 800 ep",
        "facebookresearch/moco README (main_moco.py --mlp --moco-t 0.2 --aug-plus --cos, 200 ep); "
        "Chen et al., arXiv:2003.04297, Table 2",
    ),
    "byol": ("74.3 (ResNet-50, 1000 ep)", "Grill et al., NeurIPS 2020, arXiv:2006.07733, Table 1"),
    "swav": (
        "75.3 (ResNet-50, multi-crop, 800 ep)",
        "Caron et al., NeurIPS 2020, arXiv:2006.09882, Table 1; facebookresearch/swav README",
    ),
    "dino": (
        "74.0 linear / 69.3 kNN (ViT-S/16, 100 ep: the `:imagenet` command); 77.0 after 800 ep, 10 local crops",
        "facebookresearch/dino README, 'Vanilla DINO training' (main_dino.py --arch vit_small, 8 GPUs); "
        "Caron et al., ICCV 2021, arXiv:2104.14294, Table 2 for 77.0",
    ),
    "pirl": (
        "64.29 (ResNet-50, 800 ep: VISSL pirl_jigsaw_4node_resnet50, the `:imagenet` config); paper 63.6",
        "VISSL model zoo (facebookresearch/vissl MODEL_ZOO.md); Misra & van der Maaten, CVPR 2020, "
        "arXiv:1912.01991, Table 1",
    ),
    "simclr2": (
        "71.7 (ResNet-50 1x, SK0); fine-tuned 1% / 10%: 57.9 / 68.4",
        "Chen et al., NeurIPS 2020, arXiv:2006.10029, Table 1; google-research/simclr README",
    ),
    "paws": (
        "snn 1% / 10%: 61.5 / 71.0; fine-tuned (paws.finetune): 63.8 / 73.9 (ResNet-50, 100 ep, imgnt_train.yaml)",
        "facebookresearch/suncet README (100-epoch row); Assran et al., ICCV 2021, arXiv:2104.13963",
    ),
}


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_complete(workdir):
    results = read_json(os.path.join(workdir, "results.json"))
    return bool(results) and all(k in results for k in ("method", "knn_top1", "knn_top5", "step"))


def call(cmd, log):
    """Runs cmd from the repository root, appending its output to `log`; True when it succeeded."""
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        ok = subprocess.call(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT) == 0
    if not ok:
        print(f"  failed; see {log}", flush=True)
    return ok


def evaluate_cmd(workdir, protocol, output=None, fraction=None, epochs=None, extra=()):
    cmd = [sys.executable, "-m", "common.evaluate", "--workdir", workdir, "--protocol", protocol]
    if fraction is not None:
        cmd += ["--label_fraction", str(fraction)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    if output:
        cmd += ["--output", output]
    return cmd + list(extra)


def machine_description():
    import jax

    device = jax.devices()[0]
    return f"{jax.device_count()} x {device.device_kind} ({device.platform}), {os.cpu_count()} CPU cores"


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


def run_everything(methods, args):
    runs = ROOT / args.runs
    runs.mkdir(parents=True, exist_ok=True)
    log = str(runs / "benchmark_table.log")
    linear_extra = ["--precompute"] if args.precompute else []
    for m in methods:
        workdir = str(runs / m)
        if not train(m, workdir, [], log, args.rerun):
            continue
        if m in SEMI_SUPERVISED:
            run_semi_supervised(m, runs, log, args.rerun)
        jobs = [("linear", None, args.linear_epochs, linear_extra)]
        if args.finetune_all:
            jobs += [("finetune", f, args.finetune_epochs, []) for f in FRACTIONS]
        for protocol, fraction, epochs, extra in jobs:
            out = os.path.join(workdir, eval_name(protocol, fraction))
            if args.rerun or not os.path.exists(out):
                call(evaluate_cmd(workdir, protocol, fraction=fraction, epochs=epochs, extra=extra), log)

    base = baseline_run(methods, runs)
    if args.skip_baselines:
        return
    if base is None:
        print("No complete run to take the baselines' body and data from.")
        return
    out_dir = runs / "baselines"
    out_dir.mkdir(exist_ok=True)
    for protocol, fraction in [("pixels", None), ("supervised", 1.0), ("supervised", 0.1), ("supervised", 0.01)]:
        out = str(out_dir / eval_name(protocol, fraction))
        if args.rerun or not os.path.exists(out):
            epochs = args.finetune_epochs if protocol == "supervised" else None
            if protocol == "supervised" and fraction == 1.0 and epochs is None:  # the SSL run's budget
                epochs = math.ceil((read_json(runs / base / "config.json") or {}).get("optim", {}).get("epochs", 10))
            call(evaluate_cmd(str(runs / base), protocol, output=out, fraction=fraction, epochs=epochs), log)
    # Weak Sup with PAWS' labelled budget: as many labelled presentations as the PAWS run's support
    # batches showed (at 1% the fine-tuning protocol's 60 epochs already match it; at 10% its 30 are ~5x).
    matched = paws_matched_epochs(runs, 0.1)
    out = str(out_dir / PAWS_BUDGET_NAME)
    if matched and (args.rerun or not os.path.exists(out)):
        call(evaluate_cmd(str(runs / base), "supervised", output=out, fraction=0.1, epochs=matched), log)


PAWS_BUDGET_NAME = "eval_supervised_10pct_paws_budget.json"
# machine.json's 1-minute load averages, recorded when a run starts and ends.
LOADS = (("load_average", "start"), ("load_average_end", "end"))


def paws_presentations(runs):
    """Labelled images the PAWS run showed: steps x classes_per_batch x s_per_class x supervised_views
    (its support batches), or None without a complete runs/paws."""
    config, results = read_json(runs / "paws" / "config.json"), read_json(runs / "paws" / "results.json")
    if not config or not results or "step" not in results:
        return None
    m, views = config.get("method", {}), config.get("views", {})
    if "classes_per_batch" not in m or "s_per_class" not in m:
        return None
    return int(results["step"]) * m["classes_per_batch"] * m["s_per_class"] * views.get("supervised_views", 1)


def paws_matched_epochs(runs, fraction):
    """Epochs of the supervised baseline on `fraction` of the labels that show about as many labelled
    images as the PAWS run's support batches (rounded, at least 1); None without a PAWS run."""
    presentations = paws_presentations(runs)
    config = read_json(runs / "paws" / "config.json") or {}
    if presentations is None or abs(config.get("data", {}).get("label_fraction", 0) - fraction) > 1e-9:
        return None
    examples = read_json(runs / "paws" / "labelled.json") or {}
    n = len(examples.get("indices", [])) or None
    return max(1, round(presentations / n)) if n else None


def semi_supervised_runs(m, runs):
    """{fraction: {name: workdir}} of a semi-supervised method's own label-fraction pipeline.

    simclr2: stage 2 (fine-tuning from the first projection layer) on the pretrained runs/simclr2,
    then stage 3 (self-distillation) from it. paws: the labelled fraction is part of pretraining, so
    runs/paws (the default, 10%) and runs/paws_1pct, each evaluated by soft nearest neighbours.
    """
    if m == "simclr2":
        return {
            f: {
                "finetune": runs / f"simclr2_finetune_{round(100 * f)}pct",
                "distill": runs / f"simclr2_distill_{round(100 * f)}pct",
            }
            for f in FRACTIONS
        }
    return {f: {"pretrain": runs / ("paws" if f == 0.1 else f"paws_{round(100 * f)}pct")} for f in FRACTIONS}


def train(m, workdir, overrides, log, rerun=False):
    """Trains method m into workdir (default config + overrides), recording the machine, unless a
    finished run is there; True if it was, or if the training command succeeded. With `rerun` an existing
    workdir is moved aside to <workdir>.previous-<time> first (kept, not deleted): training into it
    would only resume from its final checkpoint."""
    results = read_json(os.path.join(workdir, "results.json"))
    if not rerun and results and "step" in results and any(k in results for k in ("knn_top1", "top1")):
        return True
    if rerun and os.path.exists(workdir):
        os.rename(workdir, f"{workdir}.previous-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "machine.json"), "w") as f:
        started = datetime.datetime.now().isoformat(timespec="seconds")
        recorded = {"machine": machine_description(), "started": started, "load_average": os.getloadavg()[0]}
        json.dump(recorded, f)
    ok = call(
        [sys.executable, f"{m}/train.py", "--config", f"{m}/config.py", "--workdir", str(workdir)] + overrides, log
    )
    with open(os.path.join(workdir, "machine.json"), "w") as f:
        json.dump({**recorded, "load_average_end": os.getloadavg()[0]}, f)
    return ok


def run_semi_supervised(m, runs, log, rerun):
    for fraction, stages in semi_supervised_runs(m, runs).items():
        label = [f"--config.data.label_fraction={fraction}"]
        if m == "simclr2":  # the paper fine-tunes 60 epochs on 1% of the labels, 30 on 10%
            epochs = [f"--config.finetune.epochs={60 if fraction == 0.01 else 30}"]
            if train(
                m,
                stages["finetune"],
                ["--config.stage=finetune", f"--config.init_workdir={runs / m}"] + label + epochs,
                log,
                rerun,
            ):
                train(
                    m,
                    stages["distill"],
                    ["--config.stage=distill", f"--config.init_workdir={stages['finetune']}"] + label,
                    log,
                    rerun,
                )
        elif stages["pretrain"] != runs / m:
            train(m, stages["pretrain"], label, log, rerun)


def baseline_run(methods, runs):
    """The run whose body and data the baselines use: simclr if complete, else the first complete one."""
    for m in sorted(methods, key=lambda m: m != "simclr"):
        if run_complete(str(runs / m)):
            return m
    return None


def eval_name(protocol, fraction):
    if protocol in ("finetune", "supervised"):
        return f"eval_{protocol}_{round(100 * fraction):g}pct.json"
    return f"eval_{protocol}.json"


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


def pct(value):
    return f"{value:.1f}" if isinstance(value, (int, float)) else "not run"


def pair(result, a="top1", b="top5"):
    return f"{result[a]:.1f} / {result[b]:.1f}" if result else "not run"


def method_row(m, runs):
    workdir = runs / m
    results = read_json(workdir / "results.json")
    if not (ROOT / m / "train.py").exists():
        return f"| {m} | — | — | — | no `{m}/train.py` yet | | | | {PUBLISHED[m][0]} |"
    if not run_complete(str(workdir)):
        return f"| {m} | not run | | | not run | not run | not run | not run | {PUBLISHED[m][0]} |"
    config = read_json(workdir / "config.json") or {}
    model = config.get("model", {})
    body = f"{model.get('name', '?')}" + (f" ({model['stem']} stem)" if "stem" in model else "")
    epochs = config.get("optim", {}).get("epochs", "?")
    recorded = read_json(workdir / "machine.json") or {}
    machine = recorded.get("machine", "machine not recorded")
    wall = f"{results['wall_time_s'] / 60:.1f} min, {machine}"
    loads = [f"{recorded[k]:.1f} at the {when}" for k, when in LOADS if k in recorded]
    if loads:  # a wall time on a shared machine says little without it
        wall += ", load average " + " and ".join(loads)
    knn = (
        f"{results['knn_top1']:.1f} / {results['knn_top5']:.1f} (init {results.get('knn_top1_init', float('nan')):.1f})"
    )
    subset = [
        f"{config['eval'][f'knn_{s}_examples']} {s}"
        for s in ("train", "test")
        if config.get("eval", {}).get(f"knn_{s}_examples")
    ]
    if subset:
        knn += f" (first {' / '.join(subset)} images)"
    linear = read_json(workdir / "eval_linear.json")
    if m in SEMI_SUPERVISED:
        ft = semi_supervised_cell(m, runs)
    else:
        fts = [read_json(workdir / eval_name("finetune", f)) for f in FRACTIONS]
        ft = " / ".join(pct(r["top1"]) if r else "—" for r in fts)
    linear_cell = pair(linear) + (
        f" ({linear['epochs']} ep, {'precomputed' if linear['features'].startswith('pre') else 'augmented'})"
        if linear
        else ""
    )
    return (
        f"| {m} | {body} | {epochs:g} | {wall} | {knn} | {linear_cell} | {ft} | {results['step']} | {PUBLISHED[m][0]} |"
    )


def semi_supervised_cell(m, runs):
    """'1% / 10%' top-1 of the method's own pipeline, per stage, with the pipeline's wall time."""
    parts = []
    stages = semi_supervised_runs(m, runs)
    for name in next(iter(stages.values())):
        results = [read_json(stages[f][name] / "results.json") for f in FRACTIONS]
        key = "snn_top1" if m == "paws" else "top1"
        cells = [pct(r[key]) if r and key in r and "step" in r else "not run" for r in results]
        minutes = sum(r["wall_time_s"] for r in results if r and "step" in r) / 60
        label = "soft nearest neighbours" if m == "paws" else name
        parts.append(f"{label}: {' / '.join(cells)} ({minutes:.1f} min)")
    return "; ".join(parts)


def baseline_rows(runs, base):
    rows = []
    pixels = read_json(runs / "baselines" / "eval_pixels.json")
    rows.append(
        "| Raw pixels, kNN (k=20, T=0.07) | " + (pair(pixels, "knn_top1", "knn_top5") if pixels else "not run") + " |"
    )
    rows.append(
        "| Raw pixels, linear probe | " + (pair(pixels) + f" ({pixels['epochs']} ep)" if pixels else "not run") + " |"
    )
    paws = paws_presentations(runs)
    paws_note = f"; PAWS' support batches showed {paws:,}" if paws else ""
    for label, name in [
        ("Strong Sup (100% labels)", eval_name("supervised", 1.0)),
        ("Weak Sup (10% labels, the fine-tuning protocol's epochs)", eval_name("supervised", 0.1)),
        ("Weak Sup (10% labels, PAWS' labelled budget)", PAWS_BUDGET_NAME),
        ("Weak Sup (1% labels)", eval_name("supervised", 0.01)),
    ]:
        r = read_json(runs / "baselines" / name)
        cell = "not run"
        if r:
            shown = r["epochs"] * r["labelled_examples"]
            note = paws_note if "pct" in name and "100pct" not in name else ""
            cell = pair(r) + f" ({r['epochs']} ep x {r['labelled_examples']} images = {shown:,} presentations"
            cell += f"{note}; {r['body']})"
        rows.append(f"| {label} | {cell} |")
    return rows


KEPT = "<!-- Below: measured by other scripts (each section names its command); benchmark_table.py keeps it as is. -->"


def kept_sections(path):
    """The part of an existing BENCHMARKS.md from the KEPT marker on (speed figures from
    scripts/benchmark*.py), so that rewriting the table does not drop them; '' if there is none."""
    old = path.read_text() if path.exists() else ""
    return "\n" + old[old.index(KEPT) :] if KEPT in old else ""


def write_table(methods, args):
    runs = ROOT / args.runs
    base = baseline_run(methods, runs)
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python scripts/benchmark_table.py` on {datetime.date.today().isoformat()} from the JSON "
        f"files under `{args.runs}/`; nothing is filled in by hand. Default preset of each method on its "
        "default data (Fashion-MNIST from the Debian package unless the config says otherwise), test split. "
        "Accuracies in percent, top-1 / top-5.",
        "",
        "- **kNN**: the run's own final monitor (weighted kNN, k=20, T=0.07, all training and test "
        "images unless noted), with the same body at initialisation in brackets.",
        "- **Linear**: `python -m common.evaluate --protocol linear`: SGD + momentum, cosine schedule, on "
        "the frozen body; 'augmented' = random resized crop + flip on the fly, 'precomputed' = features "
        "extracted once without augmentation.",
        "- **Semi-supervised 1% / 10%**: each method's own pipeline on a class-balanced 1% / 10% of the "
        "training labels. simclr2: stage 2 (fine-tuning from the first projection layer) of the pretrained "
        "run, then stage 3 (self-distillation into the same body); paws: pretraining with that labelled "
        "fraction, classified by soft nearest neighbours over the labelled images (the paper's evaluation "
        "without fine-tuning; `python -m paws.finetune` is the official fine-tuning). In brackets: those "
        "runs' wall time. Compare with the Weak Sup baselines below "
        "(the same body from scratch on the same labels). '—' = not part of the protocol for that method "
        "(`--finetune_all` fine-tunes every method with `common.evaluate`).",
        "- **Wall time**: the training run's own (results.json), on the machine its machine.json names, "
        "with the 1-minute load average at the run's start and end where recorded: a run that shared the "
        "cores with other work took longer than the machine alone would; the accuracies do not depend on it.",
        "- **Published**: ImageNet-1k top-1 published for the official command that the method's `:imagenet` "
        "preset reproduces (named in its config docstring), then a longer recipe's number where the paper "
        "headlines one: a reference point for the recipe, not a comparison with these CPU runs.",
        "",
        "| method | body | epochs | wall time, machine | kNN top-1 / top-5 | linear top-1 / top-5 | "
        "semi-supervised 1% / 10% top-1 | steps | published ImageNet top-1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [method_row(m, runs) for m in methods]
    lines += [
        "",
        "## Baselines",
        "",
        (
            f"Same body and data as `{args.runs}/{base}` (its config.json); the supervised baselines "
            "use the fine-tuning protocol from a random initialisation."
            if base
            else "No complete run yet to take the body and data from."
        ),
        "",
        "| baseline | top-1 / top-5 |",
        "| --- | --- |",
    ]
    lines += baseline_rows(runs, base)
    lines += [
        "",
        "## Published results (sources)",
        "",
        "| method | ImageNet-1k top-1 | source |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {m} | {PUBLISHED[m][0]} | {PUBLISHED[m][1]} |" for m in methods]
    text = "\n".join(lines) + "\n" + kept_sections(ROOT / args.output)
    (ROOT / args.output).write_text(text)
    print(f"wrote {args.output}")
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--runs", default="runs", help="Folder of the runs, relative to the repository root.")
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--dry_run", action="store_true", help="Only rebuild the table from existing results.")
    parser.add_argument("--rerun", action="store_true", help="Retrain and re-evaluate even complete runs.")
    parser.add_argument("--finetune_all", action="store_true", help="Fine-tune 1%%/10%% for every method.")
    parser.add_argument("--skip_baselines", action="store_true", help="Train and evaluate the methods only.")
    parser.add_argument("--precompute", action="store_true", help="Linear probe on precomputed features.")
    parser.add_argument("--linear_epochs", type=int, default=None, help="Default: common.evaluate's.")
    parser.add_argument(
        "--finetune_epochs",
        type=int,
        default=None,
        help="Fine-tuning and supervised baselines (default: common.evaluate's per fraction).",
    )
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if not args.dry_run:
        present = [m for m in methods if (ROOT / m / "train.py").exists() and (ROOT / m / "config.py").exists()]
        run_everything(present, args)
    write_table(methods, args)


if __name__ == "__main__":
    main()
