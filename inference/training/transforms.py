"""Pixel transforms of the training batches, shared by both training scripts and the
validation metrics: normalisation to the network's input, and the augmentations (random
shift with black fill, per-sample gamma / gain / blur, tone curve and tint, zoom about the
grid's centre). Every random draw
comes from the generator passed in, so the epoch-seeded determinism of ``common`` carries
through.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch


def normalise(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (channel axis 1) -> float (x - mean) / std, 1 channel broadcast to 3."""
    x = batch.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, *x.shape[2:])
    shape = (1, 3) + (1,) * (x.ndim - 2)
    return (x - mean.view(shape)) / std.view(shape)


def random_shift(
    image: np.ndarray, rng: np.random.Generator, max_shift_px: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Shift the last two axes by up to ``max_shift_px`` with zero (black) fill: the fan does not
    always sit at the same place in a lab's exports."""
    if max_shift_px <= 0:
        return image, (0, 0)
    dy, dx = (int(v) for v in rng.integers(-max_shift_px, max_shift_px + 1, size=2))
    return shift_array(image, dy, dx), (dy, dx)


GAMMA_LOG_RANGE = 0.5  # gamma drawn log-uniformly in [e^-0.5, e^0.5] = [0.61, 1.65]
GAIN_RANGE = (0.55, 1.25)
BLUR_PROBABILITY = 0.35
BLUR_SIGMA_PX = (0.5, 1.3)
TONE_CURVE_RANGE = 0.6  # a in x - a sin(2 pi x) / (2 pi): S-shaped for a > 0, inverse-S for a < 0
TINT_GAIN_RANGE = (0.8, 1.2)  # one gain per colour channel
# The fan's bounding box is scaled to the 112-px grid, so the heart's size on the grid follows
# the lab's depth and sector angle: depth 10 to 24 cm and half-angles 30 to 55 degrees put the
# same LV anywhere from about 0.6 to 1.3 times its size at a 16 cm, 40 degree setting.
ZOOM_RANGE = (0.6, 1.25)  # drawn log-uniformly


def intensity_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 pixels (the last two axes image rows and columns) with one random gamma, gain
    and, sometimes, Gaussian blur for the whole sample (every frame of a clip alike). Black
    stays black: outside the fan the node feeds zeros, whatever the scanner."""
    gamma = float(np.exp(rng.uniform(-GAMMA_LOG_RANGE, GAMMA_LOG_RANGE)))
    gain = float(rng.uniform(*GAIN_RANGE))
    blur = rng.random() < BLUR_PROBABILITY
    sigma = float(rng.uniform(*BLUR_SIGMA_PX))
    lut = np.clip(255.0 * gain * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    out = lut[image]
    if blur:
        h, w = out.shape[-2:]
        flat = out.reshape(-1, h, w)
        for k in range(flat.shape[0]):
            flat[k] = cv2.GaussianBlur(flat[k], (0, 0), sigma)
        out = flat.reshape(out.shape)
    return out


def tone_tint_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 pixels, channel axis first (1 or 3 channels), through one random monotone tone
    curve and, for three channels, one random gain per channel (a tint). Grey maps differ
    between scanners by more than a gamma (S-shaped and inverse-S maps compress the middle
    greys or the ends) and labs export with sepia, green or blue tints. The curve
    ``x - a sin(2 pi x) / (2 pi)`` with ``|a| < 1`` is monotone and keeps black black and
    white white. The draws do not depend on the channel count, so grey and colour samples of a
    run stay in step."""
    a = float(rng.uniform(-TONE_CURVE_RANGE, TONE_CURVE_RANGE))
    tint = rng.uniform(TINT_GAIN_RANGE[0], TINT_GAIN_RANGE[1], size=3)
    x = np.arange(256) / 255.0
    curve = x - a * np.sin(2.0 * np.pi * x) / (2.0 * np.pi)
    out = np.empty_like(image)
    for c in range(image.shape[0]):
        gain = float(tint[c]) if image.shape[0] == 3 else 1.0
        lut = np.clip(np.rint(255.0 * gain * curve), 0, 255).astype(np.uint8)
        out[c] = lut[image[c]]
    return out


def zoom_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 pixels (the last two axes image rows and columns) scaled about the image centre
    by one random factor for the whole sample (every frame of a clip alike). EF is a ratio of
    volumes, so the label holds at any size; a network that never sees the heart at another
    size learns sizes in pixels instead, and reads a smaller heart's wall motion as a smaller
    EF."""
    return zoom_array(image, draw_zoom(rng))


def draw_zoom(rng: np.random.Generator) -> float:
    """One zoom factor, log-uniform in ``ZOOM_RANGE``."""
    return float(np.exp(rng.uniform(np.log(ZOOM_RANGE[0]), np.log(ZOOM_RANGE[1]))))


def zoom_array(image: np.ndarray, factor: float) -> np.ndarray:
    """The last two axes scaled by ``factor`` about the centre: black (zero) fills what a
    zoom-out uncovers, a zoom-in crops the edges. Masks go through the same call as their
    image, so the two stay aligned."""
    h, w = image.shape[-2:]
    new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
    # area averaging when shrinking, so speckle does not alias into a coarser texture
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    flat = image.reshape(-1, h, w)
    out = np.zeros_like(flat)
    # the scaled frame centred on the grid: pasted inside it, or its centre cut out of it
    dst_y, dst_x = max(0, (h - new_h) // 2), max(0, (w - new_w) // 2)
    src_y, src_x = max(0, (new_h - h) // 2), max(0, (new_w - w) // 2)
    rows, cols = min(h, new_h), min(w, new_w)
    for k in range(flat.shape[0]):
        scaled = cv2.resize(flat[k], (new_w, new_h), interpolation=interpolation)
        out[k, dst_y : dst_y + rows, dst_x : dst_x + cols] = scaled[
            src_y : src_y + rows, src_x : src_x + cols
        ]
    return out.reshape(image.shape)


def shift_array(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    src_y = slice(max(0, -dy), min(h, h - dy))
    dst_y = slice(max(0, dy), min(h, h + dy))
    src_x = slice(max(0, -dx), min(w, w - dx))
    dst_x = slice(max(0, dx), min(w, w + dx))
    out[..., dst_y, dst_x] = a[..., src_y, src_x]
    return out
