"""``invlab`` command line: thin wrappers over plain functions.

Every subcommand takes YAML files and ``key=value`` overrides in any order. Configuration and
input mistakes print one paragraph to stderr and exit with code 2 (no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from invlab.config import ConfigError, to_yaml
from invlab.files import atomic_write_text
from train.config import load_config
from train.rundir import DirLock, inside, refuse_existing, run_directory
from train.signals import Interrupted

EXIT_USAGE = 2


def _split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional arguments: ``key=value`` are overrides, everything else a YAML file."""
    overrides = [a for a in args if "=" in a]
    yamls = [a for a in args if "=" not in a]
    return yamls, overrides


def _load(args: Sequence[str], base: dict[str, Any] | None = None):
    yamls, overrides = _split_args(args)
    return load_config(*yamls, overrides=overrides, base=base)


def format_accuracy_table(metrics: dict[str, Any]) -> str:
    """Accuracy per split, with what each held-out split changes against training."""
    data = metrics.get("data", {})
    rows = [f"{'split':<12} {'accuracy':>9}  changes", f"{'-' * 12} {'-' * 9}  {'-' * 40}"]
    for split, values in metrics["splits"].items():
        info = data.get(split, {})
        if split == "val":
            what = "(training distribution; selects the best checkpoint)"
        else:
            what = "+".join(info.get("changes") or []) or "nothing (training distribution)"
            what += f": {info['placement']}" if info.get("placement") else ""
        rows.append(f"{split:<12} {100 * values['accuracy']:>8.2f}%  {what}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- subcommands
def cmd_fit(ns: argparse.Namespace) -> int:
    return _run_fit(_load(ns.args), ns)


def _run_fit(cfg: Any, ns: argparse.Namespace) -> int:
    from train.fit import fit

    result = fit(cfg, resume=ns.resume, overwrite=ns.overwrite)
    print()
    print(format_accuracy_table(result.metrics))
    if "invariance" in result.metrics:
        from eval.report import format_table

        print()
        print(format_table(result.metrics["invariance"]))
    for note in result.notes:
        print(note)
    print(f"\nRun directory: {result.run_dir}")
    return 0


def cmd_finetune(ns: argparse.Namespace) -> int:
    """fit, starting from a checkpoint's config and weights (``model.init_from``)."""
    ckpt = _existing_checkpoint(ns.checkpoint)
    base = read_checkpoint_config(ckpt)
    cfg = _load([*ns.args, f"model.init_from={ckpt}"], base=base)
    if base is not None and cfg.name == base.get("name"):
        cfg.name = f"{cfg.name}-ft"  # never write into the run being fine-tuned
    ns.args = []
    return _run_fit(cfg, ns)


def cmd_config(ns: argparse.Namespace) -> int:
    print(to_yaml(_load(ns.args)), end="")
    return 0


def read_checkpoint_config(path: Path) -> dict[str, Any] | None:
    """The plain config stored in one of our checkpoints, or None for a bare weights file."""
    from models.checkpoint import read_config

    return read_config(path)


def _existing_checkpoint(path: str) -> Path:
    from models.checkpoint import require_file

    return require_file(path)


def cmd_eval(ns: argparse.Namespace) -> int:
    """Evaluate a checkpoint or weights file, or (no file) a library model with its own
    pretrained weights (``model.pretrained=true``)."""
    from eval.report import format_table
    from train.standalone import evaluate_checkpoint

    first, rest = _eval_checkpoint_arg(ns.args)
    ckpt = _existing_checkpoint(first) if first is not None else None
    cfg = _load(rest, base=_weights_config(ckpt, rest) if ckpt is not None else None)
    if ckpt is None and not cfg.model.pretrained:
        raise ConfigError(
            "invlab eval needs a checkpoint or weights file as its first argument, or a model "
            "with its own pretrained weights (e.g. model.name=timm:resnet50.a1_in1k "
            "model.pretrained=true)."
        )
    stamp = f"eval-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    if ns.out:
        out = Path(ns.out)
        refuse_existing(out / "invariance.json", ns.overwrite, "Evaluation report")
    elif ckpt is not None:  # never over fit's own reports, nor another evaluation's (pid)
        out = ckpt.parent.parent / "reports" / stamp
    else:
        out = run_directory(cfg) / stamp
    # An evaluation that writes into a run directory holds that run's lock meanwhile.
    run_dir = ckpt.parent.parent if ckpt is not None and ckpt.parent.name == "checkpoints" else None
    writes_run = run_dir is not None and inside(out, run_dir)
    with DirLock(run_dir) if writes_run else contextlib.nullcontext():
        report = evaluate_checkpoint(ckpt, cfg, out)
    print(format_table(report))
    print(f"\nReport written to {out}")
    return 0


def _eval_checkpoint_arg(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """``(checkpoint, the other arguments)``: the first argument names the file to evaluate,
    unless it is an override, or a YAML config that (with the rest) asks for
    ``model.pretrained``."""
    if not args or "=" in args[0]:
        return None, list(args)
    if Path(args[0]).suffix in (".yaml", ".yml") and Path(args[0]).is_file():
        try:
            if _load(args).model.pretrained:
                return None, list(args)
        except ConfigError:
            pass  # not a config we can read: reported as a checkpoint problem below
    return args[0], list(args[1:])


def _weights_config(path: Path, args: Sequence[str]) -> dict[str, Any] | None:
    """The config a weights file is evaluated with: the one stored in our checkpoint, the JSON
    ``invlab export`` wrote beside it, or (a bare file) the model the user describes."""
    from models.export import read_sidecar, sidecar_config

    stored = read_checkpoint_config(path)
    if stored is not None:
        return stored
    sidecar = read_sidecar(path)
    if sidecar is not None:
        return sidecar_config(sidecar)
    yamls, overrides = _split_args(args)
    if not yamls and not any(o.startswith("model.name=") for o in overrides):
        raise ConfigError(
            f"'{path}' is a bare weights file: nothing in it says which model it belongs to, and "
            f"evaluating it as the default model would measure another network. Describe the "
            f"model: a config YAML, or model.name=... with its options (e.g. "
            f"model.name=timm:resnet18 model.small_input=false), plus the data.mean/data.std it "
            f"was trained with; or export it with `invlab export`, whose JSON beside the weights "
            f"describes it."
        )
    return None


def cmd_export(ns: argparse.Namespace) -> int:
    from models.export import export_checkpoint

    weights, config = export_checkpoint(ns.checkpoint, ns.out, overwrite=ns.overwrite)
    print(f"Wrote {weights} and {config}")
    return 0


def cmd_models(ns: argparse.Namespace) -> int:
    import models

    if ns.name is None:
        print(models.describe(None))
        return 0
    cfg = _load([*ns.args, f"model.name={ns.name}"])
    print(models.describe(cfg.model))
    return 0


def cmd_show_augment(ns: argparse.Namespace) -> int:
    import augment
    from augment import show
    from train.data import build_datamodule

    cfg = _load(ns.args)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    aug = augment.build(cfg.augment)
    aug.reseed(cfg.seed)
    out = refuse_existing(ns.out, ns.overwrite)
    path = show.save_grid(dm.split("train").images[: ns.n], aug, out, n=ns.n)
    print(f"Wrote {path}")
    return 0


def cmd_show_data(ns: argparse.Namespace) -> int:
    from train.data import build_datamodule
    from train.data.show import save_split_grid

    cfg = _load(ns.args)
    out = refuse_existing(ns.out, ns.overwrite)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    print(dm.describe())
    print(f"Wrote {save_split_grid(dm, out, n=ns.n)}")
    return 0


def cmd_sweep(ns: argparse.Namespace) -> int:
    from train.sweep import EXIT_BUSY, run_sweep, slurm_script, summary

    yamls, overrides = _split_args(ns.args)
    if ns.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {ns.jobs}.")
    if ns.emit_slurm:
        path = refuse_existing(ns.emit_slurm, ns.overwrite, "SLURM script")
        atomic_write_text(path, slurm_script(ns.sweep, yamls, overrides))
        print(f"Wrote {path}: submit it with `sbatch {path}`.")
        return 0
    results = run_sweep(
        ns.sweep,
        yamls,
        overrides,
        dry_run=ns.dry_run,
        jobs=ns.jobs,
        only=ns.point,
        overwrite=ns.overwrite,
        report=print,
    )
    print()
    print(summary(results))
    if not ns.dry_run and ns.point is None:
        out_dirs = sorted({str(r.run_dir.parent) for r in results})
        print(f"Tabulate them: invlab report {' '.join(out_dirs)}  (or invlab compare <runs>)")
    statuses = {r.status for r in results}
    if ns.dry_run:
        return 0
    if statuses & {"failed", "stale"}:
        return 1
    return EXIT_BUSY if "busy" in statuses else 0


def cmd_report(ns: argparse.Namespace) -> int:
    from eval.study import contrast_summary, text_table, write_report

    out = Path(ns.out) if ns.out else Path(ns.dirs[0]) / "report"
    refuse_existing(out / "report.csv", ns.overwrite, "Report")
    result = write_report(
        ns.dirs,
        out,
        by=ns.by or (),
        contrast_key=ns.contrast,
        baseline=ns.baseline,
        gap_to=ns.gap_to,
    )
    runs = sum(len(g.runs) for g in result["groups"])
    print(f"{runs} runs in {len(result['groups'])} groups; mean [95% t-interval across seeds]")
    print(text_table(result["groups"], result["rows"], result["keys"], ns.gap_to))
    if len(result["groups"]) > 1:
        print(f"\nContrasts: {contrast_summary(result['contrasts'])} (contrasts.md)")
    if result["controls"]:
        print(f"Factor-in-training control: {len(result['controls'])} rows (controls.md)")
    print(f"\nWrote {', '.join(str(f) for f in result['files'])}")
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from eval.compare import format_comparison, load_runs, save_comparison_plot

    if ns.out:  # the plot is written as PNG and as PDF beside it
        for path in (Path(ns.out), Path(ns.out).with_suffix(".pdf")):
            refuse_existing(path, ns.overwrite)
    rows = load_runs(ns.runs)
    print(format_comparison(rows))
    if ns.out:
        print(f"\nWrote {save_comparison_plot(rows, ns.out)}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one parser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="invlab",
        description="Train CNN ablations and measure their shift/scale invariance on typical "
        "vs atypical images.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, func: Any, help: str, *, first: str | None = None, **kw: Any):
        """A subcommand taking an optional ``first`` positional, then CONFIG... key=value..."""
        p = sub.add_parser(name, help=help, **kw)
        if first == "checkpoint":
            p.add_argument("checkpoint", help=".ckpt from `invlab fit`, or a weights file")
        elif first == "name":
            p.add_argument("name", nargs="?", help="e.g. cnn, timm:resnet18, tv:resnet18")
        p.add_argument(
            "args",
            nargs="*",
            metavar="CONFIG|key=value",
            help="YAML config files and key=value overrides, in any order (later wins)",
        )
        p.set_defaults(func=func)
        commands[name] = p
        return p

    def run_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.ckpt")
        p.add_argument("--overwrite", action="store_true", help="replace an existing run dir")

    run_flags(add("fit", cmd_fit, "train a model; writes runs/<name>/"))
    finetune_doc = (
        "Fine-tune: the checkpoint's stored config (or the schema, for a bare weights file) <- "
        "CONFIG files <- key=value overrides, with model.init_from set to the checkpoint. The "
        "run is named <name>-ft unless name=... is given. A classifier head of another size "
        "(data with other classes) is re-initialised."
    )
    run_flags(
        add(
            "finetune",
            cmd_finetune,
            "train from a checkpoint: its config and weights, plus your changes",
            first="checkpoint",
            description=finetune_doc,
        )
    )
    add("config", cmd_config, "print the resolved config with every default")
    p = add(
        "eval",
        cmd_eval,
        "invariance evaluation of a checkpoint, a weights file, or a pretrained library model",
        description="invlab eval [CHECKPOINT] [CONFIG...] [key=value...]: CHECKPOINT is a .ckpt "
        "of `invlab fit`, or a weights file (with the JSON `invlab export` writes beside it, or a "
        "model description); without it, model.pretrained=true evaluates a timm/torchvision "
        "model with its own pretrained weights.",
    )
    p.add_argument("--out", help="output directory (default: <run>/reports/eval-<time>-<pid>/)")
    p.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    p = sub.add_parser("export", help="a checkpoint's weights as safetensors + model config JSON")
    p.add_argument("checkpoint", help=".ckpt written by `invlab fit`")
    p.add_argument("out", help="OUT.safetensors (OUT.json is written next to it)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_export)
    commands["export"] = p
    add("models", cmd_models, "list models, or what antialias() rewrites in one", first="name")
    for name, func, what, n in (
        ("show-augment", cmd_show_augment, "original vs augmented samples", 8),
        ("show-data", cmd_show_data, "sample rows of every split (typical, atypical...)", 10),
    ):
        p = add(name, func, f"save a PNG of {what}")
        p.add_argument("--out", default=f"{name.split('-')[1]}_samples.png", help="PNG path")
        p.add_argument("-n", type=int, default=n, help="images (per row)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    p = sub.add_parser(
        "sweep",
        help="run a sweep's grid here: finished points skipped, interrupted ones resumed",
    )
    p.add_argument("sweep", help="a W&B grid sweep YAML, e.g. configs/sweeps/ablation.yaml")
    p.add_argument("args", nargs="*", metavar="CONFIG|key=value", help="base config + overrides")
    p.add_argument("--dry-run", action="store_true", help="list the points, train nothing")
    p.add_argument("--jobs", type=int, default=1, help="points run in parallel (one GPU each)")
    p.add_argument("--point", type=int, help="run only grid point K (0-based; SLURM array task)")
    p.add_argument("--emit-slurm", metavar="FILE", help="write an sbatch array script instead")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rerun points whose stored config differs; replace an existing --emit-slurm FILE",
    )
    p.set_defaults(func=cmd_sweep)
    commands["sweep"] = p

    p = sub.add_parser("report", help="a study's runs grouped by seed: tables and plots")
    p.add_argument(
        "dirs",
        nargs="+",
        help="run dirs, `invlab eval` outputs, or folders of them (a sweep's out_dir)",
    )
    p.add_argument("--by", nargs="+", metavar="KEY", help="swept key(s) for the x axis")
    p.add_argument(
        "--contrast",
        metavar="KEY",
        help="contrast only groups that differ in KEY (default: every varied key)",
    )
    p.add_argument(
        "--baseline",
        metavar="VALUE",
        help="compare every value of the contrast key with this one (default: all pairs)",
    )
    p.add_argument(
        "--gap-to",
        metavar="SPLIT",
        default="typical",
        help="the split gaps are measured to (default: typical; `reference` for a study whose "
        "arms change the training distribution: also writes the factor-in-training control)",
    )
    p.add_argument("--out", help="output folder (default: <first DIR>/report)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report there")
    p.set_defaults(func=cmd_report)
    commands["report"] = p

    p = sub.add_parser("compare", help="finished runs side by side (ablation table + plot)")
    p.add_argument("runs", nargs="+", help="run directories, e.g. runs/*")
    p.add_argument("--out", help="also save a bar plot (PNG)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_compare)
    commands["compare"] = p
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in commands:
        parser.parse_args(argv)  # help, or the usage error for an unknown command
    # Flags may come anywhere among CONFIG and key=value arguments.
    ns = commands[argv[0]].parse_intermixed_args(argv[1:])
    ns.command = argv[0]
    try:
        return ns.func(ns)
    except ConfigError as err:
        print(f"invlab {ns.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the file system refused (permissions, full disk, missing folder)
        where = f" on '{err.filename}'" if err.filename else ""
        print(
            f"invlab {ns.command}: error: file system error{where}: {err.strerror or err}. "
            "Check that the path exists, is writable and that the disk has space.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except Interrupted as err:
        print(f"invlab {ns.command}: {err.message}", file=sys.stderr)
        return int(err.code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
