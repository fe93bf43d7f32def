"""Real-bitstream evaluation (pad, compress, decompress, crop; bpp from bytes; 8-bit PSNR / MS-SSIM).

Library use (e.g. after training)::

    from common.eval import evaluate
    rows, agg = evaluate(model, image_paths)          # agg["bpp"], agg["psnr-rgb"], agg["ms-ssim-rgb"], ...

Command line: ``python -m common.eval --help``.
"""
from common.eval.evaluate import (DecodeMismatchWarning, aggregate, centred_padding, compressai_json, crop,
                                  describe, evaluate, evaluate_image, pad, payload_bytes, write_results)

__all__ = ["DecodeMismatchWarning", "aggregate", "centred_padding", "compressai_json", "crop", "describe",
           "evaluate", "evaluate_image", "pad", "payload_bytes", "write_results"]
