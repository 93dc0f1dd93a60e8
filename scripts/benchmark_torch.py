"""SimCLR's default training step in this project and in a PyTorch twin, side by side on this CPU.

    pip install -e ".[bench]"                                      # PyTorch, for this script only
    python scripts/benchmark_torch.py                              # the default preset, JAX vs PyTorch eager
    python scripts/benchmark_torch.py --variants=channels_last,compile    # also PyTorch's faster paths
    python scripts/benchmark_torch.py --torch=false \
        --xla_flags=--xla_cpu_experimental_ynn_fusion_type=+dot    # an XLA:CPU flag vs the default
    python scripts/benchmark_torch.py --config.model.name=resnet18 --config.model.stem=cifar \
        --config.views.crop_size=32 --config.data.batch_size=128 --config.model.proj_hidden_dim=512 \
        --config.model.proj_dim=128                                # ResNet-18, CIFAR stem, 32 px

What is timed: the step after the views, on one batch of views made once (no augmentation inside the
timed step), in three cuts: `forward` (forward + NT-Xent loss, no gradients), `backward` (forward +
backward: loss and every gradient) and `step` (forward + backward + LARS, the whole update). The JAX
side is the project's own code: `simclr.train.update` jitted on the state of `create_state`, and the
model and `nt_xent_loss` of simclr/train.py for the two shorter cuts. The PyTorch side is a twin written
here: the same body (BasicBlock ResNets: resnet_tiny, resnet18, resnet34 with the 'small' or 'cifar'
stem), the same projection head, the same loss, and a LARS written as optax.lars (decay, trust ratio
eta |w| / |g + wd w| set to 1 where a norm is 0, learning rate, then momentum) with the project's masks.

The twin is checked to be the same work before anything is timed, in every PyTorch worker: the same
parameter and buffer names and shapes (so the same count), the same LARS masks, the project's initial
weights copied in, then the same loss at init (to 1e-4), the same gradients and the same parameter changes
after two LARS steps (relative error over all parameters together below 1e-2: measured 2e-6 for eager
PyTorch, 2e-3 and 4e-3 for channels_last, whose batch-norm backward sums in another order; the stem
BN's scale, a sum of 100k terms that cancel, is the worst tensor there at 7.5e-3). The twin's batch
norm keeps PyTorch's unbiased running variance (the project's SimCLR keeps TensorFlow's biased one):
that changes only the running statistics, not the work.

How: every framework (and every XLA_FLAGS setting, which must be set before JAX starts) runs in its own
worker process, started by this one; after all have compiled and warmed up, the workers take turns,
one at a time, for --rounds rounds of --steps calls per cut (the order rotates every round), so slow
drifts of the machine's load hit all of them alike. Every call is synchronised before the next.
Printed: images/s (images of the batch, 2 views each) per worker and cut, the median over rounds, and
the median of the per-round ratios to the JAX worker and to PyTorch eager. PyTorch uses
--torch_threads intra-op threads (default: every core), XLA:CPU its default (every core).

PyTorch from PyPI on Linux is the CUDA build (several GB with its CUDA libraries; on a CPU it runs the
same CPU kernels); PyTorch's own CPU-only wheel index is smaller. This project tested torch 2.15.0.
"""

import collections
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules (simclr, common), imported where they are used

_CONFIG = config_flags.DEFINE_config_file("config", str(ROOT / "simclr/config.py"), "SimCLR's config (a preset).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds of alternating runs.")
_STEPS = flags.DEFINE_integer("steps", 10, "Calls per worker, cut and round.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls per cut after compiling.")
_CUTS = flags.DEFINE_list("cuts", ["forward", "backward", "step"], "What to time: forward, backward, step.")
_TORCH = flags.DEFINE_bool("torch", True, "Time the PyTorch eager twin.")
_VARIANTS = flags.DEFINE_list("variants", [], "PyTorch variants also timed: channels_last, compile, compile_cl.")
_XLA_FLAGS = flags.DEFINE_multi_string("xla_flags", [], "An extra JAX worker with these XLA_FLAGS (repeatable).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", os.cpu_count(), "torch.set_num_threads.")
_JSON = flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
_WORKER = flags.DEFINE_string("worker", "", "Internal: run as a worker with this JSON spec.")

