"""Post-processing rules beyond threshold and minimum area, scored on one split.

The model card's "The node's defaults": for each image of the split the model runs
once (and once more on the mirrored image, for flip test-time augmentation); then
every rule is scored on those maps as mean per-image Dice against the outlines.
Rules: threshold t; keep only components whose peak probability is at least p; keep
only the k components of highest peak. Run it on the validation split only: a rule
chosen on the test split would make test figures selection figures.

    .venv/bin/python scripts/postprocessing_rules.py --split val
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from model_export.datasets import find_pairs, read_image, read_mask, select
from model_export.evaluate import _Predictor, dice_iou
from service.imaging.preprocess import to_source_probability
from service.settings import DEFAULT_MODEL


def kept(prob: np.ndarray, threshold: float, peak: float, top: int) -> np.ndarray:
    """The thresholded mask with only the components the rule keeps."""
    mask = prob >= threshold
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    index = np.arange(1, count + 1)
    peaks = np.asarray(ndimage.maximum(prob, labels, index))
    keep = peaks >= peak
    if top:
        best = np.zeros(count, bool)
        best[np.argsort(-peaks)[:top]] = True
        keep &= best
    return np.isin(labels, index[keep])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--data", default="data/cdd-all")
    parser.add_argument("--split-file", default="data/cdd-all/split.json")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    keys = json.loads(Path(args.split_file).read_text())[args.split]
    pairs = select(find_pairs(args.data, include_unmasked=True), keys)
    predictor = _Predictor(args.model, 256)
    maps: dict[bool, list[np.ndarray]] = {False: [], True: []}
    truths = []
    for pair in pairs:
        image = read_image(pair.image)
        prob, tensor, box = predictor.predict(image, "source")
        mirrored = predictor.model_probability(np.ascontiguousarray(tensor[:, :, ::-1, :]))
        back = to_source_probability(np.ascontiguousarray(mirrored[:, ::-1]), box, image.shape)
        maps[False].append(prob)
        maps[True].append((prob + back) / 2)
        truths.append(
            read_mask(pair.mask) if pair.mask is not None else np.zeros(image.shape, bool)
        )
    rows = []
    for flip, t, peak, top in itertools.product(
        (False, True), (0.3, 0.4, 0.5, 0.6), (0.0, 0.7, 0.8, 0.9, 0.95), (0, 1, 2, 3)
    ):
        if peak and peak < t:
            continue
        scores = [
            dice_iou(truth, kept(p, t, peak, top))[0]
            for p, truth in zip(maps[flip], truths, strict=True)
        ]
        rows.append((float(np.mean(scores)), flip, t, peak, top))
    rows.sort(reverse=True)
    print(f"{len(rows)} rules on {len(pairs)} {args.split} images; mean per-image Dice:")
    for dice, flip, t, peak, top in rows[:10] + [r for r in rows if r[1:] == (False, 0.5, 0.0, 0)]:
        rule = f"threshold {t:.2f}, peak >= {peak:.2f}, top {top or 'all'}"
        print(f"  {dice:.4f}  {rule}{', flip TTA' if flip else ''}")


if __name__ == "__main__":
    main()
