"""``eirtrain``: EIR's training command line (spec section 1) plus --resume / --overwrite.

The same module runs under torchrun for several processes:
``torchrun --standalone --nproc-per-node 2 -m eir_core.cli.train <the same flags>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from eir_core.errors import EirError

EPILOG = """\
config overrides:
  Any further argument --<config file stem>.<section>.<key>=<value> sets one config value, as in
  EIR: e.g. --globals.basic_experiment.n_epochs=2 (globals.yaml) or
  --input_mnist_array.input_info.input_source=data/x/mnist_npy. An unknown key is an error naming
  the file and the nearest valid key.

environment:
  EIR_SEED             the seed of weights, data order, dropout and imputation (default 0)
  EIR_DIST_TIMEOUT_S   under torchrun: seconds ranks wait for each other, e.g. while rank 0
                       validates (default 1800)
  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RUN_ID
                       set by torchrun (python -m eir_core.cli.train under torchrun trains with
                       one process per rank); not to be set by hand

exit status: 0 done; 2 a config, data or run-folder error (one line, no traceback);
130 / 143 stopped by Ctrl-C / SIGTERM after saving a checkpoint and the resume state.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eirtrain",
        allow_abbrev=False,
        description="Train a model from EIR-style YAML configs. Checkpoints (safetensors bundles), histories,\n"
        "curves, samples and latents go to basic_experiment.output_folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--global_configs",
        nargs="+",
        required=True,
        type=Path,
        metavar="YAML",
        help="global settings (basic_experiment, optimization, lr_schedule, evaluation_checkpoint, ...); "
        "several files are merged in order, a later file's section replacing an earlier one's",
    )
    p.add_argument(
        "--input_configs",
        nargs="*",
        default=[],
        type=Path,
        metavar="YAML",
        help="one file per input (input_info, input_type_info, model_config): an array folder or a tabular CSV",
    )
    p.add_argument(
        "--output_configs",
        nargs="+",
        required=True,
        type=Path,
        metavar="YAML",
        help="one file per output (output_info, output_type_info, model_config, sampling_config)",
    )
    p.add_argument(
        "--fusion_configs",
        nargs="*",
        default=[],
        type=Path,
        metavar="YAML",
        help="the fusion module (model_type, model_config; default: mlp-residual, as in EIR); "
        "several files are merged in order, a later file's section replacing an earlier one's",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_folder from its last saved state (after Ctrl-C, a crash, or to train "
        "a finished run further with a larger n_epochs); its histories are kept and extended",
    )
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the files the run in output_folder recorded writing, and start over (files it did not write stay)",
    )
    p.add_argument(
        "--no-pbar",
        action="store_true",
        default=None,
        help="a log line with rate and ETA every 10 s instead of a progress bar",
    )
    return p