TORCH_VARIANTS = {  # name -> (channels_last, torch.compile)
    "eager": (False, False),
    "channels_last": (True, False),
    "compile": (False, True),
    "compile_cl": (True, True),
}
BODIES = {"resnet_tiny": ((1, 1, 1, 1), 16), "resnet18": ((2, 2, 2, 2), 64), "resnet34": ((3, 4, 6, 3), 64)}
LARS_EXCLUDED = ("bn", "bias")  # simclr/train.py's make_optimizer: batch norms (named bn*) and biases


# ------------------------------------------------------------------------------------------------
# The project's side (JAX)
# ------------------------------------------------------------------------------------------------


def steps_per_epoch(config):
    return max(1, 60000 // config.data.batch_size)  # Fashion-MNIST's 60,000 training images (the schedule only)


def jax_setup(config):
    """The project's state, schedule and one fixed batch of views, made by its own make_views."""
    import jax

    from simclr import train

    graphdef, state, _ = train.create_state(config, steps_per_epoch(config))
    schedule = train.learning_rate_schedule(config.optim, config.data.batch_size, steps_per_epoch(config))
    size = config.data.image_size or config.views.crop_size
    images = np.random.default_rng(0).integers(0, 256, (config.data.batch_size, size, size, 3), dtype=np.uint8)
    views = jax.jit(lambda key, x: train.make_views(key, x, config.views))(jax.random.key(0), images)
    return graphdef, state, schedule, jax.block_until_ready(views)


def jax_functions(graphdef, config, schedule):
    """The three cuts as jittable functions of (state, x1, x2)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from simclr import train

    temperature = config.method.temperature

    def loss_fn(model, x1, x2):  # as simclr.train.update: both views in one forward pass
        z1, z2 = jnp.split(model(jnp.concatenate([x1, x2])), 2)
        return train.nt_xent_loss(z1, z2, temperature)

    def forward(state, x1, x2):
        return loss_fn(nnx.merge(graphdef, state)["model"], x1, x2)

    def backward(state, x1, x2):
        return nnx.value_and_grad(loss_fn)(nnx.merge(graphdef, state)["model"], x1, x2)

    def step(state, x1, x2):
        parts = nnx.merge(graphdef, state)
        metrics = train.update(parts, x1, x2, temperature, schedule)
        return nnx.state(parts), metrics

    return {"forward": jax.jit(forward), "backward": jax.jit(backward), "step": jax.jit(step, donate_argnums=0)}


def flat(tree):
    """An nnx State -> {torch-style name: numpy array} ('body.stages.0.0.conv1.kernel')."""
    from flax import nnx

    return {".".join(str(k) for k in path): np.asarray(v[...]) for path, v in nnx.to_flat_state(tree)}


def jax_worker(config, spec):
    import jax

    graphdef, state, schedule, (x1, x2) = jax_setup(config)
    functions = jax_functions(graphdef, config, schedule)
    compiled, compile_s = {}, {}
    for cut in _CUTS.value:
        start = time.perf_counter()
        compiled[cut] = functions[cut].lower(state, x1, x2).compile()
        compile_s[cut] = round(time.perf_counter() - start, 2)
    holder = {"state": state}

    def call(cut):
        if cut == "step":
            holder["state"], metrics = compiled["step"](holder["state"], x1, x2)
            jax.block_until_ready(metrics)
        else:
            jax.block_until_ready(compiled[cut](holder["state"], x1, x2))

    info = {"jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""), "compile_s": compile_s}
    serve(call, info)


# ------------------------------------------------------------------------------------------------
# The PyTorch twin
# ------------------------------------------------------------------------------------------------


def torch_model(config):
    """The twin of simclr.train.SimCLR for BasicBlock bodies, with the project's parameter names."""
    from torch import nn
    from torch.nn import functional as F

    if config.model.name not in BODIES or config.model.stem not in ("small", "cifar"):
        raise ValueError(f"the twin has BasicBlock ResNets {sorted(BODIES)} with the 'small' or 'cifar' stem")
    stage_sizes, width = BODIES[config.model.name]

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)  # eps 1e-5, momentum 0.1 (= the project's 0.9)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample_conv = self.downsample_bn = None
            if stride != 1 or cin != cout:
                self.downsample_conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
                self.downsample_bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            shortcut = x if self.downsample_conv is None else self.downsample_bn(self.downsample_conv(x))
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + shortcut)

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            stride = 2 if config.model.stem == "small" else 1  # 'small': 3x3/2, 'cifar': 3x3/1, no pool
            self.conv1 = nn.Conv2d(3, width, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            stages, cin = [], width
            for i, n in enumerate(stage_sizes):
                blocks = [
                    BasicBlock(cin if j == 0 else width * 2**i, width * 2**i, 2 if i and not j else 1) for j in range(n)
                ]
                stages.append(nn.ModuleList(blocks))
                cin = width * 2**i
            self.stages = nn.ModuleList(stages)
            self.num_features = cin

        def forward(self, x):  # [B, 3, H, W] -> [B, num_features]
            x = F.relu(self.bn1(self.conv1(x)))
            for stage in self.stages:
                for block in stage:
                    x = block(x)
            return x.mean(dim=(2, 3))

    class Head(nn.Module):  # Linear-BN-ReLU-Linear-BN, no biases, no shift in the last BN
        def __init__(self, cin, hidden, out):
            super().__init__()
            self.fc1 = nn.Linear(cin, hidden, bias=False)
            self.bn1 = nn.BatchNorm1d(hidden)
            self.fc2 = nn.Linear(hidden, out, bias=False)
            self.bn2 = nn.BatchNorm1d(out)
            self.bn2.bias = None

        def forward(self, h):
            return self.bn2(self.fc2(F.relu(self.bn1(self.fc1(h)))))

    class SimCLR(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Body()
            self.head = Head(self.body.num_features, config.model.proj_hidden_dim, config.model.proj_dim)

        def forward(self, x):
            return self.head(self.body(x))

    model = SimCLR()
    for m in model.modules():  # the project's initialisers (overwritten by its weights before timing)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
    return model


def nt_xent_torch(z1, z2, temperature):
    """simclr.train.nt_xent_loss in PyTorch: [N, D] x 2 -> scalar."""
    import torch
    from torch.nn import functional as F

    h1, h2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = h1.shape[0]
    mask = 1e9 * torch.eye(n, dtype=h1.dtype)
    labels = torch.arange(n)
    logits_a = torch.cat([h1 @ h2.T / temperature, h1 @ h1.T / temperature - mask], 1)
    logits_b = torch.cat([h2 @ h1.T / temperature, h2 @ h2.T / temperature - mask], 1)
    return F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_b, labels)


def lars_adapts(name):
    """simclr.train.lars_mask's rule on a PyTorch name: False where a part names a batch norm or a bias."""
    return not any(e in part for part in name.split(".")[:-1] for e in LARS_EXCLUDED)


class TorchLARS:
    """optax.lars as simclr/train.py configures it: g <- g + wd w, g <- g * eta |w| / |g| (1 where a
    norm is 0) on the adapted parameters, u = -lr g, v <- u + m v, w <- w + v."""

    def __init__(self, named_params, optim):
        import torch

        self.params = [(p, lars_adapts(n)) for n, p in named_params]
        self.momenta = [torch.zeros_like(p) for p, _ in self.params]
        self.wd, self.eta, self.m = optim.weight_decay, optim.trust_coefficient, optim.momentum

    def step(self, lr):
        import torch

        with torch.no_grad():
            for (p, adapts), v in zip(self.params, self.momenta):
                g = p.grad
                if adapts:
                    g = g + self.wd * p
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm == 0) | (g_norm == 0), 1.0, self.eta * w_norm / g_norm)
                    g = g * trust
                v.mul_(self.m).add_(g, alpha=-lr)
                p.add_(v)


