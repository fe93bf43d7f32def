"""Real-bitstream evaluation of a compression model, following CompressAI's ``eval_model`` protocol.

For every image: pad (centred, zeros by default) to ``model.eval_pad_multiple``, ``compress``, ``decompress``,
crop back; bpp = payload bytes * 8 / unpadded pixels; PSNR and MS-SSIM on 8-bit rounded images; encode and
decode wall times. An eval-mode ``forward`` on the same padded input gives the likelihood-based bpp that is
reported beside the coded bpp, and its reconstruction must equal the decoded one (a mismatch means encoder
and decoder disagree, and is warned about loudly).

Aggregates are arithmetic means over images, as in CompressAI; ``ms-ssim-db-rgb`` is the dB value of the
mean MS-SSIM (the conversion CompressAI's plots apply to ``ms-ssim-rgb``). Images with a side below 161 px,
where the 5-scale MS-SSIM does not exist (and CompressAI's eval crashes), get ``common.losses.ms_ssim``'s
fewer-scales MS-SSIM; the row's ``ms_ssim_scales`` and the JSON description say so.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.data.images import load_rgb_tensor
from common.errors import UserError
from common.losses import ms_ssim, ms_ssim_scales, psnr_8bit, quantize_8bit
from common.paths import path_text
from common.rd import ms_ssim_to_db

PAD_MODES = ("zero", "replicate")
# Decoded and forward reconstructions may differ by float noise on some backends; anything above a quarter
# of an 8-bit level means the entropy decoder did not reproduce the encoder's latents.
FORWARD_TOLERANCE = 1.0 / (4 * 255)

# The analysis transforms of every registered model (Ballé et al.'s names): their outputs are the latents coded.
LATENT_TRANSFORMS = {"g_a": "y", "h_a": "z"}
# An entropy bottleneck's CDF table holds one entry per integer between its lower and upper quantile, addressed with
# int32 offsets: far beyond this span the offsets overflow and the rANS coder never finishes a symbol (a diverged aux
# optimizer gets there). Trained models span tens to hundreds.
MAX_QUANTILE_SPAN = 1 << 16

MEAN_KEYS = ("bpp", "bpp_estimated", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")


class DecodeMismatchWarning(UserWarning):
    """The decoded image differs from the eval-mode forward reconstruction."""


def centred_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding that centres the image in the next multiple of ``multiple``."""
    out_h = -(-height // multiple) * multiple
    out_w = -(-width // multiple) * multiple
    left, top = (out_w - width) // 2, (out_h - height) // 2
    return left, out_w - width - left, top, out_h - height - top


def pad(x: torch.Tensor, padding: tuple[int, int, int, int], mode: str = "zero") -> torch.Tensor:
    """Pad an N×C×H×W tensor with zeros or by replicating the border."""
    if mode not in PAD_MODES:
        raise UserError(f"unknown pad mode {mode!r}; choose one of: {', '.join(PAD_MODES)}")
    if not any(padding):
        return x
    if mode == "zero":
        return F.pad(x, padding, mode="constant", value=0.0)
    return F.pad(x, padding, mode="replicate")


def crop(x: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`pad`."""
    left, right, top, bottom = padding
    return x[..., top:x.size(-2) - bottom, left:x.size(-1) - right]


def _timed(fn: Callable, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


@contextmanager
def finite_latents(model: nn.Module, name: str):
    """Within the block, a latent that is not finite is a one-line error naming it.

    The rANS coder turns a NaN or infinite latent into a symbol it never finishes coding (it hangs), so the
    outputs of the analysis transforms are checked as the model computes them.
    """
    def check(module_name: str, latent: str):
        def hook(module, inputs, output):
            if not torch.isfinite(output).all():
                raise UserError(f"{name}: the latent {latent} ({module_name} output) is not finite (NaN or inf) "
                                "while encoding; the model's weights or this image overflow")
        return hook

    handles = []
    for module_name, module in model.named_modules():
        latent = LATENT_TRANSFORMS.get(module_name.rsplit(".", 1)[-1])
        if latent:
            handles.append(module.register_forward_hook(check(module_name, latent)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_codable(model: nn.Module, name: str) -> None:
    """A one-line error when an entropy bottleneck's quantiles are not finite or span more than the coder's tables
    can address (:data:`MAX_QUANTILE_SPAN`): coding with them would hang."""
    from compressai.entropy_models import EntropyBottleneck

    for module_name, module in model.named_modules():
        if isinstance(module, EntropyBottleneck):
            quantiles = module.quantiles.detach()
            span = float((quantiles[:, 0, 2] - quantiles[:, 0, 0]).max())
            if not (torch.isfinite(quantiles).all() and span <= MAX_QUANTILE_SPAN):
                raise UserError(f"{name}: the entropy bottleneck {module_name or 'entropy_bottleneck'} has quantiles "
                                f"spanning {span:.3g} (at most {MAX_QUANTILE_SPAN} can be coded): its auxiliary "
                                "training diverged (lower --eb_aux_lr) or the weights are damaged")


def likelihood_bits(likelihoods: dict[str, torch.Tensor]) -> float:
    """Total -log2 of all likelihoods (the rate an ideal entropy coder would reach)."""
    return float(sum(-torch.log2(lk.double()).sum() for lk in likelihoods.values()))


@torch.no_grad()
def evaluate_image(model: nn.Module, x: torch.Tensor, pad_multiple: int, pad_mode: str = "zero",
                   entropy_estimation: bool = False, name: str = "image") -> dict:
    """Evaluate one image (1×3×H×W in [0, 1], on the model's device); returns one per-image row.

    With ``entropy_estimation`` no bitstream is written: bpp is the likelihood estimate of the padded image
    and each time is half the forward time (CompressAI's convention).
    """
    device = x.device
    height, width = x.shape[-2:]
    padding = centred_padding(height, width, pad_multiple)
    x_padded = pad(x, padding, pad_mode)
    num_pixels = height * width

    forward, forward_time = _timed(lambda: model(x_padded), device)
    x_forward = forward["x_hat"].clamp(0, 1)
    row = {"image": name, "height": height, "width": width,
           "padded_height": x_padded.size(-2), "padded_width": x_padded.size(-1)}
    bpp_estimated = likelihood_bits(forward["likelihoods"]) / num_pixels

    if entropy_estimation:
        x_hat = x_forward
        row.update(bytes=math.nan, bpp=bpp_estimated, bpp_estimated=bpp_estimated,
                   encoding_time=forward_time / 2, decoding_time=forward_time / 2, forward_max_abs_diff=math.nan)
    else:
        check_codable(model, name)
        with finite_latents(model, name):
            encoded, encoding_time = _timed(lambda: model.compress(x_padded), device)
        decoded, decoding_time = _timed(lambda: model.decompress(encoded["strings"], encoded["shape"]), device)
        x_hat = decoded["x_hat"].clamp(0, 1)
        if x_hat.shape != x_padded.shape:
            raise RuntimeError(f"{name}: decoded size {tuple(x_hat.shape)} differs from the padded input "
                               f"{tuple(x_padded.shape)}; the model's eval_pad_multiple is wrong")
        num_bytes = payload_bytes(encoded["strings"])
        diff = (x_hat - x_forward).abs().max().item()
        if diff > FORWARD_TOLERANCE:
            warnings.warn(f"{name}: DECODED IMAGE DIFFERS FROM THE EVAL-MODE FORWARD (max abs diff {diff:.3g}); "
                          "the bitstream does not reproduce the model's latents (stale CDFs? run update(force=True))",
                          DecodeMismatchWarning, stacklevel=2)
        row.update(bytes=num_bytes, bpp=num_bytes * 8.0 / num_pixels, bpp_estimated=bpp_estimated,
                   encoding_time=encoding_time, decoding_time=decoding_time, forward_max_abs_diff=diff)

    x_hat = crop(x_hat, padding)
    row["psnr-rgb"] = psnr_8bit(x, x_hat).item()
    row["ms-ssim-rgb"] = ms_ssim(quantize_8bit(x), quantize_8bit(x_hat), data_range=255.0).item()
    row["ms-ssim-db-rgb"] = ms_ssim_to_db(row["ms-ssim-rgb"])
    row["ms_ssim_scales"] = ms_ssim_scales(min(height, width))[0]
    return row


def evaluate_tensors(model: nn.Module, images: Sequence[tuple[str, torch.Tensor]]) -> list[dict]:
    """:func:`evaluate_image` of in-memory images (name, 1×3×H×W in [0, 1]) at the model's ``eval_pad_multiple``,
    in eval mode (the model's mode is restored); the entropy coder's tables must be up to date."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [evaluate_image(model, x.to(device), model.eval_pad_multiple, name=name) for name, x in images]
    finally:
        model.train(was_training)


def payload_bytes(strings) -> int:
    """Total length of the byte strings in a (possibly nested) ``compress()["strings"]`` structure."""
    if isinstance(strings, (bytes, bytearray)):
        return len(strings)
    return sum(payload_bytes(s) for s in strings)


def aggregate(rows: Sequence[dict]) -> dict:
    """Arithmetic means over images (CompressAI), MS-SSIM dB of the mean, worst decode/forward mismatch.

    Keys of ``MEAN_KEYS`` that the rows lack (a classic codec has no likelihood bpp) are left out.
    """
    result = {}
    for key in MEAN_KEYS:
        if key in rows[0]:
            result[key] = sum(row[key] for row in rows) / len(rows)
    result["ms-ssim-db-rgb"] = ms_ssim_to_db(result["ms-ssim-rgb"])
    if "forward_max_abs_diff" in rows[0]:
        diffs = [row["forward_max_abs_diff"] for row in rows]
        # NaN in entropy-estimation mode, where nothing is decoded.
        result["forward_max_abs_diff"] = math.nan if any(math.isnan(d) for d in diffs) else max(diffs)
    result["num_images"] = len(rows)
    result["num_images_fewer_ms_ssim_scales"] = sum(row["ms_ssim_scales"] < 5 for row in rows)
    return result


def describe_test_set(dataset: str | os.PathLike, num_images: int, name: str | None = None) -> dict:
    """What a curve was measured on: ``{"name", "split", "num_images"}``.

    ``name`` may be a folder of ``baselines/published`` (``kodak``, ``clic2020-professional-valid``, ...):
    the record then equals that of the published curves, so ``common.rd`` compares the two, and an image
    count that differs from theirs is an error. The embedded sample photos are named as such; any other
    folder is named after itself unless ``name`` says otherwise.
    """
    from baselines import published_datasets, published_test_set
    from common.data.samples import samples_root

    if name in published_datasets():
        info = dict(published_test_set(name))
        if info.get("num_images") not in (None, num_images):
            raise UserError(f"--test_set {name} has {info['num_images']} images, but {dataset} holds {num_images}")
        return {**info, "num_images": num_images}
    folder = Path(dataset).resolve()
    if name is None and folder == (samples_root() / "test").resolve():
        return {"name": "lic-toolkit-samples", "split": "test", "num_images": num_images}
    return {"name": name or path_text(folder.name), "split": None, "num_images": num_images}


def evaluate(model: nn.Module, image_paths: Sequence[str | os.PathLike], *, pad_multiple: int | None = None,
             pad_mode: str = "zero", entropy_estimation: bool = False, update: bool = True,
             device: str | torch.device | None = None,
             root: str | os.PathLike | None = None) -> tuple[list[dict], dict]:
    """Evaluate ``model`` on image files; returns ``(per_image_rows, aggregate)``.

    ``pad_multiple`` defaults to ``model.eval_pad_multiple`` (64 for bmshj2018, 256 for HPCM).
    ``update`` rebuilds the entropy coder's CDF tables from the current weights first (needed after any
    training; compressai's pretrained files already hold them). ``root`` shortens image names in the rows.
    ``device`` moves the model there first. The model is put in eval mode and returned to its previous
    mode afterwards.
    """
    if not image_paths:
        raise UserError("no images to evaluate")
    if pad_mode not in PAD_MODES:
        raise UserError(f"unknown pad mode {pad_mode!r}; choose one of: {', '.join(PAD_MODES)}")
    pad_multiple = pad_multiple or getattr(model, "eval_pad_multiple", None)
    if not pad_multiple:
        raise UserError("the model has no eval_pad_multiple; pass pad_multiple")
    forward_multiple = getattr(model, "forward_multiple", 1)
    if pad_multiple % forward_multiple:
        raise UserError(f"pad multiple {pad_multiple} is not a multiple of the model's forward multiple "
                        f"{forward_multiple}")
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if update and not entropy_estimation:
            model.update(force=True)
        rows = []
        for path in image_paths:
            path = Path(path)
            name = path_text(path.relative_to(root) if root is not None else path.name)
            x = load_rgb_tensor(path).unsqueeze(0).to(device)
            rows.append(evaluate_image(model, x, pad_multiple, pad_mode, entropy_estimation, name=name))
    finally:
        model.train(was_training)
    return rows, aggregate(rows)


def codec_description(model_name: str, bitstream: str | None = None) -> str:
    """What produced a learned codec's bitstreams: the model, its byte layout if chosen, the entropy coder."""
    import compressai

    layout = f", {bitstream} bitstream layout" if bitstream else ""
    return (f"{model_name} (lic-toolkit){layout}, rANS coder of compressai {compressai.__version__}, "
            f"torch {torch.__version__}")


def describe(entropy_estimation: bool, pad_mode: str, pad_multiple: int, default_multiple: int,
             fewer_ms_ssim_scales: int = 0) -> str:
    """CompressAI-style description, naming any departure from the published protocol."""
    if entropy_estimation:
        text = ("Inference (entropy estimation: likelihood bpp of the padded image, unlike compressai's "
                "--entropy-estimation, which does not pad)")
    else:
        text = "Inference (ans)"
    if pad_mode != "zero" or pad_multiple != default_multiple:
        text += f"; non-default padding: {pad_mode}, centred, to a multiple of {pad_multiple}"
    if fewer_ms_ssim_scales:
        text += (f"; MS-SSIM with fewer than 5 scales on {fewer_ms_ssim_scales} image(s) smaller than 161 px "
                 "(see the per-image CSV)")
    return text


def compressai_json(name: str, description: str, aggregates: Sequence[dict], labels: Sequence[str],
                    test_set: dict | None = None, codec: str | None = None) -> dict:
    """CompressAI-format results: one list entry per evaluated point (checkpoint or quality).

    ``test_set`` (see :func:`describe_test_set`) and ``codec`` (what produced the bitstreams, with versions) are
    recorded beside CompressAI's keys; ``common.rd`` refuses to compare curves of different test sets.
    """
    keys = list(aggregates[0])
    results = {key: [agg[key] for agg in aggregates] for key in keys}
    document = {"name": name, "description": description}
    if test_set is not None:
        document["test_set"] = test_set
    if codec is not None:
        document["codec"] = codec
    return {**document, "points": list(labels), "results": results}


def write_results(output: str | os.PathLike, name: str, description: str, labels: Sequence[str],
                  aggregates: Sequence[dict], rows_per_point: Sequence[Sequence[dict]],
                  test_set: dict | None = None, codec: str | None = None) -> tuple[Path, Path]:
    """Write the CompressAI-format JSON to ``output`` and the per-image CSV beside it (same stem).

    The CSV has one row per (point, image); the ``point`` column names the checkpoint or quality.
    Returns the two paths.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    document = compressai_json(name, description, aggregates, labels, test_set, codec)
    output.write_text(json.dumps(document, indent=2) + "\n")
    csv_path = output.with_suffix(".csv")
    fields = ["point", *rows_per_point[0][0]]
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for label, rows in zip(labels, rows_per_point):
            writer.writerows({"point": label, **row} for row in rows)
    return output, csv_path