def setup_logging(run_dir: Path | None, level: str = "info", rank: int | None = None) -> None:
    """Log to stderr (and the run's ``logging_history.log``). Ranks other than 0 of a distributed
    run log warnings only, tagged with their rank, and write no file."""
    tag = f" [rank {rank}]" if rank is not None else ""
    fmt = logging.Formatter(f"%(asctime)s %(levelname)s{tag} %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel("WARNING" if rank else level.upper())
    if rank:
        run_dir = None
    for h in list(root.handlers):
        root.removeHandler(h)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "logging_history.log")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def _let_rank_0_speak(wait_s: float = 10.0) -> None:
    """A rank other than 0 leaving on an error that rank 0 reports: torchrun stops every rank as
    soon as one exits with an error, so leaving first could stop rank 0 before it printed the
    message. Wait for that (torchrun's SIGTERM ends this process when rank 0 exits; the run's own
    handler, which would finish a step first, is set aside), at most ``wait_s``."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(wait_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    from eir_core.extras import require

    try:  # eir-core installed without its training extra (a serving install): one line, not a traceback
        require("train", "eirtrain")
    except EirError as e:
        print(f"eirtrain: error: {e}", file=sys.stderr)
        return 2
    from eir_core.config.load import build_experiment_config  # no PyTorch yet (see below)
    from eir_core.data import read_ahead
    from eir_core.train import render

    main_rank = os.environ.get("RANK", "0") in ("", "0")  # torchrun's rank 0, or a single process
    try:
        # Before PyTorch's ~1.5 s import: a mistake in the configs is reported at once, and the
        # array files are read by a forked child during that import.
        cfg = build_experiment_config(
            args.global_configs, args.input_configs, args.output_configs, args.fusion_configs, extra
        )
    except EirError as e:
        if main_rank:  # every rank read the same configs; rank 0 prints the one message
            print(f"eirtrain: error: {e}", file=sys.stderr)
        else:
            _let_rank_0_speak()
        return 2
    except KeyboardInterrupt:
        print("eirtrain: aborted", file=sys.stderr)
        return 130
    read_ahead.start_for(cfg)
    if main_rank:
        render.prestart()  # its imports run beside PyTorch's, next
    from eir_core.train.distributed import Dist, PeerFailed, is_peer_failure

    dist = Dist()
    prog = "eirtrain"
    # Whether every rank is alive and leaving by the same path (then they wait for each other
    # before tearing the process group down); not after a lost peer, an abort or a bug.
    together = False
    try:
        dist = Dist.from_env()
        prog = f"eirtrain[rank {dist.rank}]" if dist.enabled else prog
        from eir_core.train.trainer import Trainer, TrainOptions, run_seed

        g = cfg.global_config
        rank = dist.rank if dist.enabled else None
        setup_logging(None, g.visualization_logging.log_level, rank)
        no_pbar = True if g.visualization_logging.no_pbar else args.no_pbar
        trainer = Trainer(
            cfg, TrainOptions(resume=args.resume, overwrite=args.overwrite, seed=run_seed(), no_pbar=no_pbar), dist
        )
        try:
            trainer.setup()
            trainer.run.record(trainer.run_dir / "logging_history.log")
            setup_logging(trainer.run_dir, g.visualization_logging.log_level, rank)
            code = trainer.train()
        except BaseException as e:  # before the first checkpoint, the same command may start over
            trainer.run.record_failure(f"{type(e).__name__}: {e}")
            trainer.run.release()
            raise
        together = True
        return code
    except PeerFailed as e:
        together = True
        print(f"{prog}: stopping: {e}", file=sys.stderr)
        return 2
    except EirError as e:
        together = True  # user errors are agreed between ranks or raised alike on all of them
        if dist.enabled and dist.rank and not dist.backend:
            _let_rank_0_speak()  # every rank read the same configs; rank 0 prints the one message
            return 2
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: aborted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        if not (dist.backend and is_peer_failure(e)):
            raise
        # A peer died (crash, kill): its own output says why; this rank only explains its exit.
        print(f"{prog}: lost contact with the other processes ({str(e).splitlines()[0][:200]})", file=sys.stderr)
        return 1
    finally:
        render.discard_prestarted()  # only if no trainer took it over
        read_ahead.discard()
        dist.close(synchronize=together)


def exit_now(code: int) -> NoReturn:
    """End the process once ``main`` has returned, skipping the interpreter's teardown: with
    PyTorch and ONNX Runtime loaded that teardown (freeing every module, the libraries' static
    destructors) took ~0.5 s of a run's wall time for nothing. What a normal exit does that
    matters still happens: non-daemon threads are joined, the ``atexit`` functions run (they
    close the log files, and run the finalizers of temporary files), stdout and stderr are
    flushed. The run's own files are all written and closed by then (``Trainer.cleanup``)."""
    import atexit
    import threading

    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone (a closed pipe): nothing left to save
            pass
    os._exit(code)


def run() -> NoReturn:
    """``main`` with the fast exit after a finished run, for ``python -m eir_core.cli.train`` and
    the ``eirtrain`` script. A failed run exits the ordinary way: under torchrun, a rank that
    leaves the error message to rank 0 must not be gone (and the agent stopping the others)
    before rank 0 has printed it."""
    code = main()
    if code != 0:
        sys.exit(code)
    exit_now(code)


if __name__ == "__main__":
    run()
