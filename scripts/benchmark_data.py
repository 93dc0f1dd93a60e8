"""The host data pipeline at ImageNet scale: decode + fit + batch assembly, in images/s per core.

    python scripts/benchmark_data.py                       # 2000 synthetic photos under /tmp
    python scripts/benchmark_data.py --n 4000 --workers 1,2,4 --image_size 512

Writes (once) a folder of N synthetic JPEGs the size of a typical ImageNet photo (500x375, every
fourth one 375x500; quality 90; smooth random shapes and colours under fine grain, so they compress
like photos), then reads it exactly as a `:imagenet` preset does: `data.load`
with data.folder (fit 'whole', the longer side at most data.image_size = 512) and `data.Loader` batches
(decode with PIL, fit into the canvas, assemble the uint8 batch, place it on the device), with
data.workers decode threads. The files are read once before timing, so the figures are decode, not
disk.

Two rates per worker count: wall images/s, and images per CPU-second of the process (the per-core
rate, which other jobs on a shared machine change much less than the wall rate). Then the arithmetic
for an accelerator host: cores x the per-core rate, and the cap that the part of each image's work
held under Python's GIL (header parsing, the fit's Python code, batch assembly) puts on one process
of threads, against what the step needs (ResNet-50 bf16 on an H100: >= 3,000 images/s).

With --grain it also reads the same images through Grain (`grain.MapDataset` of the paths, the same
decode + fit per image, batched, `mp_prefetch` over worker processes: no GIL shared between workers)
and prints its rates beside data.Loader's threads. Grain is not a dependency of the project: install
it to compare (`pip install grain`).

How far threads scale: one and two free-running decode threads in three rounds, and the serialised share
of each image's work that the ratio implies (Amdahl), hence the cap on one process of threads.

It also measures PIL's JPEG draft mode (`Image.draft`: the decoder scales by 1/2, 1/4 or 1/8 in the
DCT domain, so a large photo decodes at a fraction of the cost) for a target smaller than the
photo: the speed-up, and how far the result moves from the full decode + the same antialiased
resize (mean and max |difference| in uint8 levels), for drafts down to 1x and to 2x the target.
"""

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import ml_collections
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common import data

REQUIRED = 3000  # images/s: ResNet-50 bf16 on one H100 (issue 15)


def synthetic_photo(rng, width, height, grain):
    """A photo-like uint8 image: a smooth random colour field, a few blurred shapes, fine grain (a
    random window of the `grain` tile, int16 noise [H', W', 3] at least as large as the image)."""
    coarse = rng.integers(0, 256, (6, 8, 3), np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 8)):
        x, y, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 150)
        draw.ellipse((x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r), fill=tuple(rng.integers(0, 256, 3).tolist()))
    image = np.asarray(image.filter(ImageFilter.GaussianBlur(3)), np.int16)
    top, left = rng.integers(0, grain.shape[0] - height + 1), rng.integers(0, grain.shape[1] - width + 1)
    return np.clip(image + grain[top : top + height, left : left + width], 0, 255).astype(np.uint8)


