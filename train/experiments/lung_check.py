"""How often the app's "two lungs" check (cxrdistill.inference.two_lungs) passes on real chest films.

    python train/experiments/lung_check.py   # writes docs/results/lung_check.json

Every TBX11K TB and extra-set film and every 4th NIH nih1024 film goes through the released lung model as an
upload would (display size, letterboxed to its input); the check should pass on all of them.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxrdistill.inference import Predictor, two_lungs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("--models", default="models", help="the release folder (with lung-unet-256)")
    parser.add_argument("--out", default="docs/results/lung_check.json", help="JSON report")
    args = parser.parse_args(argv)
    predictor = Predictor.from_release(args.models)
    data = Path(args.data)
    files = sorted(glob.glob(str(data / "tbx11k/imgs/tb/*.png"))) + sorted(
        glob.glob(str(data / "tbx11k/imgs/extra/*/*/*"))
    )
    files += sorted(glob.glob(str(data / "nih1024/images/*.png")))[::4]
    failed, shares = [], []
    for path in tqdm(files, desc="lung check"):
        mask = predictor.lungs(predictor.read(path).pixels)
        shares.append(float(mask.mean()))
        if not two_lungs(mask):
            failed.append(str(Path(path).relative_to(data)))
    report = {
        "films": len(files),
        "failed": len(failed),
        "failed_files": failed,
        "lung_share_of_image_p1_p50_p99": np.percentile(shares, [1, 50, 99]).round(3).tolist(),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
