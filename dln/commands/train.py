"""`dln train`: train DLN with JAX or PyTorch on built-in, synthetic or LOL-layout data."""

from __future__ import annotations

ORDER = 40


def register(sub) -> None:
    from core.recipe import AUTHORS_RECIPE as recipe
    from core.recipe import LR_DECAYS, short_number
    from dln.arguments import (add_cpu_split_option, decay, int_range, nonnegative_int,
                               positive_float, positive_int, seed)
    from dln.training_settings import (FRAMEWORKS, MAX_BATCH, MAX_DEVICES, MAX_PATCH,
                                       MAX_WORKERS, PRECISIONS)

    p = sub.add_parser(
        "train", help="train DLN (JAX: Flax Linen or NNX; or PyTorch), resumable, with logs and a "
                       "loss plot",
        description=f"Train DLN with the authors' recipe ({recipe.describe()}). Writes "
                    "OUT/weights.safetensors (usable by `dln enhance`), OUT/optimizer.safetensors, "
                    "OUT/log.csv, OUT/log.json and OUT/loss.png; each checkpoint is published whole as "
                    "OUT/checkpoints/step-N/ first, so --resume survives a kill at any moment; "
                    "reports held-out PSNR at the end.")
    p.add_argument("--framework", choices=FRAMEWORKS, default="jax",
                   help="jax (the Flax Linen port), nnx (the Flax NNX port) or torch (default jax)")
    p.add_argument("--data", default="builtin",
                   help="'builtin' (scikit-image photographs darkened on the fly), a LOL-layout "
                        "folder (low/ + high/, or our485/ + eval15/), or a folder of images to "
                        "darken on the fly (default builtin)")
    p.add_argument("--init", default=None, help="start from this .pth or .safetensors checkpoint")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_int, default=None,
                        help=f"epochs to run (default {recipe.epochs}, the authors')")
    length.add_argument("--steps", type=positive_int, default=None,
                        help="steps to run instead of epochs")
    p.add_argument("--batch", type=int_range(1, MAX_BATCH), default=recipe.batch,
                   help=f"global batch size (default {recipe.batch})")
    p.add_argument("--patch", type=int_range(11, MAX_PATCH), default=recipe.patch,
                   help=f"square crop size (default {recipe.patch})")
    p.add_argument("--lr", type=positive_float, default=recipe.lr,
                   help=f"Adam learning rate (default {short_number(recipe.lr)})")
    p.add_argument("--lr-decay", choices=LR_DECAYS, default=recipe.lr_decay,
                   help=f"'authors': /{short_number(recipe.lr_decay_factor)} after each epoch "
                        "e with (e+1) %% (epochs*2/3) == 0 (a float test); 'none' "
                        f"(default {recipe.lr_decay})")
    p.add_argument("--seed", type=seed, default=recipe.seed,
                   help=f"seed of weights and batches ({recipe.seed})")
    p.add_argument("--variant", default=None,
                   help="network switches, e.g. dim=16,brightness=off,residual_sign=paper")
    p.add_argument("--zero-last-conv", action="store_true",
                   help="start the final conv at zero, so the untrained network is the identity")
    p.add_argument("--ema", type=decay, default=recipe.ema_decay, metavar="DECAY",
                   help="also keep an exponential moving average of the weights with this decay "
                        "(e.g. 0.995; a plain running mean until its horizon 1/(1-DECAY) steps "
                        "is reached); held-out checks and OUT/weights.safetensors are then the "
                        "average's (default 0: off, as the authors)")
    p.add_argument("--heldout", default="auto",
                   help="pairs for the held-out PSNR: auto (built-in held-out photographs for "
                        "builtin data, eval15 for LOL), builtin, none, or a LOL-layout folder")
    p.add_argument("--eval-every", type=nonnegative_int, default=0,
                   help="held-out check every N steps (0: at the end only)")
    p.add_argument("--save-every", type=nonnegative_int, default=1000,
                   help="checkpoint every N steps (0: at the end only)")
    p.add_argument("--log-every", type=positive_int, default=10,
                   help="fetch losses from the device every N steps (all are logged)")
    p.add_argument("--workers", type=int_range(-1, MAX_WORKERS), default=-1,
                   help="processes making batches ahead (default -1: half the cores, at most 8, "
                        "none below 4 cores; 0: one background thread)")
    p.add_argument("--precision", choices=PRECISIONS, default="highest",
                   help="GPU matmul/conv precision: highest (true float32, default) or default "
                        "(the framework's default: TF32 on recent GPUs, ~30%% faster)")
    p.add_argument("--devices", type=int_range(0, MAX_DEVICES), default=0,
                   help="JAX: data parallel over the first N local devices (default all)")
    add_cpu_split_option(
        p, "makes one XLA device per core, each computing its share of the batch on its own "
           "core, when the batch splits evenly over the cores and --devices is 0 (~1.3x "
           "faster steps on a quiet 2-core machine, slower when other programs keep a core "
           "busy); off runs the step on all cores as one device")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (same settings, the variant compared "
                        "as the network it gives; --steps or --epochs may grow) from its newest "
                        "step that reads back whole; a second run on one folder is refused")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.framework in ("jax", "nnx") and args.devices == 0 and args.cpu_split == "auto":
        from port.host_devices import split_cpu_for_training

        split_cpu_for_training(args.batch)   # before JAX starts (XLA reads its flags once)
    from core.text import escape_text
    from dln.training_loop import train
    from dln.training_settings import TrainSettings

    settings = TrainSettings(
        out=args.out, framework=args.framework, data=args.data, init=args.init,
        epochs=args.epochs, steps=args.steps, batch=args.batch, patch=args.patch, lr=args.lr,
        lr_decay=args.lr_decay, seed=args.seed, variant=args.variant,
        zero_last_conv=args.zero_last_conv, ema=args.ema, heldout=args.heldout,
        eval_every=args.eval_every,
        save_every=args.save_every, log_every=args.log_every, workers=args.workers,
        precision=args.precision, devices=args.devices, resume=args.resume)
    result = train(settings)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s; final loss "
          f"{result.final_loss:.4f}")
    if result.heldout is not None:
        print(result.heldout.text())
    print("wrote " + ", ".join(escape_text(p) for p in (
        result.weights, result.out / "log.csv", result.out / "log.json", result.out / "loss.png")))
    return 0
