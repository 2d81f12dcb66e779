"""Command line: python -m trainer fit | eval | sample | export | import | encode  (see --help of each).

Exit status: 0 on success, 2 with a one-line message on stderr for a user error (bad
arguments, bad data, a bad run folder), 1 for a run that failed while training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .config import RunConfig, TrainConfig
from .data import BUILTINS
from .errors import TrainerError
from .likelihoods import LIKELIHOODS
from .model import ARCHITECTURES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise TrainerError(f"{self.prog}: {message} (see --help)")


def _int_list(s: str) -> list[int]:
    try:
        values = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 512,256, got {s!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one size, e.g. 512,256")
    return values


def _sigma_dec(s: str):
    if s == "learned":
        return s
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'learned' or a positive number, got {s!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected 'learned' or a positive number, got {s!r}")
    return v


DEVICES = ["auto", "cpu", "cuda"]  # --device of fit and eval (train.pick_device)

# fit's flags that set the run's settings: argparse name -> (RunConfig section, field).
# --device and --threads are this machine's (a resumed run takes them from here, not from
# its config.json); --nproc sets train.world_size (fit_processes).
FIT_SETTINGS = {
    "data": (None, "data"), "arch": ("model", "arch"), "hidden": ("model", "hidden"),
    "latent_dim": ("model", "latent_dim"), "likelihood": ("model", "likelihood"),
    "sigma_dec": ("model", "sigma_dec"), "beta": ("train", "beta"), "kl_warmup": ("train", "kl_warmup"),
    "mc_samples": ("train", "mc_samples"), "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"), "lr": ("train", "lr"), "seed": ("train", "seed"),
    "device": ("train", "device"), "threads": ("train", "threads"),
    "standardize": (None, "standardize"),
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m trainer", description="Train and evaluate the tutorial's VAE.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    f = sub.add_parser("fit", help="train a VAE into a run folder")
    # The run's settings default to None here: a new run takes the --config file's settings,
    # else RunConfig's defaults (shown in --help), and --resume the run's own config.json, so
    # only what changes needs a flag.
    d = RunConfig()
    f.add_argument("--config", metavar="FILE",
                   help="the run's settings from a JSON file in the format of a run's config.json (e.g. "
                        "another run's, to train it again); flags given as well override its values")
    f.add_argument("--data", help=f"data spec: {', '.join(BUILTINS)}[:opts] or a file (default {d.data})")
    f.add_argument("--out", required=True, help="run folder to write")
    f.add_argument("--arch", choices=list(ARCHITECTURES), help="; ".join(
        f"{name}: {arch.help}" for name, arch in ARCHITECTURES.items()) + f" (default {d.model.arch})")
    f.add_argument("--hidden", type=_int_list,
                   help=f"mlp hidden sizes (default {','.join(map(str, d.model.hidden))}); "
                        "MNIST-sized images: e.g. 512,256")
    f.add_argument("--latent-dim", type=int, help=f"d, the size of z (default {d.model.latent_dim})")
    f.add_argument("--likelihood", choices=list(LIKELIHOODS), help="p(x|z): " + "; ".join(
        f"{name}: {lik.help}" for name, lik in LIKELIHOODS.items()) + f" (default {d.model.likelihood})")
    f.add_argument("--sigma-dec", type=_sigma_dec, help=f"'learned' or a fixed value (default {d.model.sigma_dec})")
    f.add_argument("--beta", type=float, help=f"KL weight in the training objective (default {d.train.beta:g})")
    f.add_argument("--kl-warmup", type=int, help=f"epochs to ramp the KL weight from 0 (default {d.train.kl_warmup})")
    f.add_argument("--mc-samples", type=int, help=f"M, samples of z per x (eq 1.31) (default {d.train.mc_samples})")
    f.add_argument("--epochs", type=int, help=f"(default {d.train.epochs}); with --resume: the new total")
    f.add_argument("--batch-size", type=int, help=f"(default {d.train.batch_size})")
    f.add_argument("--lr", type=float,
                   help=f"Adam learning rate (default {d.train.lr:g}); with --resume: a new one for the rest")
    f.add_argument("--seed", type=int, help=f"(default {d.train.seed})")
    f.add_argument("--device", choices=DEVICES, help=f"(default {d.train.device})")
    f.add_argument("--threads", type=int, help=f"torch CPU threads (default {d.train.threads}: all cores)")
    f.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last epoch, with its saved settings")
    f.add_argument("--nproc", type=int,
                   help="training processes on this machine (torch.distributed; starts torchrun for you) "
                        f"(default {d.train.world_size}, or the --config file's world_size)")
    f.add_argument("--standardize", action=argparse.BooleanOptionalAction,
                   help="non-image data from a file: scale each column to mean 0, sd 1 on the training "
                        "split (figures stay in the data's units) (default on)")
    f.add_argument("--quiet", action="store_true", help="no progress output")

    e = sub.add_parser("eval", help="ELBO terms and log p(x) of a trained run")
    e.add_argument("run_dir")
    e.add_argument("--split", choices=["test", "train"], default="test")
    e.add_argument("--k", type=int, default=1000, help="importance samples for log p(x)")
    e.add_argument("--mc-samples", type=int, default=1)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the model runs (a GPU's noise differs from the CPU's: Monte Carlo noise)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--no-quadrature", action="store_true",
                   help="leave out log_px_quadrature (d <= 2: a grid of decodes per sample, up to 500 samples; "
                        "slow for large decoders)")

    s = sub.add_parser("sample", help="decode samples from the prior into a PNG grid (Fig 1.7)")
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("--seed", type=int, default=0)

    # a run as one file, and its codes as a table (trainer.bundle)
    x = sub.add_parser("export", help="write a run folder as one zip (JSON and safetensors files)")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True, help="zip file to write")
    i = sub.add_parser("import", help="check a zip written by export and unpack it into a runs folder")
    i.add_argument("bundle", help="the zip file")
    i.add_argument("--runs", required=True, help="the runs folder to put the run in (must exist)")
    c = sub.add_parser("encode", help="the test set's codes as CSV: mu, logvar, labels, ELBO terms per sample")
    c.add_argument("run_dir")
    c.add_argument("--out", required=True, help="CSV file to write")
    c.add_argument("--split", choices=["test", "train"], default="test")
    c.add_argument("--k", type=int, default=0, help="importance samples for a log_px column (0: none)")
    c.add_argument("--mc-samples", type=int, default=1)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=1)
    return p


def fit_config(a) -> RunConfig:
    """The settings `fit` trains with. A new run starts from the --config file, or from
    RunConfig's defaults without one; --resume from the run's saved config.json, on this
    machine's --device and --threads (the defaults unless given). The flags given on the
    command line override them (fit then refuses a flag that contradicts a resumed run,
    except --epochs and --lr, which may change). Raises TrainerError."""
    from .runs import load_config, load_settings_file

    if a.resume and a.config is not None:
        raise TrainerError("--config cannot go with --resume: a resumed run keeps the settings in its own "
                           "config.json (leave out --config, or train into a new --out)")
    if a.resume and not (Path(a.out) / "config.json").exists():
        raise TrainerError(f"--resume: {a.out} holds no run to resume (no config.json): check --out, "
                           "or leave out --resume to start a new run there")
    if a.resume:
        cfg = load_config(Path(a.out))
        machine = TrainConfig()  # this machine's, not the run's
        cfg.train.device, cfg.train.threads = machine.device, machine.threads
    elif a.config is not None:
        cfg = load_settings_file(Path(a.config))
    else:
        cfg = RunConfig()
    for flag, (section, name) in FIT_SETTINGS.items():
        value = getattr(a, flag)
        if value is not None:
            setattr(getattr(cfg, section) if section else cfg, name, value)
    cfg.validate()
    return cfg


def fit_processes(a, cfg: RunConfig) -> int:
    """How many processes train: --nproc, else the --config file's world_size, else 1."""
    nproc = a.nproc if a.nproc is not None else cfg.train.world_size if a.config is not None else 1
    if not 1 <= nproc <= 1024:
        raise TrainerError("--nproc must be between 1 and 1024")
    return nproc