def to_torch_layout(name, a):
    """A project array -> the PyTorch tensor of the same name: conv [kh, kw, in, out] -> [out, in, kh, kw],
    linear [in, out] -> [out, in]."""
    if a.ndim == 4:
        return a.transpose(3, 2, 0, 1)
    return a.T if a.ndim == 2 else a


TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def torch_names(project):
    """{project name: PyTorch name} ('head.fc1.kernel' -> 'head.fc1.weight')."""
    return {n: n.rsplit(".", 1)[0] + "." + TORCH_LEAF[n.rsplit(".", 1)[1]] for n in project}


def load_project_weights(model, params, stats):
    """Copies the project's parameters and batch statistics into the twin, checking that the names and
    shapes are the same on both sides (every tensor of the twin is covered: the same count)."""
    import torch

    tensors = dict(model.named_parameters()) | {n: b for n, b in model.named_buffers() if "num_batches" not in n}
    project = params | stats
    names = torch_names(project)
    if sorted(names.values()) != sorted(tensors):
        raise AssertionError(f"twin differs: {sorted(set(names.values()) ^ set(tensors))}")
    with torch.no_grad():
        for n, a in project.items():
            t = tensors[names[n]]
            a = to_torch_layout(n, a)
            if tuple(t.shape) != a.shape:
                raise AssertionError(f"{n}: project {a.shape} vs twin {tuple(t.shape)}")
            t.copy_(torch.from_numpy(np.array(a)))  # a writable copy
    return sum(a.size for a in params.values())


