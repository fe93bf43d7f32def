"""The receipt of a training run: what ran, on what, on which data, and what its bitstreams cost.

A run folder's ``receipt.json`` answers the questions asked of a result that cannot be reproduced ("which code?",
"which photos?", "which machine?") and of a codec whose file sizes disagree with its estimate:

- ``config``: the resolved configuration (every field, defaults included);
- ``sessions``: one entry per start or resume of the run: the step it started from, the time, the code (git commit,
  whether the checkout had uncommitted changes, the file holding them as a patch, untracked files) and the machine
  (CPU model, the instruction set torch's CPU kernels dispatch to, ``ONEDNN_MAX_CPU_ISA`` and thread counts, GPUs,
  library versions) -- a resumed run may have continued elsewhere;
- ``data``: per split, the number of images and their bytes, and the manifest file (``data_manifest.tsv``: name,
  bytes, SHA-256) with its own hash; files are hashed while the split is at most ``MAX_HASHED_BYTES``;
- ``end`` (when the run finished): the estimated vs the real bpp of each validation image (a real bitstream from
  ``compress``) and their gap, each entropy bottleneck's auxiliary loss (how far its quantiles are from fitted) and
  the share of its inputs on the validation images that lie outside its quantiles (escape-coded symbols).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from common.checkpoint import atomic_write_text

RECEIPT = "receipt.json"
PATCH = "receipt.patch"
MANIFEST = "data_manifest.tsv"
REPO = Path(__file__).resolve().parent.parent
# Hashing a split costs a read of every file; COCO's 118k training images are about 19 GB.
MAX_HASHED_BYTES = 2 * 1024 ** 3
LIBRARIES = ("torch", "torchvision", "compressai", "numpy", "onnx", "onnxruntime", "pytorch-msssim", "Pillow")
# Above this gap between the real and the estimated bpp the entropy coder's tables or quantiles are suspect, unless
# the gap is within the coder's fixed cost: each stream ends with rANS's 4-byte state, so a small image coded in a
# few streams is over the estimate by bytes that are no fault of the model (here up to 8 streams).
BPP_GAP_WARNING_PERCENT = 1.0
FIXED_COST_BYTES = 32


def _git(*args: str, repo: Path) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def code_state(repo: Path = REPO) -> tuple[dict[str, Any], str]:
    """(commit, dirty flag and untracked files of ``repo``; the patch of its uncommitted changes to tracked files)."""
    commit = _git("rev-parse", "HEAD", repo=repo)
    if commit is None:
        return {"git_commit": "unknown", "dirty": None, "untracked": []}, ""
    patch = _git("diff", "HEAD", "--binary", repo=repo) or ""
    untracked = (_git("ls-files", "--others", "--exclude-standard", repo=repo) or "").split()
    return {"git_commit": commit.strip(), "dirty": bool(patch), "untracked": untracked}, patch


def git_commit(repo: Path = REPO) -> str:
    """The commit of ``repo``, marked when the checkout has uncommitted changes to tracked files."""
    state, _ = code_state(repo)
    return f"{state['git_commit']} (with uncommitted changes)" if state["dirty"] else state["git_commit"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                        platform.processor() or "cpu")
    except OSError:
        return platform.processor() or "cpu"


def machine() -> dict[str, Any]:
    """What decides a run's last bits: the CPU and its kernels, threads, GPUs and library versions."""
    import torch

    versions = {"torch": torch.__version__}  # with its build (+cpu, +cu130)
    for name in LIBRARIES[1:]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpus = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return {"architecture": platform.machine(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "gpus": gpus, "cuda": torch.version.cuda,
            "os": platform.platform(), "python": sys.version.split()[0], "libraries": versions}


def machine_description() -> str:
    """One line of :func:`machine`: architecture, CPU model, the kernels torch dispatches to, and Python.

    CPU results are reproducible bit for bit only where the same kernels run: the same command and seeds on
    another kind of CPU can differ in the last bits, and thousands of steps make that visible.
    """
    facts = machine()
    return (f"{facts['architecture']}, {facts['cpu']}, torch CPU kernels {facts['torch_cpu_capability']}, "
            f"Python {facts['python']}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_manifest(splits: dict[str, Sequence[Path] | None], manifest_path: Path) -> dict[str, Any]:
    """Write ``manifest_path`` (split, name, bytes, SHA-256 or ``-``) and return the receipt's ``data`` section."""
    lines, section = ["split\tfile\tbytes\tsha256"], {}
    for split, files in splits.items():
        if files is None:
            section[split] = {"images": None, "bytes": None, "hashed": False, "note": "not read from image files"}
            continue
        files = [Path(file) for file in files]
        sizes = [file.stat().st_size for file in files]
        hashed = sum(sizes) <= MAX_HASHED_BYTES
        for file, size in zip(files, sizes):
            lines.append(f"{split}\t{file}\t{size}\t{_sha256(file) if hashed else '-'}")
        section[split] = {"images": len(files), "bytes": sum(sizes), "hashed": hashed}
    text = "\n".join(lines) + "\n"
    atomic_write_text(manifest_path, text)
    section["manifest"] = manifest_path.name
    section["manifest_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    return section


def read(folder: Path) -> dict[str, Any]:
    path = Path(folder) / RECEIPT
    return json.loads(path.read_text()) if path.is_file() else {}


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _write(folder: Path, receipt: dict[str, Any]) -> None:
    atomic_write_text(Path(folder) / RECEIPT, json.dumps(_finite(receipt), indent=2, allow_nan=False) + "\n")


def record_start(folder: Path, config: dict[str, Any], splits: dict[str, Sequence[Path] | None], step: int) -> None:
    """Open a session of the run in ``folder`` (a fresh run writes the config and the data manifest)."""
    folder = Path(folder)
    receipt = read(folder) if step > 0 else {}
    code, patch = code_state()
    if patch:
        patch_name = f"receipt_session{len(receipt.get('sessions', []))}.patch" if step > 0 else PATCH
        atomic_write_text(folder / patch_name, patch)
        code["patch"] = patch_name
    receipt["config"] = config
    receipt.setdefault("sessions", []).append({"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                               "from_step": step, "code": code, "machine": machine()})
    if "data" not in receipt:
        receipt["data"] = data_manifest(splits, folder / MANIFEST)
    receipt.pop("end", None)
    _write(folder, receipt)


def bpp_gap_percent(bpp: float, bpp_estimated: float) -> float:
    """How far the real bpp of a bitstream is above (+) or below (-) the likelihood estimate, in % (NaN for an
    estimate of 0)."""
    return 100.0 * (bpp - bpp_estimated) / bpp_estimated if bpp_estimated > 0 else math.nan


def bpp_gaps(rows: Sequence[dict]) -> dict[str, Any]:
    """Estimated vs real bpp of evaluated images (rows of ``common.eval.evaluate``), their gaps and the largest."""
    images = [{"image": row["image"], "bpp_estimated": row["bpp_estimated"], "bpp": row["bpp"],
               "gap_%": bpp_gap_percent(row["bpp"], row["bpp_estimated"]),
               "bytes_over_estimate": (row["bpp"] - row["bpp_estimated"]) * row["height"] * row["width"] / 8}
              for row in rows]
    gaps = [abs(image["gap_%"]) for image in images if math.isfinite(image["gap_%"])]
    return {"images": images, "largest_gap_%": max(gaps, default=math.nan)}


def suspect_gaps(bpp: dict[str, Any]) -> list[dict]:
    """The images whose real bpp is off the estimate by more than 1 % and by more than the coder's fixed cost."""
    return [row for row in bpp["images"] if math.isfinite(row["gap_%"]) and abs(row["gap_%"]) > BPP_GAP_WARNING_PERCENT
            and abs(row["bytes_over_estimate"]) > FIXED_COST_BYTES]


def gap_warning(suspect: Sequence[dict], where: str) -> str:
    """The warning for :func:`suspect_gaps` (non-empty), naming the worst image and the usual causes."""
    worst = max(suspect, key=lambda row: abs(row["gap_%"]))
    return (f"{where}: the real bpp of {len(suspect)} image(s) is more than {BPP_GAP_WARNING_PERCENT:g} % off the "
            f"likelihood estimate (worst {worst['image']}: {worst['gap_%']:+.2f} %, {worst['bytes_over_estimate']:+.0f} "
            "bytes); causes: CDF tables older than the weights (update(force=True)), quantiles not fitted (values "
            "outside them are escape-coded), or likelihoods below the coder's 16-bit precision")


def outside_quantiles(model, images: Sequence[tuple[str, Any]]) -> dict[str, float]:
    """Per entropy bottleneck, the % of its input values (over ``images``) beyond its lower and upper quantiles by
    more than half a step: the symbols its tables do not hold, which the coder escape-codes (a cheap few bits)
    while the likelihood estimate charges their tail probability."""
    import torch
    from compressai.entropy_models import EntropyBottleneck

    counts: dict[str, list[int]] = {}

    def count(name: str):
        def hook(module, inputs, output):
            values, quantiles = inputs[0].detach(), module.quantiles.detach()
            lower = quantiles[:, 0, 0].reshape(1, -1, *([1] * (values.dim() - 2))) - 0.5
            upper = quantiles[:, 0, 2].reshape(1, -1, *([1] * (values.dim() - 2))) + 0.5
            totals = counts.setdefault(name, [0, 0])
            totals[0] += int(((values < lower) | (values > upper)).sum())
            totals[1] += values.numel()
        return hook

    handles = [module.register_forward_hook(count(name or "entropy_bottleneck"))
               for name, module in model.named_modules() if isinstance(module, EntropyBottleneck)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _, x in images:
                model(x.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: 100.0 * outside / total for name, (outside, total) in counts.items()}


def aux_losses(model) -> dict[str, float]:
    """Each entropy bottleneck's auxiliary loss: how far its quantiles are from the tails they stand for (0: fitted)."""
    from compressai.entropy_models import EntropyBottleneck

    return {name or "entropy_bottleneck": float(module.loss().detach())
            for name, module in model.named_modules() if isinstance(module, EntropyBottleneck)}


def record_end(folder: Path, bpp: dict[str, Any], aux_losses: dict[str, float], outside: dict[str, float],
               steps: int) -> None:
    receipt = read(folder)
    receipt["end"] = {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "steps": steps,
                      "validation_bpp": bpp, "aux_loss": aux_losses, "outside_quantiles_%": outside}
    _write(folder, receipt)