def write_folder(folder, n, seed=0):
    """N JPEGs 500x375 (every fourth 375x500), quality 90, in a flat folder (unlabelled); kept if there."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grain = rng.normal(0, 12, (700, 700, 3)).round().astype(np.int16)  # sensor grain: what makes a photo cost bits
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        if path.exists():
            continue
        w, h = (375, 500) if i % 4 == 3 else (500, 375)
        Image.fromarray(synthetic_photo(rng, w, h, grain)).save(path, quality=90)
    return sorted(folder.glob("*.jpg"))[:n]


def measure_loader(folder, image_size, workers, batch_size, passes):
    """(wall images/s, images per CPU-second) of data.Loader batches, `passes` times over the folder."""
    import jax

    cfg = ml_collections.ConfigDict(
        dict(name="", folder=str(folder), data_dir="", image_size=image_size, fit="whole", workers=workers)
    )
    dataset = data.load(cfg, "train")
    loader = data.Loader(dataset, batch_size, 0, data.make_mesh(), shuffle=False)
    batches = loader.iterate(0)  # as the training loop reads it: a prefetch thread runs ahead of the consumer
    jax.block_until_ready(next(batches)[1])  # threads started, the first transfer done
    steps = passes * dataset.num_examples // batch_size - 1
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        jax.block_until_ready(next(batches)[1])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    batches.close()
    images = steps * batch_size
    return images / wall, images / cpu


def _decode_fit(path, image_size):
    with Image.open(path) as image:
        return data._fit(image, image_size, "whole")[0]


def measure_grain(paths, image_size, workers, batch_size, passes):
    """(wall images/s, images per CPU-second of this process and its workers) of Grain batches of the
    same decode + fit, placed on the device, `passes` times over the paths, over `workers` worker
    processes (0: in this process)."""
    import functools

    import grain
    import jax
    from absl import flags

    if not flags.FLAGS.is_parsed():  # Grain reads absl flags; this script parses its own with argparse
        flags.FLAGS.mark_as_parsed()

    def cpu():  # CPU seconds of this process, its live worker processes and every reaped one
        import resource

        import psutil

        me, reaped = psutil.Process(), resource.getrusage(resource.RUSAGE_CHILDREN)
        live = sum(sum(p.cpu_times()[:2]) for p in me.children(recursive=True))
        return sum(me.cpu_times()[:2]) + live + reaped.ru_utime + reaped.ru_stime

    dataset = (
        grain.MapDataset.source([str(p) for p in paths])
        .repeat(passes)
        .map(functools.partial(_decode_fit, image_size=image_size))
    )
    dataset = dataset.batch(batch_size, drop_remainder=True, batch_fn=np.stack).to_iter_dataset()
    if workers:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    iterator = iter(dataset)
    next(iterator)  # workers started (each imports this script's modules), the first batch delivered
    wall, start_cpu, images = time.perf_counter(), cpu(), 0
    for batch in iterator:  # placed on the device, as data.Loader's batches
        jax.block_until_ready(jax.device_put(batch))
        images += len(batch)
    wall, used = time.perf_counter() - wall, cpu() - start_cpu
    return images / wall, images / used


def thread_scaling(paths, image_size, seconds=6.0, rounds=3):
    """[(images/s of one thread, of two threads)] per round: the same decode + fit in free-running
    threads of this process (nothing else: no batching, no device). On two free cores, two threads
    reach 2x one thread's rate less the part of each image's work that holds the GIL (Amdahl:
    serial fraction s = 2 r1 / r2 - 1), which is what caps one process of threads at r1 / s."""
    import threading

    def decode(stop, counts, offset):
        k = offset
        while not stop.is_set():
            _decode_fit(paths[k % len(paths)], image_size)
            k += 1
        counts.append(k - offset)

    rows = []
    for _ in range(rounds):
        rates = []
        for n in (1, 2):
            stop, counts = threading.Event(), []
            threads = [threading.Thread(target=decode, args=(stop, counts, i * len(paths) // 2)) for i in range(n)]
            for t in threads:
                t.start()
            time.sleep(seconds)
            stop.set()
            for t in threads:
                t.join()
            rates.append(sum(counts) / seconds)
        rows.append(tuple(rates))
    return rows


def fit_timings(paths, image_size):
    """CPU seconds per image on one thread: (Image.open: the header, parsed in Python; load: the
    decode in C, which releases the GIL; fit into the canvas: the resize, when there is one, in C)."""
    opened = decoded = fitted = 0.0
    for path in paths:
        t0 = time.process_time()
        with Image.open(path) as image:
            t1 = time.process_time()
            image.load()
            t2 = time.process_time()
            data._fit(image, image_size, "whole")
        t3 = time.process_time()
        opened, decoded, fitted = opened + t1 - t0, decoded + t2 - t1, fitted + t3 - t2
    return opened / len(paths), decoded / len(paths), fitted / len(paths)


def drafted_fit(path, image_size, margin):
    """data._fit of the image decoded in draft mode: DCT scaling to no less than margin x the fit's size."""
    with Image.open(path) as image:
        w, h = image.size
        scale = min(1.0, image_size / max(w, h))
        image.draft("RGB", (int(np.ceil(w * scale * margin)), int(np.ceil(h * scale * margin))))
        drafted = image.size
        canvas, extent = data._fit(image, image_size, "whole")
    return canvas, extent, drafted


