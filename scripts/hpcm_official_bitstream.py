"""Write the official HPCM code's bitstream of one test image, the fixture of ``tests/test_hpcm_official_bitstream.py``.

    python scripts/hpcm_official_bitstream.py --official PATH [--out tests/data/hpcm_official_bitstream]

PATH is a checkout of github.com/lyq133/LIC-HPCM whose entropy coder is built for this Python::

    pip install pybind11
    cd PATH/src/entropy_models/entropy_coders/unbounded_rans && python setup.py build_ext --inplace
    cp *.so ../..

The official HPCM-Base gets the parity weights of ``common.models.hpcm.weights`` (recreated from the key names),
builds its tables with its own ``update()`` (float32 scale levels, as its ``test.py``), is converted to float64
and codes a 256x256 crop of scikit-image's astronaut. Float64, so that the test can rerun the network on any CPU
and thread count and meet the same scales and roundings: in float32, the two codes' rounding differences
(about 3e-6 on a residual) are of the order of the smallest distance of a residual to a rounding boundary
over the 81920 symbols, so an encoder on another machine could flip one. Writes ``<out>.npz`` (the y and z
strings as bytes, the z shape, the central 64x64 of the official decoded image) and ``<out>.json`` (provenance, SHA-256 of the
official CDF tables).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.hpcm_speed import construct_official, load_official, official_coder_built  # noqa: E402
from common.cli import OneLineErrorParser, run_main  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.models.hpcm.ggm import ggm_scale_table  # noqa: E402
from common.models.hpcm.weights import fill_parity_weights  # noqa: E402

# The crop: rows, columns of skimage.data.astronaut() (a face and a textured background).
CROP = (slice(100, 356), slice(150, 406))
# The part of the official decoded image that is stored (the whole one would be 10 times the bitstream).
XHAT_CROP = slice(96, 160)
TABLES = ("quantized_cdf_y", "cdf_length_y", "offset_y", "quantized_cdf_z", "cdf_length_z", "offset_z")


def fixture_image() -> torch.Tensor:
    """(1, 3, 256, 256) float64 in [0, 1]."""
    import skimage.data

    image = skimage.data.astronaut()[CROP]
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].double() / 255


def table_digest(tables: dict) -> str:
    """SHA-256 over the int32 bytes of the tables, in the order of ``TABLES``."""
    digest = hashlib.sha256()
    for name in TABLES:
        digest.update(tables[name].to(torch.int32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv=None) -> None:
    parser = OneLineErrorParser(prog="python scripts/hpcm_official_bitstream.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, metavar="PATH", help="checkout of the official HPCM code")
    parser.add_argument("--out", default="tests/data/hpcm_official_bitstream", help="output path without suffix")
    args = parser.parse_args(argv)

    official_cls = load_official(args.official)
    if not official_coder_built():
        raise UserError(f"the official entropy coder in {args.official} is not built for this Python: build it as "
                        "`python scripts/hpcm_official_bitstream.py --help` says")
    model = fill_parity_weights(construct_official(official_cls)).eval()
    model.update(ggm_scale_table(dtype=torch.float32))  # equals the official test.py's get_scale_table(0.12, 64, 60)
    model = model.double()
    x = fixture_image()
    with torch.no_grad():
        encoded = model.compress(x)
        decoded = model.decompress(encoded["strings"], encoded["shape"])
    y_string, z_string = encoded["strings"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out.with_suffix(".npz"), y_string=np.frombuffer(y_string, dtype=np.uint8),
                        z_string=np.frombuffer(z_string, dtype=np.uint8), z_shape=np.array(encoded["shape"]),
                        x_hat_crop=decoded["x_hat"][0, :, XHAT_CROP, XHAT_CROP].numpy().astype(np.float32))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.official, capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else ""
    info = {
        "command": "python scripts/hpcm_official_bitstream.py --official PATH",
        "official_code": "github.com/lyq133/LIC-HPCM " + (f"at {commit}" if commit else "(commit unknown)"),
        "model": "official HPCM_Base, parity weights (salt 0), update() with 60 float32 levels 0.12..64, "
                 "then .double()",
        "image": "skimage.data.astronaut()[100:356, 150:406], float64 / 255",
        "torch": torch.__version__,
        "y_bytes": len(y_string), "z_bytes": len(z_string),
        "official_tables_sha256": table_digest({name: getattr(model, name) for name in TABLES}),
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out.with_suffix('.npz')} and {out.with_suffix('.json')}: y {len(y_string)} bytes, "
          f"z {len(z_string)} bytes")


if __name__ == "__main__":
    run_main(main)