def cmd_fit(a) -> int:
    from .api import fit

    cfg = fit_config(a)
    nproc = fit_processes(a, cfg)
    from .distributed import launch, launched_by_torchrun, strip_nproc

    if nproc > 1 and not launched_by_torchrun():  # run this command in nproc processes
        return launch(nproc, strip_nproc(a.argv), cfg.train.threads)
    if _rank() != 0:
        a.quiet = True  # rank 0 reports progress for the run
    tty = sys.stderr.isatty()
    t_start = time.monotonic()

    def on_epoch(row):
        if a.quiet:
            return
        sps = row.get("samples_per_s") or 0
        line = (f"epoch {row['epoch']}/{cfg.train.epochs}  test elbo {row['test_elbo']:.3f} "
                f"(recon {row['test_recon']:.3f}, kl {row['test_kl']:.3f}) nats/sample  "
                f"{sps:,.0f} samples/s  {time.monotonic() - t_start:.1f}s")
        print(("\r" + line + "\033[K") if tty else line, file=sys.stderr, end="" if tty else "\n", flush=True)

    state = fit(cfg, a.out, resume=a.resume, on_epoch=on_epoch, handle_signals=True,
                lr=a.lr if a.resume else None)
    if tty and not a.quiet:
        print(file=sys.stderr)
    if _rank() == 0:
        print(f"{state}: {a.out}", file=sys.stderr)
    return 0 if state == "done" else 130