def measure_draft(paths, image_size):
    """For each margin (1, 2): (the draft's decode size, speed-up over the full decode, mean and max
    |difference| in uint8 levels of the fitted image against the full decode's)."""
    rows = []
    full_s = 0.0
    full = []
    for path in paths:
        start = time.perf_counter()
        with Image.open(path) as image:
            full.append(data._fit(image, image_size, "whole"))
        full_s += time.perf_counter() - start
    for margin in (1, 2):
        start = time.perf_counter()
        out = [drafted_fit(p, image_size, margin) for p in paths]
        draft_s = time.perf_counter() - start
        diffs = []
        for (canvas, extent, _), (want, want_extent) in zip(out, full):
            assert tuple(extent) == tuple(want_extent)
            h, w = extent
            diffs.append(np.abs(canvas[:h, :w].astype(np.int16) - want[:h, :w].astype(np.int16)))
        rows.append(
            dict(
                margin=margin,
                decoded_size=out[0][2],
                speedup=full_s / draft_s,
                mean_abs=float(np.mean([d.mean() for d in diffs])),
                max_abs=int(max(d.max() for d in diffs)),
            )
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic photos in the folder")
    parser.add_argument("--folder", default="/tmp/ssljax_synthetic_jpegs", help="where they are written")
    parser.add_argument("--image_size", type=int, default=512, help="data.image_size (the :imagenet canvas)")
    parser.add_argument("--workers", default="1,2", help="data.workers values to measure")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--passes",
        type=int,
        default=3,
        help="reads of the folder per measurement (so that the buffers filled before the clock starts count little)",
    )
    parser.add_argument("--cores", type=int, default=16, help="cores of the accelerator host, for the arithmetic")
    parser.add_argument("--grain", action="store_true", help="also read the images with Grain's worker processes")
    args = parser.parse_args()

    folder = pathlib.Path(args.folder)
    start = time.perf_counter()
    paths = write_folder(folder, args.n)
    size_kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
    print(f"{len(paths)} JPEGs in {folder} (mean {size_kb:.0f} KB; {time.perf_counter() - start:.0f} s to write)")
    for p in paths:  # into the page cache: what follows times decoding, not the disk
        p.read_bytes()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")

    open_s, decode_s, fit_s = fit_timings(paths[:300], args.image_size)
    print(
        f"one thread, CPU ms per image: open (header) {1e3 * open_s:.2f}, decode {1e3 * decode_s:.2f}, "
        f"fit into the {args.image_size}x{args.image_size} canvas {1e3 * fit_s:.2f}"
    )
    rates = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        wall, per_cpu = measure_loader(folder, args.image_size, workers, args.batch_size, args.passes)
        rates[workers] = (wall, per_cpu)
        print(
            f"data.Loader, {workers} worker(s): {wall:7.1f} images/s wall, {per_cpu:7.1f} images per "
            f"CPU-second (load average {os.getloadavg()[0]:.1f})"
        )
    if args.grain:
        for workers in [int(w) for w in args.workers.split(",")]:
            wall, per_cpu = measure_grain(paths, args.image_size, workers, args.batch_size, args.passes)
            print(
                f"Grain, {workers} worker process(es): {wall:7.1f} images/s wall, {per_cpu:7.1f} images per "
                f"CPU-second (this process and its workers; load average {os.getloadavg()[0]:.1f})"
            )
    if len(rates) > 1:
        few, many = min(rates), max(rates)
        print(
            f"{few} -> {many} workers: {rates[many][0] / rates[few][0]:.2f}x wall on this machine "
            f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}: beyond {os.cpu_count()} runnable "
            f"processes the wall rate measures the neighbours), "
            f"{rates[many][1] / rates[few][1]:.2f}x images per CPU-second"
        )
    per_core = rates[min(rates)][1]
    # Held under the GIL: at least the header parse (Python), at most all but the C decode.
    least, most = open_s, max(1 / per_core - decode_s, open_s)
    cap_low, cap_high = 1 / most, 1 / least
    print(
        f"arithmetic: {args.cores} cores x {per_core:.0f} images/s per core = {args.cores * per_core:.0f} images/s "
        f"if the threads scale. Held under the GIL per image: at least the header parse ({1e3 * least:.2f} ms), at "
        f"most all but the C decode ({1e3 * most:.2f} ms), so one process of threads tops out between "
        f"{cap_low:.0f} and {cap_high:.0f} images/s whatever the cores. ResNet-50 bf16 on an H100 needs >= "
        f"{REQUIRED}: {REQUIRED / per_core:.1f} cores' worth of decoding; "
        + (
            f"{args.cores} cores reach it"
            if args.cores * per_core >= REQUIRED
            else f"{args.cores} cores do NOT reach it"
        )
        + (
            ", and the GIL allows it"
            if cap_low >= REQUIRED
            else ", the GIL may not allow it in one process (below it at the upper bound): one process per "
            "accelerator (the multi-process launch) gives each its own"
            if cap_high >= REQUIRED
            else ", but the GIL does not allow it in one process"
        )
    )

    scaling = thread_scaling(paths, args.image_size)
    for one, two in scaling:
        print(f"free-running decode + fit threads: 1 thread {one:.0f} images/s, 2 threads {two:.0f} ({two / one:.2f}x)")
    one, two = sorted(scaling, key=lambda r: r[1] / r[0])[len(scaling) // 2]  # the median round
    serial = max(2 * one / two - 1, 0.0)
    print(
        f"Amdahl on the median round: {serial:.3f} of each image's work serialised (the GIL and anything else "
        f"shared), so one process of threads caps at "
        + (f"{one / serial:.0f} images/s" if serial > 0 else "no measurable limit")
        + f" (load average {os.getloadavg()[0]:.1f}; on a loaded machine the two threads also lose to neighbours)"
    )

    target = 224  # a target below the photo's size (the evaluation view's 256 / 224); 512 keeps it native
    for row in measure_draft(paths[:200], target):
        print(
            f"draft to >= {row['margin']}x the {target} fit: decodes at {row['decoded_size']}, "
            f"{row['speedup']:.2f}x faster than the full decode + fit; |difference| mean {row['mean_abs']:.2f}, "
            f"max {row['max_abs']} levels"
        )


if __name__ == "__main__":
    main()