def check_twin(config, model, x_torch, prepare):
    """The twin does the project's work: same loss at init, same gradients, same parameters after two
    LARS steps (a warmup of one step, so the second step has the full rate). Returns the figures."""
    import jax
    from flax import nnx

    from simclr import train

    check_config = config.copy_and_resolve_references()
    check_config.optim.warmup_epochs = 0.0
    graphdef, state, schedule, (x1, x2) = jax_setup(check_config)
    functions = jax_functions(graphdef, check_config, schedule)
    model_jax = nnx.merge(graphdef, state)["model"]
    params, stats = flat(nnx.state(model_jax, nnx.Param)), flat(nnx.state(model_jax, nnx.BatchStat))
    dict_keys = lambda path: ".".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
    masks = train.lars_mask(nnx.state(model_jax, nnx.Param), LARS_EXCLUDED)
    mask = {dict_keys(path): m for path, m in jax.tree_util.tree_flatten_with_path(masks)[0]}
    n_params = load_project_weights(model, params, stats)
    twin_mask = {n: lars_adapts(t) for n, t in torch_names(params).items()}
    if twin_mask != mask:
        raise AssertionError("the twin's LARS masks differ from simclr.train.lars_mask's")
    forward, backward = prepare(model)

    loss_jax, grads_jax = jax.device_get(functions["backward"](state, x1, x2))
    loss_torch = forward(x_torch)
    backward(x_torch)
    twin = dict(model.named_parameters())
    names = torch_names(params)
    grads_jax = flat(grads_jax)
    grads = {n: (to_torch_layout(n, grads_jax[n]), twin[t].grad.numpy()) for n, t in names.items()}

    lars = TorchLARS(model.named_parameters(), config.optim)
    step = functions["step"]
    for i in range(2):
        state, _ = step(state, x1, x2)
        backward(x_torch)
        lars.step(float(schedule(i)))
    after = flat(nnx.state(nnx.merge(graphdef, state)["model"], nnx.Param))
    changes = {  # the change of every parameter over the two steps
        n: (to_torch_layout(n, after[n] - params[n]), twin[t].detach().numpy() - to_torch_layout(n, params[n]))
        for n, t in names.items()
    }
    figures = {"params": n_params, "loss_jax": float(loss_jax), "loss_torch": float(loss_torch)}
    for what, pairs in (("grad", grads), ("update", changes)):
        # over all parameters together (the bound), and the worst single tensor (information: a tensor
        # whose entries cancel, such as a batch-norm shift, keeps only a few correct digits)
        ours, theirs = (np.concatenate([p[i].ravel() for p in pairs.values()]) for i in (0, 1))
        figures[f"{what}_rel_err"] = rel_err(ours, theirs)
        worst = max(pairs, key=lambda n: rel_err(*pairs[n]))
        figures[f"{what}_worst_tensor"] = [worst, rel_err(*pairs[worst])]
    if (
        abs(figures["loss_jax"] - figures["loss_torch"]) > 1e-4
        or figures["grad_rel_err"] > 1e-2
        or figures["update_rel_err"] > 1e-2
    ):
        raise AssertionError(f"the twin does not match the project: {figures}")
    return figures, (params, stats)


