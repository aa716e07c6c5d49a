"""Peak memory of the streaming data path (``data.stream=true``) against the number of images.

Claim: with ``data.render=false`` and ``data.stream=true`` the peak resident memory of an
evaluation does not grow with the data: the evaluation of a tiny CNN over an ImageFolder of 2,000
and of 20,000 JPEGs of 224 px peaks within 10% (images decoded by DataLoader workers a chunk at
a time; only labels, instance ids, file names and per-image metric values grow with N). A
streaming fit of a few hundred steps on the small folder is measured too.

Every case runs in its own process (``--case``), so the peaks are independent: the parent reads
``resource.getrusage`` of the main process (``RUSAGE_SELF``) and of its largest DataLoader worker
(``RUSAGE_CHILDREN``). The JPEGs are written fast: ``--distinct`` random images (smooth noise,
so they compress like photographs) are encoded once and their bytes written under many names;
``train/`` holds hard links to the files of ``val/``. The evaluated split is ``val/`` (all N
images, ``eval.n_images=N``); the fit reads ``train/``. Every file is decoded at its 224 px and
fitted to the model input (default 32 px, so that 20,000 images evaluate in minutes on a CPU;
``--image-size 224`` for the full size: the chunks, not their number, grow).

    .venv/bin/python benchmarks/stream_memory.py [--sizes 2000 20000] [--steps 300] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from _common import machine
from PIL import Image

HERE = Path(__file__).resolve().parent
CLASSES = 10


def write_folder(root: Path, n: int, px: int = 224, distinct: int = 16, seed: int = 0) -> Path:
    """An ImageFolder of ``n`` JPEGs of ``px`` px in ``CLASSES`` classes: ``root/val/<class>/``
    (the files) and ``root/train/<class>/`` (hard links to them, copies where links fail)."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(distinct):
        low = rng.integers(0, 256, (px // 16, px // 16, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((px, px), Image.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
        blobs.append(buf.getvalue())
    for part in ("val", "train"):
        for c in range(CLASSES):
            (root / part / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = Path(f"c{i % CLASSES}") / f"{i:06d}.jpg"
        path = root / "val" / name
        path.write_bytes(blobs[i % distinct])
        try:
            os.link(path, root / "train" / name)
        except OSError:
            (root / "train" / name).write_bytes(blobs[i % distinct])
    return root


def overrides(root: Path, n: int, args: argparse.Namespace) -> list[str]:
    """The config of a case: the folder taken as it is, streamed, a tiny CNN."""
    return [
        "data.source=folder",
        f"data.root={root}",
        "data.render=false",
        "data.stream=true",
        f"data.image_size={args.image_size}",
        f"data.num_workers={args.workers}",
        f"data.n_train={n}",
        "data.n_val=0",
        f"data.heldout.typical.n={n}",
        *(f"data.heldout.{s}.n=0" for s in ("position", "scale", "background", "atypical")),
        f"data.batch_size={args.batch}",
        "model.widths=[8,16]",
        "eval.transforms=[translate]",
        "eval.max_shift_px=2",
        f"eval.n_images={n}",
        f"eval.batch_size={args.eval_batch}",
        "eval.plots=false",
        "logger.wandb.mode=disabled",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]


def run_case(
    case: str, root: Path, n: int, args: argparse.Namespace, malloc: str = "fixed"
) -> dict[str, Any]:
    """One case in this process: ``eval`` (every image of ``val/``) or ``fit`` (``--steps``
    steps on ``train/``, no evaluation). Returns wall time, the data notes and the peaks.
    ``malloc="glibc"`` skips the mmap threshold streaming fixes (``train.data.heap``) for this
    case only: glibc's own dynamic threshold, as before the fix was the default."""
    from train.data import datamodule

    if malloc == "glibc":
        with mock.patch.object(datamodule, "fix_mmap_threshold", lambda: None):
            return _run_case(case, root, n, args)
    return _run_case(case, root, n, args)


def _run_case(case: str, root: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from eval.runner import evaluate
    from train.config import load_config
    from train.data import build_datamodule
    from train.module import Classifier

    torch.manual_seed(0)
    start = time.perf_counter()
    if case == "eval":
        cfg = load_config(overrides=overrides(root, n, args))
        dm = build_datamodule(cfg)
        dm.setup()
        model = Classifier(cfg, num_classes=dm.num_classes)
        report = evaluate(model, dm, cfg.eval, image_size=int(cfg.data.image_size), progress=False)
        done = int(report["splits"]["typical"]["n_images"])
        notes = dm.notes
    else:
        from train.fit import fit

        extra = [
            f"trainer.max_steps={args.steps}",
            "trainer.max_epochs=-1",
            f"data.heldout.typical.n={min(64, n)}",  # the test pass after training: a few batches
            "eval.enabled=false",
            f"out_dir={root / 'runs'}",
            "name=stream_fit",
        ]
        cfg = load_config(overrides=[*overrides(root, n, args), *extra])
        result = fit(cfg, overwrite=True)
        done = int(args.steps)
        notes = [n for n in result.notes if n.startswith(("Data:", "Memory:"))]
    return {
        "case": case,
        "n": n,
        "done": done,
        "seconds": time.perf_counter() - start,
        "notes": notes,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def in_subprocess(
    case: str, root: Path, n: int, args: argparse.Namespace, malloc: str = "glibc"
) -> dict[str, Any]:
    """``run_case`` in a fresh interpreter: its peak is its own (``--quick``: in this process,
    the code path only). ``malloc="fixed"``: the default, glibc's mmap threshold fixed at
    128 KiB by the datamodule when it streams (``train.data.heap``), which stops the heap
    fragmenting under the chunk loop's alternating large allocations; ``glibc``: that fix
    skipped, glibc's default dynamic threshold. ``MALLOC_MMAP_THRESHOLD_`` is removed from the
    case's environment (it would override both)."""
    if args.quick:
        return {**run_case(case, root, n, args, malloc), "malloc": malloc}
    cmd = [sys.executable, __file__, "--case", case, "--root", str(root), "--n", str(n)]
    for key in ("image_size", "workers", "batch", "eval_batch", "steps"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--malloc", malloc]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} n={n} failed:\n{proc.stderr[-4000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "malloc": malloc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000])
    parser.add_argument("--steps", type=int, default=300, help="fit steps on the small folder")
    parser.add_argument("--image-size", type=int, default=32, help="model input, px")
    parser.add_argument("--px", type=int, default=224, help="JPEG side, px")
    parser.add_argument("--distinct", type=int, default=16, help="distinct images encoded")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch", type=int, default=16, help="training batch")
    parser.add_argument("--eval-batch", type=int, default=256, help="views per forward pass")
    parser.add_argument(
        "--malloc",
        nargs="+",
        choices=("glibc", "fixed"),
        default=["glibc", "fixed"],
        help="allocator settings to measure the evaluations under (see in_subprocess)",
    )
    parser.add_argument("--dir", default=None, help="where the folders go (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="tiny folders, a few steps")
    parser.add_argument("--case", choices=("eval", "fit"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child: one case, one JSON line
        print(json.dumps(run_case(args.case, Path(args.root), args.n, args, args.malloc[0])))
        return
    if args.quick:
        args.sizes, args.steps, args.px, args.image_size = [40, 200], 5, 48, 32
        args.workers, args.distinct, args.malloc = 1, 4, ["glibc"]
    print(__doc__.split("\n\n")[1].replace("\n", " ").replace("Claim: ", "claim: ", 1))
    print(machine(threads=None))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = []
        for n in args.sizes:
            start = time.perf_counter()
            write_folder(Path(tmp) / f"n{n}", n, args.px, args.distinct)
            print(
                f"wrote {n} JPEGs of {args.px} px ({args.distinct} distinct) in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
        for malloc in args.malloc:
            rows += [
                in_subprocess("eval", Path(tmp) / f"n{n}", n, args, malloc) for n in args.sizes
            ]
        small = Path(tmp) / f"n{args.sizes[0]}"
        rows.append(in_subprocess("fit", small, args.sizes[0], args, args.malloc[0]))
    print(
        f"model input {args.image_size} px, {args.workers} worker(s), eval.batch_size "
        f"{args.eval_batch}, training batch {args.batch}"
    )
    if args.quick:
        print("quick: cases ran in this process, so the peaks are not independent")
    head = f"{'case':24s} {'malloc':>6s} {'images':>7s} {'seconds':>8s} {'peak RSS':>10s}"
    print(f"{head} {'worker peak':>12s}")
    for r in rows:
        what = f"eval ({r['done']} images)" if r["case"] == "eval" else f"fit ({r['done']} steps)"
        print(
            f"{what:24s} {r['malloc']:>6s} {r['n']:7d} {r['seconds']:8.1f} {r['rss_mib']:7.0f} MiB "
            f"{r['worker_rss_mib']:8.0f} MiB"
        )
    print("notes: " + " | ".join(dict.fromkeys(note for r in rows for note in r["notes"])))
    for malloc in args.malloc:
        small, large = (r for r in rows if r["case"] == "eval" and r["malloc"] == malloc)
        ratio = large["rss_mib"] / small["rss_mib"]
        verdict = "within" if abs(ratio - 1) <= 0.10 else "NOT within"
        print(
            f"peak RSS, eval of {large['n']} / {small['n']} images: {large['rss_mib']:.0f} / "
            f"{small['rss_mib']:.0f} MiB = {ratio:.3f} ({verdict} 10%; malloc {malloc})"
        )


if __name__ == "__main__":
    main()
