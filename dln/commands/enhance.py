"""`dln enhance`: enhance images with a checkpoint, on JAX (Flax Linen by default, or Flax
NNX) or PyTorch."""

from __future__ import annotations

import sys

from core.config import parse_variant
from core.images import DEFAULT_MAX_PIXELS
from core.text import escape_text
from core.tiling import DEFAULT_TILE
from dln.arguments import add_cpu_split_option, finite_float, positive_int

ORDER = 20


def register(sub) -> None:
    p = sub.add_parser(
        "enhance", help="enhance low-light images into PNGs",
        description="Enhance images (png, jpg, jpeg, bmp; files and/or folders) and write "
                    "OUTPUT/<stem>.png quantised the authors' way (x255, clip, truncate). "
                    "On Linux with glibc >= 2.35 a JAX run re-executes itself once at start "
                    "with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (huge pages for XLA's "
                    "scratch: a 12 MP tiled photo 146 s instead of 182 s on 2 cores); "
                    "DLN_HUGE_PAGES=off or your own glibc.malloc.hugetlb setting keeps the "
                    "process as started.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--weights", required=True,
                   help=".pth or .safetensors checkpoint, or an Orbax checkpoint folder")
    p.add_argument("--out", "--output", dest="out", required=True,
                   help="output folder (--output is the same option)")
    p.add_argument("--backend", choices=("jax", "nnx", "torch", "torch-compile"), default="jax",
                   help="jax (default: the Flax Linen port), nnx (the Flax NNX port, with the "
                        "same tiles, buckets and compilation cache), torch (eager, "
                        "channels_last), or torch-compile (whole images through "
                        "torch.compile; tiles run eager)")
    p.add_argument("--gamma", type=finite_float, default=None,
                   help="enhancement strength: pred = x + gamma * P(x) (default: the checkpoint's)")
    p.add_argument("--variant", default=None, help="switches the checkpoint cannot tell")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output PNGs (without it each one is refused with a "
                        "line, the others are written, and the exit code is 1)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="refuse larger images from their header, before decoding (default: "
                        f"{DEFAULT_MAX_PIXELS:,}, which admits 50-megapixel photos through "
                        "tiling, or fewer if a tiled run would not fit in 80%% of the memory "
                        "available)")
    p.add_argument("--tile", default="auto", metavar="auto|off|N",
                   help="auto (default): the whole image when its forward pass fits the "
                        "working budget (3 GiB, or 80%% of the memory available, cgroup "
                        "limits included, if less; JAX counts its padded size bucket, and "
                        "runs an image whose bucket does not fit at its own size), else stage "
                        f"by stage in {DEFAULT_TILE}x{DEFAULT_TILE} tiles; off: always whole "
                        "(an image that does not fit the budget is refused before anything "
                        "runs); N: always N x N tiles. Tiles and buckets are exact: equal to "
                        "the whole-image forward to float32 rounding")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="whole images of one size bucket per forward pass (default 1; "
                        "lowered, with a note, to as many as fit the working budget). JAX "
                        "pads each image to its bucket, each side up to the next of 32, 40, "
                        "48, 56, 64, 80, ..., 256, 320, 384, 448, 512, 640, 768, 896, 1024, "
                        "1280, ... (at most 25%% more per side, none for sides on that "
                        "ladder); a portrait image runs transposed in the landscape bucket; "
                        "before the first image the folder's buckets are merged while the "
                        "padding costs less than the compilations saved (shapes already in "
                        "the cache count as free), so a folder compiles a handful of "
                        "programs")
    add_cpu_split_option(
        p, "on a 2-core CPU makes one XLA device per core: each batch computes on one core "
           "while the other core computes another, the two within the memory budget "
           "together (a large image beside the smaller ones); a batch nothing could run "
           "beside, and every tile, runs over both cores in horizontal bands, or on one "
           "core when neither its height nor its width is even "
           "(a folder ran ~10%% faster on a quiet 2-core machine, ~15%% slower on a busy one); "
           "off runs each forward on all cores as one device. Outputs are equal either way "
           "to float32 rounding")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="write where the run's time went to FILE (JSON: named spans per "
                        "thread on one clock: decode, trace, compile, compute per bucket, "
                        "transfer, encode, write; `dln bench --workload folder --profile` "
                        "accounts for them)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not use JAX's persistent compilation cache ($DLN_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/dln-port/jax, else ~/.cache/dln-port/jax), which "
                        "lets a second run of the same sizes compile nothing, nor the "
                        "checkpoint kept there (a .pth read once is kept as safetensors, so "
                        "that later JAX runs need not import PyTorch)")
    p.set_defaults(run=run)


def _write_profile(path: str, timeline) -> None:
    from core.atomic_files import write_text_atomic
    from core.errors import UserError

    try:
        write_text_atomic(path, timeline.to_json())
    except OSError as err:
        raise UserError(f"--profile {path}: cannot write ({err.strerror or err})") from None


def run(args) -> int:
    if args.backend in ("jax", "nnx") and args.cpu_split == "auto":
        from port.host_devices import split_cpu_for_inference

        split_cpu_for_inference()   # before JAX starts (XLA reads its flags once)
    from core.timeline import Timeline
    from dln.enhance import enhance_paths
    from frameworks.memory_plan import parse_tile

    timeline = Timeline(enabled=args.profile is not None)
    kept = None   # JAX: a .pth's verified conversion kept in the cache folder
    with timeline.span("imports"):
        from dln.checkpoint_cache import keep_in_background, load_checkpoint_once
        if args.backend in ("jax", "nnx") and not args.no_cache:
            from port.compile_cache import compilation_cache_dir, usable_cache_folder

            kept = compilation_cache_dir()
            kept = None if usable_cache_folder(kept) else kept
    tile = parse_tile(args.tile)
    overrides = parse_variant(args.variant)
    if args.gamma is not None:
        overrides["gamma"] = args.gamma
        parse_variant(f"gamma={args.gamma}")  # validate
    # a .pth not yet kept: a child reads it while this process imports JAX (when JAX is
    # imported already, as in a second run in one process, there is nothing to overlap)
    child = (keep_in_background(args.weights, kept)
             if kept and not overrides and "jax" not in sys.modules else None)
    try:
        if child is not None:
            with timeline.span("imports"):
                import port.tiled  # noqa: F401 - JAX and Flax, on this core meanwhile
            with timeline.span("load_checkpoint"):
                child.wait()
        with timeline.span("load_checkpoint"):
            ckpt = load_checkpoint_once(args.weights, overrides, kept)
    finally:
        if child is not None and child.poll() is None:   # interrupted meanwhile
            child.kill()
    for note in ckpt.notes:
        print(f"note: {note}", file=sys.stderr)
    result = enhance_paths(ckpt, args.inputs, args.out, backend=args.backend,
                           overwrite=args.overwrite, max_pixels=args.max_pixels, tile=tile,
                           batch=args.batch, use_cache=not args.no_cache, timeline=timeline)
    if args.profile:
        _write_profile(args.profile, timeline)
    for line in result.notes:
        print(f"note: {escape_text(line)}", file=sys.stderr)
    for line in result.failures:
        print(f"dln enhance: {escape_text(line)}", file=sys.stderr)
    print(f"wrote {len(result.written)} image(s) to {escape_text(args.out)} with {args.backend}"
          + (f"; {len(result.failures)} problem(s)" if result.failures else ""))
    # 0: all written; 1: some inputs refused or unreadable (each named above);
    # 2 (from the CLI): nothing could start (bad checkpoint, bad options).
    return 0 if result.ok else 1