def rel_err(ours, theirs):
    """|a - b| / |a| over a whole tensor (0 where both are 0)."""
    scale = np.linalg.norm(ours)
    return float(np.linalg.norm(ours - theirs) / scale) if scale else float(np.linalg.norm(theirs))


def torch_worker(config, spec):
    import jax
    import torch

    torch.set_num_threads(_TORCH_THREADS.value)
    torch.manual_seed(0)
    channels_last, compiled = TORCH_VARIANTS[spec["variant"]]
    temperature = config.method.temperature
    _, _, schedule, (x1, x2) = jax_setup(config)
    x = torch.from_numpy(np.concatenate([np.asarray(x1), np.asarray(x2)])).permute(0, 3, 1, 2).contiguous()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model = torch_model(config)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def prepare(model):
        def loss_of(x):
            z1, z2 = model(x).chunk(2)
            return nt_xent_torch(z1, z2, temperature)

        loss_fn = torch.compile(loss_of) if compiled else loss_of

        def forward(x):
            with torch.no_grad():
                return loss_fn(x).item()

        def backward(x):
            for p in model.parameters():
                p.grad = None
            loss = loss_fn(x)
            loss.backward()
            return loss

        return forward, backward

    start = time.perf_counter()
    checks, (params, stats) = check_twin(config, model, x, prepare)
    checks["check_s"] = round(time.perf_counter() - start, 2)
    load_project_weights(model, params, stats)  # timing starts from the project's initial weights
    forward, backward = prepare(model)
    lars = TorchLARS(model.named_parameters(), config.optim)
    lrs = np.asarray(jax.vmap(schedule)(np.arange(100_000)))
    count = [0]

    def step():
        loss = backward(x)
        lars.step(float(lrs[min(count[0], len(lrs) - 1)]))
        count[0] += 1
        # the project's step also checks the loss and every parameter for non-finite values
        return bool(torch.isfinite(loss)) and all(bool(torch.isfinite(p).all()) for p in model.parameters())

    cuts = {"forward": lambda: forward(x), "backward": lambda: backward(x), "step": step}
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "variant": spec["variant"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **checks,
    }
    serve(lambda cut: cuts[cut](), info)


# ------------------------------------------------------------------------------------------------
# Workers and rounds
# ------------------------------------------------------------------------------------------------


def send(message):
    print("@@ " + json.dumps(message), flush=True)


def serve(call, info):
    """Warms every cut up, says it is ready, then runs `<cut> <n>` commands from stdin until 'quit'."""
    for cut in _CUTS.value:
        for _ in range(_WARMUP.value):
            call(cut)
    send({"ready": True, **info})
    for line in sys.stdin:
        cut, *n = line.split()
        if cut == "quit":
            return
        start = time.perf_counter()
        for _ in range(int(n[0])):
            call(cut)
        send({"seconds": time.perf_counter() - start})


