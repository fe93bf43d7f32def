"""HPCM speed: eval forward against real compress / decompress, and a bit-exactness check.

For each device and size the model runs ``--repeats`` times after one warm-up; the medians are printed
with compress/forward and decompress/forward, the coded bpp and whether the decoded image equals the
eval forward output clamped to [0, 1] (it must, bit for bit). The input is the ``coffee`` sample photo
resized to the size. Weights follow the deterministic parity recipe (``common.models.hpcm.weights``;
default initialisation codes to almost nothing) unless ``--checkpoint`` is given, so bpp is only
meaningful with a trained checkpoint.

    python benchmarks/hpcm_speed.py [--model hpcm-base] [--sizes 256x256 768x512] [--repeats 3]
                                    [--devices cpu cuda] [--threads N] [--checkpoint PATH]
                                    [--memory_format auto] [--official PATH [--train_batch 4]] [--profile]

Our model runs in the layout ``common.train`` and ``common.eval`` give it (``--memory_format``, default auto:
channels_last on the CPU; ``benchmarks/memory_format.py`` measures what that layout is worth on its own).

With ``--official PATH`` (a checkout of the official code, github.com/lyq133/LIC-HPCM) the official HPCM-Base
is loaded with the same weights and timed side by side (in NCHW, as its train.py runs it), alternating with
ours: eval forward at each size and a training step (forward + backward, ``--train_batch`` random 256x256
crops), and the memory a training forward keeps for backward (the tensors autograd saves, weights
excluded); a second table prints ours/official. The official entropy coder is a compiled extension (shipped
for Python 3.8; how to build it for this Python: ``scripts/hpcm_official_bitstream.py``). When it loads,
compress and decompress are timed too, ours writing the official byte layout, and the script says whether both
wrote the same bytes (in float32 they need not: the two context models round differently in the last bits, and
one table index or rounding that falls the other way changes the stream; in float64 they are the same, as
``tests/test_hpcm_official_bitstream.py`` checks). When the coder does not load, it is replaced by a stub that
fails if called, and only the paths that code nothing are compared. The official constructor puts its adaptive
parameters on CUDA; without a GPU they are made on the CPU.

With ``--profile`` one more compress per size (and model) runs under ``torch.profiler`` and the script prints
the share of its time spent in convolutions: where that share is high, both implementations run the same
convolutions (same shapes, same FLOPs) and their time ratio can only move by what remains.

Sizes are WIDTHxHEIGHT and must be multiples of the model's ``forward_multiple`` (256 for Base/Large).
Without ``--devices`` the CPU and, when available, CUDA are timed. Exit code 1 if a decode mismatches.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from common.cli import OneLineErrorParser, run_main
from common.errors import UserError
from common.losses import RateDistortionLoss
from common.eval import payload_bytes
from common.assembly import build_with_weights
from common.models import build, memory_format
from common.models.memory_format import MEMORY_FORMATS
from common.models.hpcm.ggm import ggm_scale_table
from common.models.hpcm.weights import fill_parity_weights
from benchmarks.timing import median_time, parse_size, photo

MODELS = ("hpcm-base", "hpcm-large", "hpcm-tiny")


@torch.no_grad()
def benchmark(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict:
    device = x.device
    x_hat = model(x)["x_hat"].clamp(0, 1)
    encoded = model.compress(x)
    decoded = model.decompress(encoded["strings"], encoded["shape"])["x_hat"]
    return {"forward": median_time(lambda: model(x), repeats, device),
            "compress": median_time(lambda: model.compress(x), repeats, device),
            "decompress": median_time(lambda: model.decompress(encoded["strings"], encoded["shape"]),
                                      repeats, device),
            "bpp": payload_bytes(encoded["strings"]) * 8 / (x.shape[-2] * x.shape[-1]),
            "exact": torch.equal(decoded, x_hat),
            "max_diff": float((decoded - x_hat).abs().max())}


CONVOLUTIONS = ("aten::conv2d", "aten::conv_transpose2d")


def convolution_share(fn) -> float:
    """Fraction of one call of ``fn`` (CPU time, under the profiler) spent in convolutions, backward excluded."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    return sum(event.cpu_time_total for event in prof.key_averages() if event.key in CONVOLUTIONS) / 1e6 / wall