def cmd_eval(a) -> int:
    from .api import evaluate_run, load_run
    from .train import set_threads

    if a.k < 1:
        raise TrainerError("--k must be at least 1")
    if a.mc_samples < 1:
        raise TrainerError("--mc-samples must be at least 1")
    _check_seed(a.seed)
    if not 0 <= a.threads <= 1024:
        raise TrainerError("--threads must be between 0 (all cores) and 1024")
    set_threads(a.threads)
    result = evaluate_run(load_run(a.run_dir), a.split, a.k, a.mc_samples, a.seed, device=a.device,
                          closed_forms=True, quadrature=not a.no_quadrature)
    if a.json:
        print(json.dumps(result))
    else:
        print(f"{a.run_dir} ({a.split}, n={result['n']}), per sample, nats, higher is better:")
        for key in ("elbo", "recon", "kl", "log_px", "gap", "exact_log_px", "log_px_quadrature",
                    "elbo_exact", "kl_to_posterior_exact", "model_log_px_exact"):
            if key in result:
                print(f"  {key:21s} {result[key]:12.4f}")
        print(f"  {'active units':21s} {result['active_units']} of {len(result['kl_per_dim'])}")
        if result.get("reliability"):  # the means break a bound beyond their noise, or are not finite
            print(f"  {result['reliability']}")
    return 0


def cmd_sample(a) -> int:
    from .api import load_run
    from .images import save_grid

    if not 1 <= a.n <= 10_000:
        raise TrainerError("--n must be between 1 and 10000")
    _check_seed(a.seed)
    run = load_run(a.run_dir)
    if len(run.model.data_shape) != 3:
        raise TrainerError(f"{a.run_dir}: the data are not images, so there is no picture to draw")
    save_grid(run.generate(a.n, a.seed).numpy(), a.out)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


def cmd_export(a) -> int:
    from .bundle import export_run

    print(f"wrote {export_run(a.run_dir, a.out)}", file=sys.stderr)
    return 0


def cmd_import(a) -> int:
    from .bundle import import_bundle

    print(f"imported {import_bundle(a.bundle, a.runs)}", file=sys.stderr)
    return 0


def cmd_encode(a) -> int:
    from .bundle import encode_run
    from .train import set_threads

    if not 0 <= a.k <= 100_000:
        raise TrainerError("--k must be between 0 (no log_px column) and 100000")
    if not 1 <= a.mc_samples <= 1000:
        raise TrainerError("--mc-samples must be between 1 and 1000")
    _check_seed(a.seed)
    if not 0 <= a.threads <= 1024:
        raise TrainerError("--threads must be between 0 (all cores) and 1024")
    set_threads(a.threads)
    print(f"wrote {encode_run(a.run_dir, a.out, a.split, a.k, a.mc_samples, a.seed)}", file=sys.stderr)
    return 0


def _rank() -> int:
    """This process's torchrun rank (0 when not launched by torchrun); no torch import."""
    import os

    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**63:
        raise TrainerError("--seed must be a non-negative integer below 2**63")


def _say(line: str) -> None:
    """One line to stderr in one write: the ranks of a torchrun share it, and print's separate
    write of the newline let another rank's line land in the middle (unbuffered stderr)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
        a.argv = list(sys.argv[1:] if argv is None else argv)  # fit --nproc passes it on to torchrun
        return {"fit": cmd_fit, "eval": cmd_eval, "sample": cmd_sample, "export": cmd_export,
                "import": cmd_import, "encode": cmd_encode}[a.command](a)
    except TrainerError as e:
        failed = type(e).__name__ in ("NonFiniteLoss", "PeersLost")
        if _rank() > 0:  # under torchrun rank 0 speaks for the run; the others say it apart
            _say(f"rank {_rank()}: {e}")
        else:
            _say(f"error: {e}")
        # train.NonFiniteLoss is not the user's input: the run failed while training (exit 1),
        # as does distributed.PeersLost (another training process stopped).
        # Matched by name so that a usage error does not have to import torch.
        return 1 if failed else 2
    except OSError as e:  # e.g. an output file in a folder that cannot be written
        where = f"{e.filename}: " if e.filename else ""
        _say(f"error: {where}{e.strerror or e}: choose a folder you can write to")
        return 2
    except KeyboardInterrupt:
        _say("error: interrupted")
        return 130


if __name__ == "__main__":
    status = main()
    group = sys.modules.get("trainer.distributed")
    if group is not None and group.current() is not None:  # a process of a torchrun group
        group.exit_process(status)
    sys.exit(status)
