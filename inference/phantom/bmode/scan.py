"""The scanner: tissue labels -> scatterers -> PSF -> artefacts -> TGC -> envelope -> log
compression -> grey map -> scan conversion, one frame at a time.

Everything stochastic that belongs to the loop (textures, artefacts, TGC sliders) is drawn
once in the constructor, so frames differ only by the heart's motion and the slow speckle
decorrelation, as on a real machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..geometry import scan_conversion_maps
from .artefacts import Artefacts, add_reverberation, sample_artefacts
from .display import grey_lut
from .families import Family, pick, uniform
from .heart import HeartFrame, HeartPlan
from .psf import apply_psf, make_psf
from .scatterers import ScattererField
from .tissue import LabelPainter, sample_tissues


@dataclass(frozen=True)
class ScanStyle:
    """One loop's machine settings and export style, drawn inside its family."""

    family: str
    matrix: tuple[int, int]
    gain_db: float
    dynamic_range_db: float
    psf_axial_px: float
    psf_lateral_deg: float
    focus_frac: float
    rayleigh_frac: float
    density_scale: float
    speckle_memory: float
    persistence: float
    attenuation_db_cm_mhz: float
    frequency_mhz: float
    grey_map: str
    tint: str
    jpeg_quality: int
    encoding: str
    text_corners: str
    ecg: str
    logo: bool


def sample_scan_style(rng: np.random.Generator, fam: Family) -> ScanStyle:
    rows, cols = pick(rng, fam.matrices)
    return ScanStyle(
        family=fam.name,
        matrix=(int(rows), int(cols)),
        gain_db=uniform(rng, fam.gain_db),
        dynamic_range_db=uniform(rng, fam.dynamic_range_db),
        psf_axial_px=uniform(rng, fam.psf_axial_px),
        psf_lateral_deg=uniform(rng, fam.psf_lateral_deg),
        focus_frac=uniform(rng, (0.35, 0.6)),
        rayleigh_frac=uniform(rng, (0.2, 0.4)),
        density_scale=uniform(rng, fam.scatter_density),
        speckle_memory=uniform(rng, fam.speckle_memory),
        persistence=uniform(rng, fam.persistence),
        attenuation_db_cm_mhz=uniform(rng, (0.35, 0.6)),
        frequency_mhz=uniform(rng, (1.8, 3.2)),
        grey_map=str(pick(rng, fam.grey_maps)),
        tint=str(pick(rng, fam.tints)),
        jpeg_quality=int(rng.integers(fam.jpeg_quality[0], fam.jpeg_quality[1] + 1)),
        encoding=str(pick(rng, fam.encodings)),
        text_corners=str(pick(rng, fam.text_corners)),
        ecg=str(pick(rng, fam.ecg)),
        logo=bool(rng.random() < fam.logo),
    )


class BModeScanner:
    """Renders one loop's frames; holds the per-loop fixed fields."""

    def __init__(
        self, plan: HeartPlan, style: ScanStyle, first: HeartFrame, rng: np.random.Generator
    ) -> None:
        case = plan.case
        grid, sector = case.grid, case.sector
        self.style = style
        self.length_cm = case.anatomy.lv_length_cm
        self.painter = LabelPainter(grid)
        self.tissues = sample_tissues(rng, style.density_scale)
        self.field = ScattererField(grid, self.tissues, style.speckle_memory, rng)
        self.psf = make_psf(
            grid, style.psf_axial_px, style.psf_lateral_deg, style.focus_frac, style.rayleigh_frac
        )
        r = grid.radii_cm()[:, None].astype(np.float32)
        chest_cm = uniform(rng, (0.6, 1.4))
        self.artefacts: Artefacts = sample_artefacts(rng, grid, first.shapes, chest_cm)
        tex = rng.standard_normal((grid.n_r, grid.n_theta), dtype=np.float32)
        tex = cv2.GaussianBlur(tex, (0, 0), sigmaX=grid.n_theta / 12, sigmaY=grid.n_r / 12)
        tex /= max(float(tex.std()), 1e-6)
        surround = np.exp(0.6 * tex) * np.where(r < chest_cm, uniform(rng, (2.5, 5.0)), 1.0)
        self.surround_gain = surround.astype(np.float32)
        loss_db = 2.0 * style.attenuation_db_cm_mhz * style.frequency_mhz * r
        knots = np.linspace(0.0, grid.depth_cm, 8)
        sliders = np.interp(r[:, 0], knots, rng.uniform(-2.5, 2.5, 8))[:, None]
        tgc_db = loss_db * uniform(rng, (0.8, 1.0)) + sliders
        self.tgc = (10.0 ** ((tgc_db - loss_db) / 20.0)).astype(np.float32)
        self.specular = uniform(rng, (0.3, 0.8))
        self.noise_sigma = np.float32(10.0 ** (-(style.dynamic_range_db + 4.0) / 20.0))
        # fixed-point maps: the same bilinear scan conversion, about twice as fast
        self.map_xy, self.map_frac = cv2.convertMaps(
            *scan_conversion_maps(sector, grid), cv2.CV_16SC2
        )
        self.lut = grey_lut(style.grey_map)
        self._rng = rng
        self._top_db: float | None = None
        self._shown: np.ndarray | None = None

    def envelope(self, hf: HeartFrame) -> np.ndarray:
        """Detected echo amplitude (linear, before compression) on the beam grid."""
        labels = self.painter.paint(hf.shapes)
        iq = self.field.frame(
            labels, hf.pose, hf.long_frac, hf.radial_frac, self.length_cm, self.surround_gain
        )
        echo = self.tissues.echo[labels]
        edge = np.zeros_like(echo)
        edge[1:-1] = np.abs(echo[2:] - echo[:-2])  # specular: boundaries facing the beam
        iq[..., 0] += self.specular * np.minimum(edge, 2.0)
        iq = apply_psf(iq, self.psf)
        iq = add_reverberation(iq + self.artefacts.clutter_iq, self.artefacts)
        iq *= (self.tgc * self.artefacts.gain)[..., None]
        # electronic noise: this frame's white innovation, independent of the echo after PSF
        iq += self.field.innovation * self.noise_sigma
        return cv2.magnitude(iq[..., 0], iq[..., 1])

    def frame(self, hf: HeartFrame) -> np.ndarray:
        """Scan-converted grey frame (rows x cols) uint8, zero outside the fan."""
        st = self.style
        db = 20.0 * np.log10(self.envelope(hf) + 1e-6)
        if self._top_db is None:  # the loop's reference level, fixed from its first frame
            self._top_db = float(np.percentile(db, 99.0)) + 2.0
        low = self._top_db + 6.0 - st.gain_db - st.dynamic_range_db
        x = np.clip((db - low) / st.dynamic_range_db, 0.0, 1.0).astype(np.float32)
        if self._shown is not None and st.persistence > 0:
            x = np.float32(st.persistence) * self._shown + np.float32(1 - st.persistence) * x
        self._shown = x
        beam = self.lut[(x * 255.0 + 0.5).astype(np.uint8)]
        img = cv2.remap(
            beam,
            self.map_xy,
            self.map_frac,
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        return img  # pixels outside the fan map outside the beam grid: zero