def load_official(path: str) -> torch.nn.Module:
    """The official HPCM-Base class from a checkout at ``path`` (its coder stubbed when it cannot load here)."""
    import importlib
    import sys
    import types

    root = Path(path).resolve()
    if not (root / "src" / "models" / "HPCM_Base.py").is_file():
        raise UserError(f"--official {path}: no src/models/HPCM_Base.py there; point it at a checkout of "
                        "github.com/lyq133/LIC-HPCM")
    sys.path.insert(0, str(root))
    try:
        importlib.import_module("src.entropy_models")
    except ImportError:
        def unavailable(*args, **kwargs):
            raise RuntimeError("the official entropy coder is not built for this Python")

        for name, symbols in (("src.entropy_models._CXX", ("pmf_to_quantized_cdf",)),
                              ("src.entropy_models.unbounded_ans", ("ubransEncoder", "ubransDecoder"))):
            stub = types.ModuleType(name)
            for symbol in symbols:
                setattr(stub, symbol, unavailable)
            sys.modules[name] = stub
        for name in [n for n in sys.modules if n == "src.entropy_models" or n.startswith("src.entropy_models.")]:
            if name not in ("src.entropy_models._CXX", "src.entropy_models.unbounded_ans"):
                del sys.modules[name]
    return importlib.import_module("src.models.HPCM_Base").HPCM


def official_coder_built() -> bool:
    """Whether :func:`load_official` found the official entropy coder built for this Python (not the stub)."""
    import sys

    return getattr(sys.modules.get("src.entropy_models.unbounded_ans"), "__file__", None) is not None


def construct_official(cls) -> torch.nn.Module:
    """``cls()``; without CUDA, the tensors its constructor puts on ``device='cuda'`` (the adaptive
    parameters) are made on the CPU instead."""
    if torch.cuda.is_available():
        return cls()
    real_ones = torch.ones

    def ones(*args, device=None, **kwargs):
        return real_ones(*args, device=None if str(device).startswith("cuda") else device, **kwargs)

    torch.ones = ones
    try:
        return cls()
    finally:
        torch.ones = real_ones