class Worker:
    def __init__(self, label, spec, env):
        self.label, self.spec = label, spec
        args = [a for a in sys.argv[1:] if a.startswith("--config")]  # the config and its overrides
        args += [
            f"--cuts={','.join(_CUTS.value)}",
            f"--warmup={_WARMUP.value}",
            f"--torch_threads={_TORCH_THREADS.value}",
        ]
        command = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--worker={json.dumps(spec)}", *args]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def receive(self):
        for line in self.process.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
            print(f"[{self.label}] {line}", end="")  # anything else the worker prints
        raise RuntimeError(f"worker {self.label} ended (exit {self.process.wait()}); its error is above")

    def run(self, cut, n):
        self.process.stdin.write(f"{cut} {n}\n")
        self.process.stdin.flush()
        return self.receive()["seconds"]

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
        self.process.wait()


def parent(config):
    base = os.environ.get("XLA_FLAGS", "")
    workers = [Worker("jax", {"kind": "jax"}, dict(os.environ))]
    for extra in _XLA_FLAGS.value:
        workers.append(Worker(f"jax {extra}", {"kind": "jax"}, dict(os.environ, XLA_FLAGS=f"{base} {extra}".strip())))
    variants = (["eager"] if _TORCH.value else []) + list(_VARIANTS.value)
    for v in variants:
        if v not in TORCH_VARIANTS:
            raise app.UsageError(f"--variants: {v!r} is not one of {sorted(TORCH_VARIANTS)}")
        workers.append(Worker(f"torch {v}", {"kind": "torch", "variant": v}, dict(os.environ)))
    try:
        info = {}
        for w in workers:  # they start (compile, check, warm up) together; timing begins once all are ready
            info[w.label] = w.receive()
            print(f"{w.label}: ready {json.dumps(info[w.label])}", flush=True)
        load = os.getloadavg()
        seconds = collections.defaultdict(list)
        for r in range(_ROUNDS.value):
            order = workers[r % len(workers) :] + workers[: r % len(workers)]
            for cut in _CUTS.value:
                for w in order:
                    seconds[w.label, cut].append(w.run(cut, _STEPS.value))
            print(f"round {r + 1}/{_ROUNDS.value} done", flush=True)
    except BaseException:  # a worker failed (its error is printed above): stop the others now
        for w in workers:
            w.process.kill()
        raise
    for w in workers:
        w.close()
    report(config, workers, info, seconds, load + os.getloadavg())


def report(config, workers, info, seconds, load):
    images = _STEPS.value * config.data.batch_size
    labels = [w.label for w in workers]
    baselines = [b for b in ("jax", "torch eager") if b in labels]
    rows = []
    for cut in _CUTS.value:
        for label in labels:
            row = {
                "cut": cut,
                "worker": label,
                "images_per_s": round(images / statistics.median(seconds[label, cut]), 1),
            }
            for b in baselines:  # the median of the per-round ratios of images/s
                ratios = [tb / t for t, tb in zip(seconds[label, cut], seconds[b, cut])]
                row[f"vs {b}"] = [round(statistics.median(ratios), 3), round(min(ratios), 3), round(max(ratios), 3)]
            rows.append(row)
    print(
        f"\nSimCLR {config.model.name} stem {config.model.stem}, batch {config.data.batch_size}, "
        f"{config.views.crop_size} px, fixed views; {_ROUNDS.value} rounds x {_STEPS.value} calls; "
        f"{os.cpu_count()} cores, load average {load[0]:.2f} before, {load[3]:.2f} after"
    )
    header = f"{'cut':9} {'worker':56} {'images/s':>9}" + "".join(
        f"  {'vs ' + b + ' (median, min-max)':>30}" for b in baselines
    )
    print(header)
    for row in rows:
        ratios = "".join(f"  {'%.3f (%.3f-%.3f)' % tuple(row['vs ' + b]):>30}" for b in baselines)
        print(f"{row['cut']:9} {row['worker'][:56]:56} {row['images_per_s']:9.1f}{ratios}")
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(json.dumps({"rows": rows, "workers": info, "load": load}, indent=2))


def main(argv):
    config = _CONFIG.value
    if _WORKER.value:
        spec = json.loads(_WORKER.value)
        (jax_worker if spec["kind"] == "jax" else torch_worker)(config, spec)
    else:
        parent(config)


if __name__ == "__main__":
    app.run(main)