def training_step_time(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median time of forward + λ·255²·MSE + bpp + backward (the official train.py's loss) in training mode."""
    model.train()
    criterion = RateDistortionLoss(0.013)

    def step():
        model.zero_grad(set_to_none=True)
        criterion(model(x), x)["loss"].backward()

    return median_time(step, repeats, x.device)


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors a training forward keeps for backward (storages counted once, weights excluded)."""
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x)
    del out
    return sum(storages.values())


def compare_with_official(ours: torch.nn.Module, path: str, sizes, repeats: int, train_batch: int,
                          ours_format: str, profile: bool = False) -> None:
    official = construct_official(load_official(path)).eval()
    # The weights (same names); not the coder tables, which the official model builds in its own update().
    theirs = official.state_dict()
    weights = {key: value for key, value in ours.state_dict().items()
               if key in theirs and theirs[key].shape == value.shape}
    absent = [name for name, _ in official.named_parameters() if name not in weights]
    if absent:
        raise UserError(f"our model lacks weights the official one has: {', '.join(absent[:5])}")
    official.load_state_dict(weights, strict=False)
    coder = official_coder_built()
    if coder:  # ours writes the official layout, so both must produce the same bytes
        official.update(ggm_scale_table(dtype=torch.float32))
        layout, ours.bitstream = ours.bitstream, "official"
    rows, same_bytes, shares = [], [], []
    with torch.no_grad():
        for width, height in sizes:
            x = photo(width, height)
            pair = (("ours", ours), ("official", official))
            rows.append((f"eval forward {width}x{height}",
                         {name: median_time(lambda m=model: m.eval()(x), repeats, x.device) for name, model in pair}))
            if not coder:
                continue
            coded = {name: model.compress(x) for name, model in pair}
            y, z = coded["official"]["strings"]  # the official order is [y, z]
            same_bytes.append(f"{'yes' if coded['ours']['strings'] == [[z], [y]] else 'no'} at {width}x{height}")
            rows.append((f"compress {width}x{height}",
                         {name: median_time(lambda m=model: m.compress(x), repeats, x.device) for name, model in pair}))
            if profile:
                shares.append(f"{width}x{height}: " + ", ".join(
                    f"{name} {100 * convolution_share(lambda m=model: m.compress(x)):.0f} %" for name, model in pair))
            # Each decodes its own stream: in float32 the other's may not decode (see the module docstring).
            rows.append((f"decompress {width}x{height}",
                         {name: median_time(lambda m=model, c=coded[name]: m.decompress(c["strings"], c["shape"]),
                                            repeats, x.device) for name, model in pair}))
    if coder:
        ours.bitstream = layout
    torch.manual_seed(0)
    x = torch.rand(train_batch, 3, 256, 256)
    times = {name: training_step_time(model, x, repeats) for name, model in (("ours", ours), ("official", official))}
    rows.append((f"training step, batch {train_batch} of 256x256", times))
    memory = {name: saved_activation_bytes(model, x) for name, model in (("ours", ours), ("official", official))}
    ours.eval()
    print(f"\nours ({ours_format}) vs the official code ({path}, NCHW), same weights, CPU, {torch.get_num_threads()} "
          f"threads, median of {repeats} after 1 warm-up")
    print("| path | ours ms | official ms | ours/official |")
    print("|---|---|---|---|")
    for label, times in rows:
        print(f"| {label} | {times['ours'] * 1e3:.0f} | {times['official'] * 1e3:.0f} | "
              f"{times['ours'] / times['official']:.2f} |", flush=True)
    print(f"| tensors saved for backward, batch {train_batch} of 256x256 (MiB) | {memory['ours'] / 2**20:.0f} | "
          f"{memory['official'] / 2**20:.0f} | {memory['ours'] / memory['official']:.2f} |", flush=True)
    if shares:
        print(f"convolutions' share of one compress (profiled): {'; '.join(shares)}")
    if coder:
        print(f"ours in the official layout wrote the official code's bytes (float32): {', '.join(same_bytes)}")
    else:
        print("compress/decompress not compared: the official entropy coder is not built for this Python "
              "(see scripts/hpcm_official_bitstream.py for how to build it)")


def main(argv=None) -> int:
    parser = OneLineErrorParser(prog="python benchmarks/hpcm_speed.py",
                                description="HPCM forward vs real compress/decompress time")
    parser.add_argument("--model", choices=MODELS, default="hpcm-base")
    parser.add_argument("--checkpoint", help="weights to time (default: deterministic parity-recipe weights)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 256), (768, 512)], metavar="WxH")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"),
                        help="devices to time (default: cpu, plus cuda when available)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on the CPU (default: torch's choice)")
    parser.add_argument("--official", metavar="PATH", help="a checkout of the official HPCM code to time beside "
                        "ours (hpcm-base only)")
    parser.add_argument("--train_batch", type=int, default=4, help="batch of the timed training step (--official)")
    parser.add_argument("--memory_format", choices=MEMORY_FORMATS, default="auto",
                        help="layout our model runs in, as common.train/common.eval's flag (default: auto, i.e. "
                             "channels_last on the CPU for HPCM-Base); the official code runs in its own NCHW")
    parser.add_argument("--profile", action="store_true",
                        help="also print the share of one compress spent in convolutions (ours, and the official "
                             "code's with --official)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        raise UserError("--devices cuda was given but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Encoder and decoder must compute identical entropy parameters: no autotuned or TF32 kernels on CUDA.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    model = (build_with_weights(args.model, checkpoint=args.checkpoint) if args.checkpoint
             else fill_parity_weights(build(args.model))).eval()
    for width, height in args.sizes:
        if width % model.forward_multiple or height % model.forward_multiple:
            raise UserError(f"size {width}x{height}: {args.model} needs multiples of {model.forward_multiple}")
    model.update(force=True)

    weights = args.checkpoint or "parity-recipe weights (salt 0)"
    print(f"{args.model}, {weights}, coffee photo, {torch.get_num_threads()} CPU threads, "
          f"median of {args.repeats} after 1 warm-up")
    print("| device | size (WxH) | forward ms | compress ms | decompress ms | compress/forward | "
          "decompress/forward | bpp | decode == forward |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_exact = True
    for device in devices:
        memory_format.apply(model.to(device), args.memory_format, torch.device(device))
        for width, height in args.sizes:
            r = benchmark(model, photo(width, height).to(device), args.repeats)
            all_exact &= r["exact"]
            exact = "yes" if r["exact"] else f"NO (max diff {r['max_diff']:.2e})"
            print(f"| {device} | {width}x{height} | {r['forward'] * 1e3:.0f} | {r['compress'] * 1e3:.0f} | "
                  f"{r['decompress'] * 1e3:.0f} | {r['compress'] / r['forward']:.2f} | "
                  f"{r['decompress'] / r['forward']:.2f} | {r['bpp']:.4f} | {exact} |", flush=True)
            if args.profile:
                x = photo(width, height).to(device)
                with torch.no_grad():
                    share = convolution_share(lambda: model.compress(x))
                print(f"  convolutions' share of one compress at {width}x{height} on {device}: {100 * share:.0f} %",
                      flush=True)
    if args.official:
        if args.model != "hpcm-base":
            raise UserError("--official times the official HPCM-Base: use --model hpcm-base")
        cpu = torch.device("cpu")
        channels_last = memory_format.resolve(args.memory_format, cpu, model) == torch.channels_last
        ours_format = "channels_last" if channels_last else "NCHW"
        compare_with_official(memory_format.apply(model.to(cpu), args.memory_format, cpu), args.official, args.sizes,
                              args.repeats, args.train_batch, ours_format, args.profile)
    return 0 if all_exact else 1


if __name__ == "__main__":
    run_main(main)
