"""Offline generator of a heterogeneous, multi-domain synthetic person-ReID benchmark.

Why: the real FedReID benchmark (nine datasets) cannot be downloaded here and is too big for
CI, so this module draws a small stand-in that keeps what matters for federated ReID:

* a real re-identification problem: every identity has persistent attributes (clothing
  colours and patterns, skin, hair, body proportions, shoes, bag) rendered as a simple person
  figure; coarse colours are drawn from small palettes so many identities share them, and
  fine details (pattern, sleeves, bag and its side, shoes, hair, proportions) tell them apart;
* camera shift: each camera has its own viewpoint mix (front, back, left, right; some details
  are visible from some views only), illumination, colour cast, blur, resolution, background,
  framing jitter and occlusion rate;
* non-IID, unbalanced clients: each domain (named after one real dataset, largest to
  smallest) has its own attribute distribution, cameras and numbers of identities and images.

Each domain is written in the Market-1501 layout (``bounding_box_train/``, ``query/``,
``bounding_box_test/``, names ``PPPP_cCsS_FFFFFF_BB.jpg``) so :func:`fedreid.data.load_market`
reads it; ``public/`` holds unlabeled images of other people and cameras for server-side
distillation. Output is byte-identical for a given preset and seed.

Examples:
    >>> root = generate("data/synthetic/tiny", preset="tiny", seed=0)  # doctest: +SKIP
    >>> load_market(root / "market1501").summary()  # doctest: +SKIP

Command line::

    python -m fedreid.data.synthetic --root data/synthetic/default --preset default --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from fedreid.errors import ConfigError, DatasetError

GENERATOR = "fedreid.data.synthetic"
GENERATOR_VERSION = 1
"""Bump whenever the drawn images change, so existing sets are regenerated."""

MANIFEST = "manifest.json"
PUBLIC_DIR = "public"
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
JPEG_QUALITY = 90

ALL_DOMAINS = (
    "msmt17",
    "dukemtmcreid",
    "market1501",
    "cuhk03",
    "prid",
    "cuhk01",
    "viper",
    "3dpes",
    "ilids",
)
"""Every client domain, largest to smallest, as in the 9-dataset FedReID benchmark."""

_PUBLIC_CODE = 99  # random-stream code of the public set; domains use their ALL_DOMAINS index

POOL_DOMAIN = "pretrain"
"""The one domain (folder) of the pretraining pool (:data:`POOL`); never a client domain."""
_POOL_CODE = 1000  # random-stream code of the pool: outside domains' 0..8 and public's 99
CLIENT_PRESETS = ("tiny", "default", "large")
"""The presets whose domains are clients; the pool's identities avoid all of theirs."""

# --------------------------------------------------------------------------------------------
# Presets: plain, documented sizes.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainSpec:
    """Sizes and character of one client domain (one stand-in dataset).

    Args:
        name: folder name, one of :data:`ALL_DOMAINS` (or :data:`POOL_DOMAIN`, the pool).
        num_cams: cameras in this domain's network.
        train_ids: training identities (pids ``1..train_ids``).
        train_imgs_per_id: inclusive range of training images per identity.
        test_ids: test identities (pids after the training ones; disjoint from them).
        cams_per_id: inclusive range of cameras each identity passes (at least 2 for test ids).
        query_cams: query cameras per test identity, at most (one query image each); at least
            one of the identity's cameras is always gallery-only, so every query has a match.
        gallery_per_cam: inclusive range of gallery images per (test identity, camera); cameras
            that are not query cameras get at least one.
        distractors: extra gallery images with pid 0 (people and bad crops of nobody we label).
        palette_concentration: Dirichlet concentration of the domain's colour preferences;
            small values make a few colours dominate, i.e. more colour collisions.
    """

    name: str
    num_cams: int
    train_ids: int
    train_imgs_per_id: tuple[int, int]
    test_ids: int
    cams_per_id: tuple[int, int]
    query_cams: int
    gallery_per_cam: tuple[int, int]
    distractors: int = 0
    palette_concentration: float = 0.8

    def __post_init__(self) -> None:
        """Reject specs that could not give every query a cross-camera match."""
        problems = []
        if self.name not in ALL_DOMAINS and self.name != POOL_DOMAIN:
            problems.append(f"name must be one of {ALL_DOMAINS} or {POOL_DOMAIN!r}")
        if self.num_cams < 2 or self.cams_per_id[1] < 2 or self.query_cams < 1:
            problems.append("needs num_cams >= 2, cams_per_id up to >= 2 and query_cams >= 1")
        for field in ("train_imgs_per_id", "cams_per_id", "gallery_per_cam"):
            lo, hi = getattr(self, field)
            if not 0 <= lo <= hi:
                problems.append(f"{field} must be a range 0 <= lo <= hi")
        if self.train_ids < 1 or self.test_ids < 1 or self.train_imgs_per_id[0] < 1:
            problems.append("needs at least one train id, one test id and one image per id")
        if self.train_ids + self.test_ids > 9999:
            problems.append("pids must fit in four digits")
        if problems:
            raise ConfigError(f"bad DomainSpec {self.name!r}: " + "; ".join(problems))


@dataclass(frozen=True)
class CameraRanges:
    """The ranges cameras are drawn from; wider ranges mean a stronger shift between cameras.

    Photometric: ``gain`` (exposure), ``cast_std`` (log-normal per-channel colour cast),
    ``gamma``, ``saturation``, ``gradient`` (light ramp across the image). Optics: ``blur``
    radii, ``noise`` std, ``resolution`` (sensor size relative to the image). Framing:
    ``scale`` (person height / image height), ``jitter`` (pixels). ``occlusion``: choices of
    the probability that an object covers part of the person. Scene: ``scene_spread``, how far
    a camera's background colour strays from its domain's scene colour; ``scene_regions``,
    the brightness contrast between parts of a camera's (wide) scene, so shots differ.
    """

    gain: tuple[float, float] = (0.8, 1.2)
    cast_std: float = 0.06
    gamma: tuple[float, float] = (0.9, 1.12)
    saturation: tuple[float, float] = (0.75, 1.1)
    gradient: tuple[float, float] = (0.0, 0.3)
    blur: tuple[float, ...] = (0.0, 0.4, 0.7, 1.1)
    noise: tuple[float, float] = (0.0, 0.03)
    resolution: tuple[float, ...] = (1.0, 1.0, 0.7, 0.5)
    scale: tuple[float, float] = (0.84, 0.96)
    jitter: tuple[float, float] = (1.0, 3.5)
    occlusion: tuple[float, ...] = (0.0, 0.1, 0.2, 0.35)
    scene_spread: float = 0.12
    scene_regions: float = 0.2


@dataclass(frozen=True)
class Preset:
    """A whole benchmark: client domains plus the server's unlabeled public set.

    Args:
        name: preset name recorded in the manifest.
        domains: client domains, largest first.
        public_ids: identities in ``public/`` (none of them appears in any domain).
        public_imgs_per_id: inclusive range of public images per identity.
        public_cams: cameras of the public set (its own, not any client's).
        height, width: image size in pixels.
        cameras: the ranges every camera's look is drawn from.
    """

    name: str
    domains: tuple[DomainSpec, ...]
    public_ids: int
    public_imgs_per_id: tuple[int, int]
    public_cams: int = 4
    height: int = 128
    width: int = 64
    cameras: CameraRanges = CameraRanges()


def _scaled(preset: Preset, name: str, factor: int) -> Preset:
    """The same benchmark with ``factor`` times the identities (so about ``factor`` x images)."""
    domains = tuple(
        dataclasses.replace(
            d,
            train_ids=d.train_ids * factor,
            test_ids=d.test_ids * factor,
            distractors=d.distractors * factor,
        )
        for d in preset.domains
    )
    return dataclasses.replace(
        preset, name=name, domains=domains, public_ids=preset.public_ids * factor
    )


# Domain tables, one row per DomainSpec (fields in order):
#   name, cameras, train ids, train images per id, test ids, cameras per id, query cameras
#   per test id, gallery images per (test id, camera), distractors, palette concentration.
# fmt: off
TINY = Preset(
    name="tiny",
    domains=(
        DomainSpec("market1501",   3,  16, (3, 5),  8, (2, 3), 2, (1, 2),  4, 0.8),
        DomainSpec("cuhk03",       2,  14, (3, 4),  8, (2, 2), 1, (1, 2),  0, 0.8),
        DomainSpec("ilids",        2,  12, (2, 4),  6, (2, 2), 1, (1, 2),  0, 0.8),
    ),
    public_ids=12,
    public_imgs_per_id=(3, 4),
    public_cams=2,
)
"""For tests: three small domains, about 280 images, about a second to draw."""

DEFAULT = Preset(
    name="default",
    domains=(
        DomainSpec("msmt17",       6, 100, (8, 16), 80, (2, 4), 2, (1, 2), 80, 0.5),
        DomainSpec("dukemtmcreid", 6,  80, (7, 15), 60, (2, 4), 2, (1, 2), 50, 0.7),
        DomainSpec("market1501",   5,  70, (7, 15), 60, (2, 5), 2, (1, 2), 50, 0.8),
        DomainSpec("cuhk03",       2,  60, (6, 10), 50, (2, 2), 1, (1, 3),  0, 0.8),
        DomainSpec("prid",         2,  50, (4, 8),  40, (2, 2), 1, (1, 2), 60, 1.0),
        DomainSpec("cuhk01",       2,  40, (4, 4),  30, (2, 2), 1, (1, 2),  0, 1.0),
        DomainSpec("viper",        2,  60, (2, 2),  40, (2, 2), 1, (0, 1),  0, 1.0),
        DomainSpec("3dpes",        3,  25, (3, 5),  20, (2, 3), 1, (1, 2),  0, 1.2),
        DomainSpec("ilids",        2,  20, (3, 5),  15, (2, 2), 1, (1, 2),  0, 1.2),
    ),
    public_ids=200,
    public_imgs_per_id=(3, 5),
)
"""All nine domains: about 4,000 train, 2,300 query + gallery and 800 public images
(msmt17 about 1,200 train images down to ilids about 80)."""
# fmt: on

LARGE = _scaled(DEFAULT, "large", 10)
"""The default benchmark with ten times the identities, for GPU runs."""

# fmt: off
POOL = Preset(
    name="pretrain",
    domains=(
        DomainSpec(POOL_DOMAIN,    8, 240, (6, 10), 20, (2, 4), 2, (1, 2),  0, 1.5),
    ),
    public_ids=0,
    public_imgs_per_id=(0, 0),
    public_cams=0,
)
# fmt: on
"""The labelled pretraining pool (``python -m fedreid.pretrain``): one domain ``pretrain/`` of
8 cameras, 240 training identities (about 1,900 images) and 20 test identities (about 130
query + gallery images), no public set; about 2,050 images in all.

Why it is disjoint from every client: its identities, cameras and images come from random
streams keyed by :data:`_POOL_CODE` (1000), which no client domain (codes 0..8, their
:data:`ALL_DOMAINS` index) nor the public set (99) uses, for any seed; a stream is
``np.random.default_rng([seed, code, ...])``, so different codes never share draws. On top
of that, :func:`build_domain` re-draws every pool identity whose discrete attributes
(:meth:`Identity.key`) equal those of any identity of any client domain of
:data:`CLIENT_PRESETS` drawn with the same seed (:func:`client_identity_keys`): with the
same generator seed at both ends (0 by default) no client person is in the pool, not even
a look-alike with the same clothes. Cameras are drawn from continuous ranges on the pool's
own stream, so none equals a client camera. ``data.preset=pretrain`` is refused as a client
scenario (:func:`fedreid.config.validate`).
"""

PRESETS: dict[str, Preset] = {p.name: p for p in (TINY, DEFAULT, LARGE, POOL)}
DOMAINS_BY_PRESET: dict[str, list[str]] = {
    name: [d.name for d in p.domains] for name, p in PRESETS.items()
}


def get_preset(preset: str | Preset) -> Preset:
    """Resolve a preset name (or pass a :class:`Preset` through); unknown names raise."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def domain_names(preset: str | Preset = "default") -> list[str]:
    """The client domains (folder names under the root) of a preset, largest first."""
    return [d.name for d in get_preset(preset).domains]


# --------------------------------------------------------------------------------------------
# Attributes: palettes, per-domain preferences, identities.
# --------------------------------------------------------------------------------------------


def _rgb(*values: int) -> np.ndarray:
    """An sRGB colour as float32 in [0, 1]."""
    return np.asarray(values, dtype=np.float32) / 255.0


UPPER_COLOURS = {
    "black": _rgb(28, 28, 32),
    "white": _rgb(222, 222, 216),
    "grey": _rgb(125, 125, 128),
    "navy": _rgb(32, 42, 88),
    "red": _rgb(165, 32, 38),
    "blue": _rgb(55, 100, 175),
    "green": _rgb(45, 105, 60),
    "yellow": _rgb(215, 185, 55),
    "beige": _rgb(185, 160, 125),
    "pink": _rgb(210, 130, 160),
}
LOWER_COLOURS = {
    "black": _rgb(25, 25, 30),
    "darkgrey": _rgb(70, 70, 75),
    "navy": _rgb(35, 45, 85),
    "denim": _rgb(75, 100, 140),
    "khaki": _rgb(160, 145, 105),
    "white": _rgb(215, 215, 210),
    "brown": _rgb(95, 65, 42),
}
SKIN_TONES = {
    "light": _rgb(235, 200, 175),
    "medium": _rgb(200, 155, 120),
    "tan": _rgb(160, 115, 82),
    "dark": _rgb(98, 68, 50),
}
HAIR_COLOURS = {
    "black": _rgb(20, 18, 18),
    "darkbrown": _rgb(58, 38, 24),
    "brown": _rgb(110, 74, 44),
    "blond": _rgb(200, 170, 110),
    "grey": _rgb(155, 152, 150),
}
SHOE_COLOURS = {
    "black": _rgb(20, 20, 22),
    "white": _rgb(230, 230, 230),
    "brown": _rgb(90, 55, 30),
    "grey": _rgb(120, 120, 125),
    "red": _rgb(180, 40, 40),
}
ACCESSORY_COLOURS = {
    "black": _rgb(25, 25, 28),
    "brown": _rgb(110, 70, 40),
    "grey": _rgb(110, 112, 118),
    "navy": _rgb(30, 40, 80),
    "red": _rgb(170, 35, 40),
    "green": _rgb(50, 95, 55),
    "orange": _rgb(215, 120, 40),
}

UPPER_PATTERNS = ("solid", "hstripes", "vstripes", "checks", "logo", "split", "zip")
"""``logo`` and ``zip`` show from the front only; ``split`` halves swap sides with the view."""
LOWER_STYLES = ("trousers", "shorts", "skirt", "tracksuit")
HAIR_STYLES = ("short", "long", "bald")
BAGS = ("none", "left", "right", "backpack")
"""A shoulder bag on the person's left or right side, seen from one side view only."""
VIEWS = ("front", "back", "left", "right")
"""``left``: the camera sees the person's left side (they walk towards the image's left)."""


@dataclass(frozen=True)
class DomainStyle:
    """A domain's attribute distribution: probabilities over each palette and choice."""

    upper: np.ndarray
    lower: np.ndarray
    pattern: np.ndarray
    lower_style: np.ndarray
    bag: np.ndarray
    hair_style: np.ndarray
    long_sleeves: float
    hat: float


@dataclass(frozen=True)
class Identity:
    """The persistent look of one person; every image of them is drawn from it."""

    upper: str
    upper2: str
    pattern: str
    stripes: int
    long_sleeves: bool
    lower: str
    lower2: str
    lower_style: str
    skin: str
    hair: str
    hair_style: str
    hat: str | None
    shoes: str
    bag: str
    bag_colour: str
    height: float
    width: float
    leg_ratio: float

    def key(self) -> tuple:
        """The discrete attributes; two identities of a domain never share all of them."""
        return (
            self.upper,
            self.upper2 if self.pattern != "solid" else "",
            self.pattern,
            self.long_sleeves,
            self.lower,
            self.lower2 if self.lower_style == "tracksuit" else "",
            self.lower_style,
            self.skin,
            self.hair,
            self.hair_style,
            self.hat,
            self.shoes,
            self.bag,
            self.bag_colour if self.bag != "none" else "",
        )


def sample_domain_style(rng: np.random.Generator, concentration: float) -> DomainStyle:
    """Draw a domain's own (non-IID) preferences; lower concentration = more skewed palettes."""

    def weights(n: int, alpha: float) -> np.ndarray:
        return rng.dirichlet(np.full(n, alpha))

    return DomainStyle(
        upper=weights(len(UPPER_COLOURS), concentration),
        lower=weights(len(LOWER_COLOURS), concentration),
        pattern=weights(len(UPPER_PATTERNS), 2.0),
        lower_style=0.5 * weights(len(LOWER_STYLES), 1.5) + 0.5 * np.array([0.7, 0.1, 0.1, 0.1]),
        bag=0.5 * weights(len(BAGS), 2.0) + 0.5 * np.array([0.4, 0.2, 0.2, 0.2]),
        hair_style=weights(len(HAIR_STYLES), 3.0) * 0.5 + np.array([0.3, 0.15, 0.05]),
        long_sleeves=float(rng.uniform(0.3, 0.85)),
        hat=float(rng.uniform(0.05, 0.2)),
    )


def sample_identity(rng: np.random.Generator, style: DomainStyle) -> Identity:
    """Draw one person's persistent attributes from a domain's distribution."""

    def pick(names: Sequence[str], p: np.ndarray | None = None) -> str:
        return names[int(rng.choice(len(names), p=p))]

    uppers, lowers = list(UPPER_COLOURS), list(LOWER_COLOURS)
    upper = pick(uppers, style.upper)
    upper2 = pick([c for c in uppers if c != upper])
    lower = pick(lowers, style.lower)
    lower2 = pick([c for c in ("white", "black", "khaki", "denim") if c != lower])
    return Identity(
        upper=upper,
        upper2=upper2,
        pattern=pick(UPPER_PATTERNS, style.pattern),
        stripes=int(rng.integers(3, 7)),
        long_sleeves=bool(rng.random() < style.long_sleeves),
        lower=lower,
        lower2=lower2,
        lower_style=pick(LOWER_STYLES, style.lower_style),
        skin=pick(list(SKIN_TONES)),
        hair=pick(list(HAIR_COLOURS)),
        hair_style=pick(HAIR_STYLES, style.hair_style),
        hat=pick(list(ACCESSORY_COLOURS)) if rng.random() < style.hat else None,
        shoes=pick(list(SHOE_COLOURS)),
        bag=pick(BAGS, style.bag),
        bag_colour=pick(list(ACCESSORY_COLOURS)),
        height=float(rng.uniform(0.86, 1.0)),
        width=float(rng.uniform(0.8, 1.2)),
        leg_ratio=float(rng.uniform(0.44, 0.54)),
    )


def sample_identities(
    rng: np.random.Generator,
    style: DomainStyle,
    n: int,
    exclude: frozenset[tuple] = frozenset(),
) -> list[Identity]:
    """Draw ``n`` identities whose discrete attributes all differ (colours still collide);
    keys in ``exclude`` (other sets' people) are re-drawn too."""
    seen: set[tuple] = set()
    out: list[Identity] = []
    while len(out) < n:
        ident = sample_identity(rng, style)
        if ident.key() not in seen and ident.key() not in exclude:
            seen.add(ident.key())
            out.append(ident)
    return out


# --------------------------------------------------------------------------------------------
# Cameras.
# --------------------------------------------------------------------------------------------

BACKGROUNDS = ("flat", "floor", "pillars", "tiles", "foliage")


@dataclass(frozen=True)
class Camera:
    """One camera's look: viewpoint mix, light, optics, scene and framing."""

    views: np.ndarray  # probabilities over VIEWS
    gain: float
    cast: np.ndarray  # per-channel multipliers
    gamma: float
    saturation: float
    blur: float  # Gaussian radius in pixels
    noise: float  # std of additive noise, [0, 1] scale
    resolution: float  # < 1: the sensor sees a smaller image, upsampled (soft, blocky)
    scale: float  # person height / image height
    jitter: float  # framing jitter in pixels
    occlusion: float  # probability that something covers part of the person
    gradient: float  # strength of an illumination ramp across the image
    background: np.ndarray  # a wider scene texture, cropped at random per image
    bg_kind: str


_BG_MARGIN = 12
_BG_WIDTHS = 4  # a camera's scene is this many image widths wide; each shot sees one part


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, cell: int, channels: int = 3
) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid resized bilinearly."""
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2, channels))
    planes = [
        np.asarray(
            Image.fromarray(coarse[..., c].astype(np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for c in range(channels)
    ]
    return np.clip(np.stack(planes, axis=-1) / 2.0, -1.0, 1.0).astype(np.float32)


def sample_scene(rng: np.random.Generator) -> np.ndarray:
    """A domain's typical scene colour (its site's walls and pavement): a tinted grey."""
    return (rng.uniform(0.3, 0.65) + rng.normal(0.0, 0.05, size=3)).astype(np.float32)


def _background_texture(
    rng: np.random.Generator,
    kind: str,
    scene: np.ndarray,
    ranges: CameraRanges,
    height: int,
    width: int,
) -> np.ndarray:
    """A camera's wide scene (people pass at different places, so each shot crops a part)."""
    h, w = height + 2 * _BG_MARGIN, _BG_WIDTHS * width + 2 * _BG_MARGIN
    # Muted colours near the domain's scene colour, a second one for floor, pillars, tiles.
    spread = ranges.scene_spread
    base = scene + rng.uniform(-spread, spread) + rng.normal(0.0, spread / 2, size=3)
    other = base + rng.uniform(-1.5, 1.5) * spread
    yy = np.arange(h, dtype=np.float32)[:, None, None]
    xx = np.arange(w, dtype=np.float32)[None, :, None]
    tex = np.broadcast_to(base, (h, w, 3)).copy()
    if kind == "floor":
        horizon = h * rng.uniform(0.45, 0.7)
        tex = np.where(yy > horizon, other, tex)
    elif kind == "pillars":
        period = rng.uniform(14, 30)
        tex = np.where((xx % period) < period * rng.uniform(0.25, 0.5), other, tex)
    elif kind == "tiles":
        period = rng.uniform(8, 16)
        tiles = ((xx // period + yy // period) % 2).astype(bool)
        tex = np.where(tiles, other, tex)
    elif kind == "foliage":
        tex = tex * 0.8 + np.array([0.0, 0.07, 0.0], dtype=np.float32)
    amplitude = 0.1 if kind == "foliage" else 0.05
    tex = tex + amplitude * _smooth_noise(rng, h, w, cell=4 if kind == "foliage" else 10)
    # Lit and shaded regions, mostly in brightness: shots at different places differ.
    tex = tex + ranges.scene_regions * _smooth_noise(rng, h, w, cell=40, channels=1)
    tex = tex + 0.3 * ranges.scene_regions * _smooth_noise(rng, h, w, cell=40)
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


def sample_camera(
    rng: np.random.Generator,
    scene: np.ndarray,
    height: int,
    width: int,
    ranges: CameraRanges = CameraRanges(),
) -> Camera:
    """Draw one camera: a dominant viewpoint, its own light and colour cast, optics and scene."""
    views = np.full(len(VIEWS), 0.08)
    dominant = int(rng.integers(len(VIEWS) + 1))
    if dominant == len(VIEWS):  # a side camera: people walk both ways past it
        views[2:] += 0.34
    else:
        views[dominant] += 0.6
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    r = ranges
    return Camera(
        views=views / views.sum(),
        gain=float(rng.uniform(*r.gain)),
        cast=np.exp(rng.normal(0.0, r.cast_std, size=3)).astype(np.float32),
        gamma=float(rng.uniform(*r.gamma)),
        saturation=float(rng.uniform(*r.saturation)),
        blur=float(rng.choice(r.blur)),
        noise=float(rng.uniform(*r.noise)),
        resolution=float(rng.choice(r.resolution)),
        scale=float(rng.uniform(*r.scale)),
        jitter=float(rng.uniform(*r.jitter)),
        occlusion=float(rng.choice(r.occlusion)),
        gradient=float(rng.uniform(*r.gradient)),
        background=_background_texture(rng, kind, scene, r, height, width),
        bg_kind=kind,
    )


# --------------------------------------------------------------------------------------------
# Rendering: anti-aliased shapes composited on a float canvas.
# --------------------------------------------------------------------------------------------


class _Canvas:
    """A float RGB image plus coverage functions for soft-edged shapes (pixel units)."""

    def __init__(self, image: np.ndarray) -> None:
        self.img = image
        h, w = image.shape[:2]
        self.y = np.arange(h, dtype=np.float32)[:, None] + 0.5
        self.x = np.arange(w, dtype=np.float32)[None, :] + 0.5

    def paint(self, cov: np.ndarray, colour: np.ndarray) -> None:
        """Blend ``colour`` over the image with per-pixel coverage in [0, 1]."""
        self.img += cov[..., None] * (colour - self.img)

    def rect(self, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        """Axis-aligned rectangle (separable, so cheap)."""
        cx = np.clip(np.minimum(self.x - x0, x1 - self.x) + 0.5, 0.0, 1.0)
        cy = np.clip(np.minimum(self.y - y0, y1 - self.y) + 0.5, 0.0, 1.0)
        return cy * cx

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        """Filled ellipse with a one-pixel soft rim."""
        d = np.sqrt(((self.x - cx) / rx) ** 2 + ((self.y - cy) / ry) ** 2)
        return np.clip((1.0 - d) * min(rx, ry) + 0.5, 0.0, 1.0)

    def capsule(self, x0: float, y0: float, x1: float, y1: float, r: float) -> np.ndarray:
        """A thick segment with round ends (limbs, straps)."""
        dx, dy = x1 - x0, y1 - y0
        px, py = self.x - x0, self.y - y0
        t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
        dist = np.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2)
        return np.clip(r - dist + 0.5, 0.0, 1.0)

    def trapezoid(self, cx: float, y0: float, y1: float, hw0: float, hw1: float) -> np.ndarray:
        """Vertical trapezoid centred on ``cx``: half width ``hw0`` at ``y0``, ``hw1`` at ``y1``."""
        t = np.clip((self.y - y0) / max(y1 - y0, 1e-6), 0.0, 1.0)
        hw = hw0 + t * (hw1 - hw0)
        cx_ = np.clip(hw - np.abs(self.x - cx) + 0.5, 0.0, 1.0)
        cy_ = np.clip(np.minimum(self.y - y0, y1 - self.y) + 0.5, 0.0, 1.0)
        return cy_ * cx_


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 0.04) -> np.ndarray:
    """Small per-image colour variation (fabric, light), kept in range."""
    return np.clip(colour * (1.0 + rng.normal(0.0, amount, size=3)), 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Body:
    """Pixel geometry of one figure in one shot (derived from the identity's proportions)."""

    cx: float  # body centre line
    feet: float  # bottom of the shoes
    ph: float  # height in pixels
    hr: float  # head radius (vertical)
    head_cx: float
    head_cy: float
    shoulder: float  # y of the shoulders
    hip: float
    knee: float
    ankle: float
    shoe_h: float
    tw: float  # torso half width at the shoulders
    leg_r: float
    arm_r: float
    arm_len: float

    @property
    def torso_len(self) -> float:
        """Shoulder-to-hip length."""
        return self.hip - self.shoulder


def _body(ident: Identity, side: bool, facing: float, cx: float, feet: float, ph: float) -> _Body:
    """Lay out head, torso, limbs for a figure ``ph`` pixels tall with feet at ``feet``."""
    hr = 0.068 * ph
    top = feet - ph
    hip = feet - ident.leg_ratio * ph
    shoe_h = 0.035 * ph
    ankle = feet - 0.9 * shoe_h
    shoulder = top + 2.1 * hr
    return _Body(
        cx=cx,
        feet=feet,
        ph=ph,
        hr=hr,
        head_cx=cx + (facing * 0.12 * hr if side else 0.0),
        head_cy=top + hr,
        shoulder=shoulder,
        hip=hip,
        knee=hip + 0.48 * (ankle - hip),
        ankle=ankle,
        shoe_h=shoe_h,
        tw=(0.11 if side else 0.155) * ph * ident.width,
        leg_r=0.06 * ph * ident.width**0.7,
        arm_r=0.042 * ph * ident.width**0.5,
        arm_len=(hip - shoulder) * 1.12,
    )


class _PersonPainter:
    """Draws one identity from one viewpoint, part by part, back to front.

    Visibility rules: ``logo`` and ``zip`` show from the front only; the ``split`` garment's
    halves swap image sides between front and back; a backpack is a big block from behind,
    straps from the front and a box behind the torso from the side; a shoulder bag hangs on
    the person's own side (image right from the front, image left from behind) and from the
    side only when that side faces the camera.
    """

    def __init__(
        self, cv: _Canvas, ident: Identity, view: str, rng: np.random.Generator, body: _Body
    ) -> None:
        self.cv, self.ident, self.view, self.rng, self.b = cv, ident, view, rng, body
        self.side = view in ("left", "right")
        self.facing = -1.0 if view == "left" else 1.0  # walking direction in the image (side)
        self.c = {
            "upper": _jitter(rng, UPPER_COLOURS[ident.upper]),
            "upper2": _jitter(rng, UPPER_COLOURS[ident.upper2]),
            "lower": _jitter(rng, LOWER_COLOURS[ident.lower]),
            "lower2": _jitter(rng, LOWER_COLOURS[ident.lower2]),
            "skin": _jitter(rng, SKIN_TONES[ident.skin], 0.03),
            "hair": _jitter(rng, HAIR_COLOURS[ident.hair], 0.03),
            "shoes": _jitter(rng, SHOE_COLOURS[ident.shoes], 0.03),
            "bag": _jitter(rng, ACCESSORY_COLOURS[ident.bag_colour]),
            "hat": _jitter(rng, ACCESSORY_COLOURS[ident.hat or "black"]),
        }

    def image_side(self, person_side: str) -> float | None:
        """Image direction (-1 left, +1 right, 0 centre) of the person's own side; None: hidden."""
        if self.view == "front":
            return 1.0 if person_side == "left" else -1.0
        if self.view == "back":
            return -1.0 if person_side == "left" else 1.0
        return 0.0 if person_side == self.view else None

    def draw(self) -> None:
        """The whole figure, back to front."""
        arms = self.arm_poses()
        self.legs()
        if self.ident.bag == "backpack" and self.side:
            self.backpack()
        if self.side:
            self.arm(arms[0])  # the far arm, behind the torso
        self.torso()
        if self.ident.bag == "backpack" and not self.side:
            self.backpack()
        for arm in arms[1:] if self.side else arms:
            self.arm(arm)
        if self.ident.bag in ("left", "right"):
            self.shoulder_bag()
        self.head()

    def legs(self) -> None:
        """Legs in the lower garment (or skin under shorts/skirt), shoes, and the skirt."""
        cv, b, c, style = self.cv, self.b, self.c, self.ident.lower_style
        if self.side:  # walking stride; the far leg is darker
            stride = self.rng.uniform(0.0, 0.1) * b.ph * self.rng.choice([-1.0, 1.0])
            legs = [(b.cx, b.cx - stride, 0.78), (b.cx, b.cx + stride, 1.0)]
        else:
            spread = self.rng.uniform(-0.01, 0.035) * b.ph
            off = b.tw * 0.95 - b.leg_r
            legs = [(b.cx - off, b.cx - off - spread, 1.0), (b.cx + off, b.cx + off + spread, 1.0)]
        for hip_x, ankle_x, shade in legs:
            cov = cv.capsule(hip_x, b.hip - b.leg_r * 0.5, ankle_x, b.ankle, b.leg_r)
            cv.paint(cov, (c["skin"] if style == "skirt" else c["lower"]) * shade)
            if style == "shorts":
                cv.paint(cov * (cv.y > b.knee), c["skin"] * shade)
            elif style == "tracksuit":  # a stripe down the outer seam
                out = 0.0 if self.side else np.sign(ankle_x - b.cx) * b.leg_r * 0.6
                seam = cv.capsule(
                    hip_x + out, b.hip, ankle_x + out, b.ankle - b.shoe_h, b.leg_r * 0.3
                )
                cv.paint(seam, c["lower2"])
            shoe_x = ankle_x + (self.facing * b.leg_r * 0.6 if self.side else 0.0)
            shoe_rx = b.leg_r * (1.7 if self.side else 1.15)
            shoe = cv.ellipse(shoe_x, b.feet - b.shoe_h * 0.55, shoe_rx, b.shoe_h * 0.65)
            cv.paint(shoe, c["shoes"] * shade)
        if style == "skirt":
            cv.paint(
                cv.trapezoid(b.cx, b.hip - 0.02 * b.ph, b.knee, b.tw * 0.9, b.tw * 1.25), c["lower"]
            )

    def arm_poses(self) -> list[tuple[float, float, float, float, float]]:
        """(shoulder x, y, hand x, y, shade) per arm; side views list the far arm first."""
        b, rng = self.b, self.rng
        y0 = b.shoulder + b.arm_r
        if self.side:
            swings = rng.uniform(-0.35, 0.35, size=2)
            return [
                (b.cx, y0, b.cx + np.sin(a) * b.arm_len, y0 + np.cos(a) * b.arm_len, shade)
                for a, shade in zip(swings, (0.78, 1.0), strict=True)
            ]
        poses = []
        for s in (-1.0, 1.0):
            x0 = b.cx + s * (b.tw + b.arm_r * 0.4)
            x1 = x0 + s * rng.uniform(0.0, 0.05) * b.ph
            poses.append((x0, y0, x1, y0 + b.arm_len * rng.uniform(0.95, 1.0), 1.0))
        return poses

    def arm(self, pose: tuple[float, float, float, float, float]) -> None:
        """A sleeve (full length or to the elbow) and a hand."""
        cv, b, c = self.cv, self.b, self.c
        x0, y0, x1, y1, shade = pose
        cv.paint(cv.capsule(x0, y0, x1, y1, b.arm_r), c["upper"] * shade)
        if not self.ident.long_sleeves:  # bare forearm from the elbow down
            ex, ey = x0 + 0.45 * (x1 - x0), y0 + 0.45 * (y1 - y0)
            cv.paint(cv.capsule(ex, ey, x1, y1, b.arm_r * 0.85), c["skin"] * shade)
        cv.paint(
            cv.ellipse(x1, y1 + b.arm_r * 0.3, b.arm_r * 1.05, b.arm_r * 1.2), c["skin"] * shade
        )

    def torso(self) -> None:
        """The upper garment with its pattern (some patterns show from some views only)."""
        cv, b, ident = self.cv, self.b, self.ident
        torso = cv.trapezoid(b.cx, b.shoulder - 0.01 * b.ph, b.hip + 0.02 * b.ph, b.tw, b.tw * 0.9)
        cv.paint(torso, self.c["upper"])
        rows = ((cv.y - b.shoulder) % (b.torso_len / ident.stripes)) < 0.5 * (
            b.torso_len / ident.stripes
        )
        period_x = 2 * b.tw / max(2, ident.stripes - 1)
        cols = ((cv.x - b.cx + b.tw) % period_x) < 0.5 * period_x
        mask: np.ndarray | None = None
        if ident.pattern == "hstripes":
            mask = rows
        elif ident.pattern == "vstripes":
            mask = cols
        elif ident.pattern == "checks":
            mask = rows ^ cols
        elif ident.pattern == "logo" and self.view == "front":
            y = b.shoulder + 0.3 * b.torso_len
            mask = cv.rect(b.cx - 0.35 * b.tw, b.cx + 0.35 * b.tw, y - 0.3 * b.tw, y + 0.3 * b.tw)
        elif ident.pattern == "zip" and self.view == "front":  # open jacket over a shirt
            mask = np.abs(cv.x - b.cx) < 0.22 * b.tw
        elif ident.pattern == "split":  # the person's left half is upper2
            where = self.image_side("left")
            if where is not None:
                mask = (cv.x - b.cx) * where > 0 if where else np.ones_like(cv.x, dtype=bool)
        if mask is not None:
            cv.paint(torso * mask, self.c["upper2"])

    def backpack(self) -> None:
        """From behind: a block with a pocket; from the front: straps; from the side: a box."""
        cv, b, bag = self.cv, self.b, self.c["bag"]
        if self.view == "back":
            y0, y1 = b.shoulder + 0.04 * b.ph, b.shoulder + 0.8 * b.torso_len
            cv.paint(cv.rect(b.cx - 0.75 * b.tw, b.cx + 0.75 * b.tw, y0, y1), bag)
            pocket = cv.rect(b.cx - 0.5 * b.tw, b.cx + 0.5 * b.tw, y1 - 0.3 * (y1 - y0), y1 - 1)
            cv.paint(pocket, bag * 0.7)
        elif self.view == "front":
            for s in (-1.0, 1.0):
                x = b.cx + s * 0.55 * b.tw
                y1 = b.shoulder + 0.55 * b.torso_len
                cv.paint(cv.rect(x - 0.1 * b.tw, x + 0.1 * b.tw, b.shoulder, y1), bag)
        else:
            x_in = b.cx - self.facing * b.tw * 0.7
            x_out = b.cx - self.facing * (b.tw + 0.11 * b.ph)
            y0, y1 = b.shoulder + 0.02 * b.ph, b.shoulder + 0.75 * b.torso_len
            cv.paint(cv.rect(min(x_in, x_out), max(x_in, x_out), y0, y1), bag)

    def shoulder_bag(self) -> None:
        """A bag at the hip on the person's own side, its strap across the chest or back."""
        where = self.image_side(self.ident.bag)
        if where is None:
            return
        cv, b, bag = self.cv, self.b, self.c["bag"]
        size = 0.12 * b.ph
        bx = b.cx + where * (b.tw + 2.0 * b.arm_r + 0.3 * size)
        by = b.hip - 0.03 * b.ph
        strap_x = b.cx - where * b.tw * 0.7
        strap = cv.capsule(strap_x, b.shoulder, bx, by - 0.5 * size, max(0.012 * b.ph, 0.7))
        cv.paint(strap, bag * 0.85)
        cv.paint(cv.rect(bx - 0.5 * size, bx + 0.5 * size, by - 0.5 * size, by + 0.5 * size), bag)

    def head(self) -> None:
        """Face, hair (style and view dependent) and an optional cap."""
        cv, b, c, ident, view = self.cv, self.b, self.c, self.ident, self.view
        x, y, hr = b.head_cx, b.head_cy, b.hr
        head = cv.ellipse(x, y, 0.8 * hr, hr)
        cv.paint(head, c["skin"])
        if ident.hair_style == "long":
            bottom = b.shoulder + 0.3 * b.torso_len
            if view == "back":
                cv.paint(cv.rect(x - 0.8 * hr, x + 0.8 * hr, y, bottom), c["hair"])
            elif view == "front":
                for s in (-1.0, 1.0):
                    sx, y1 = x + s * 0.75 * hr, b.shoulder + 0.1 * b.torso_len
                    cv.paint(cv.rect(sx - 0.22 * hr, sx + 0.22 * hr, y - 0.3 * hr, y1), c["hair"])
            else:
                bx = x - self.facing * 0.55 * hr
                cv.paint(cv.rect(bx - 0.35 * hr, bx + 0.35 * hr, y, bottom), c["hair"])
        if ident.hair_style != "bald" or view == "back":
            if view == "front":
                region = cv.y < y - 0.3 * hr
            elif view == "back":
                region = cv.y < y + (0.65 if ident.hair_style != "bald" else -0.5) * hr
            else:
                region = (cv.y < y - 0.3 * hr) | ((cv.x - x) * self.facing < -0.15 * hr)
            cv.paint(head * region, c["hair"])
        if ident.hat is not None:
            cv.paint(head * (cv.y < y - 0.35 * hr), c["hat"])
            brim_x = x + (self.facing * 0.5 * hr if self.side else 0.0)
            brim_w = (1.05 if self.side else 0.85) * hr
            brim = cv.rect(brim_x - brim_w, brim_x + brim_w, y - 0.45 * hr, y - 0.3 * hr)
            cv.paint(brim, c["hat"] * 0.85)


def _draw_occluder(cv: _Canvas, rng: np.random.Generator, height: int, width: int) -> None:
    """Something between camera and person: a car/bench at the bottom, a pillar, a passer-by."""
    colour = (rng.uniform(0.1, 0.8) + rng.normal(0.0, 0.12, size=3)).clip(0, 1).astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:
        y0 = height * rng.uniform(0.6, 0.82)
        cov = cv.rect(-5, width + 5, y0, height + 5)
        cv.paint(cov, colour)
        cv.paint(cov * (cv.y < y0 + 3), colour * 0.6)
    elif kind == 1:
        w = width * rng.uniform(0.18, 0.38)
        x0 = -5.0 if rng.random() < 0.5 else width - w
        cv.paint(cv.rect(x0, x0 + w + 5, -5, height + 5), colour)
    else:
        ox = width * (rng.uniform(-0.1, 0.15) if rng.random() < 0.5 else rng.uniform(0.85, 1.1))
        cv.paint(cv.ellipse(ox, height * rng.uniform(0.4, 0.7), width * 0.28, height * 0.4), colour)


def render_image(
    rng: np.random.Generator,
    ident: Identity,
    cam: Camera,
    height: int,
    width: int,
    *,
    distractor: bool = False,
) -> Image.Image:
    """Draw one shot of ``ident`` by ``cam``: scene crop, person, occluder, camera response.

    A ``distractor`` is a bad detection: the person badly framed (half out of the box or cut).
    """
    oy = int(rng.integers(0, 2 * _BG_MARGIN + 1))
    ox = int(rng.integers(0, cam.background.shape[1] - width + 1))
    bg = cam.background[oy : oy + height, ox : ox + width] * rng.uniform(0.9, 1.1)
    cv = _Canvas(np.ascontiguousarray(bg, dtype=np.float32))
    view = VIEWS[int(rng.choice(len(VIEWS), p=cam.views))]
    ph = height * cam.scale * ident.height * rng.uniform(0.96, 1.04)
    feet = height * 0.975 + rng.normal(0.0, cam.jitter)
    cx = width / 2 + rng.normal(0.0, cam.jitter)
    if distractor:
        if rng.random() < 0.5:
            cx += rng.choice([-1.0, 1.0]) * width * rng.uniform(0.35, 0.55)
        else:
            ph *= rng.uniform(1.3, 1.7)
            feet += ph * rng.uniform(0.2, 0.4)
    side, facing = view in ("left", "right"), -1.0 if view == "left" else 1.0
    body = _body(ident, side, facing, cx, feet, ph)
    _PersonPainter(cv, ident, view, rng, body).draw()
    if rng.random() < cam.occlusion:
        _draw_occluder(cv, rng, height, width)
    return _camera_response(cv, cam, rng)


def _camera_response(cv: _Canvas, cam: Camera, rng: np.random.Generator) -> Image.Image:
    """What the camera makes of the scene: light ramp, exposure, colour cast, saturation,
    gamma, sensor noise, low resolution and blur."""
    img = cv.img
    height, width = img.shape[:2]
    if cam.gradient > 0:  # light falling off across the scene, in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * (cv.x / width - 0.5) + np.sin(angle) * (cv.y / height - 0.5)
        img *= (1.0 + cam.gradient * ramp)[..., None]
    img *= cam.cast * (cam.gain * rng.uniform(0.93, 1.07))
    grey = img.mean(axis=-1, keepdims=True)
    img = grey + cam.saturation * (img - grey)
    img = np.clip(img, 0.0, 1.0) ** cam.gamma
    if cam.noise > 0:
        img = img + rng.normal(0.0, cam.noise, size=img.shape).astype(np.float32)
    out = Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    if cam.resolution < 1.0:
        small = (max(8, round(width * cam.resolution)), max(8, round(height * cam.resolution)))
        out = out.resize(small, Image.Resampling.BILINEAR).resize(
            (width, height), Image.Resampling.BILINEAR
        )
    if cam.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(cam.blur))
    return out


# --------------------------------------------------------------------------------------------
# Planning a domain: who is shot by which camera, in which split.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shot:
    """One image to draw: where it goes (relative to the root) and whom it shows."""

    relpath: str
    pid: int  # 0 = distractor
    cam: int  # 0-based
    frame: int  # unique within its domain; also keys the image's random stream
    ident: Identity | None  # None: a distractor, someone new drawn from the domain's style


@dataclass(frozen=True)
class _Job:
    """The shots of one domain (or of the public set) and what drawing them needs."""

    code: int  # random-stream code
    cameras: tuple[Camera, ...]
    style: DomainStyle
    shots: list[_Shot]


@dataclass(frozen=True)
class DomainWorld:
    """Everything persistent about a domain: its style, cameras and identities by pid."""

    code: int
    style: DomainStyle
    cameras: tuple[Camera, ...]
    identities: dict[int, Identity]


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent random stream for (seed, keys...): no global state, stable per key."""
    return np.random.default_rng([seed, *keys])


def build_domain(spec: DomainSpec, seed: int, preset: Preset = DEFAULT) -> DomainWorld:
    """Draw a domain's style, cameras and identities (pids ``1..train_ids+test_ids``)."""
    code = _POOL_CODE if spec.name == POOL_DOMAIN else ALL_DOMAINS.index(spec.name)
    rng = _rng(seed, code, 0)
    style = sample_domain_style(rng, spec.palette_concentration)
    scene = sample_scene(rng)
    cameras = tuple(
        sample_camera(rng, scene, preset.height, preset.width, preset.cameras)
        for _ in range(spec.num_cams)
    )
    # the pool never holds a client's person (see POOL); client domains exclude nothing
    exclude = client_identity_keys(seed) if spec.name == POOL_DOMAIN else frozenset()
    people = sample_identities(rng, style, spec.train_ids + spec.test_ids, exclude)
    return DomainWorld(code, style, cameras, {pid: p for pid, p in enumerate(people, start=1)})


@functools.lru_cache(maxsize=4)
def client_identity_keys(seed: int) -> frozenset[tuple]:
    """The discrete attribute keys of every client identity of :data:`CLIENT_PRESETS` drawn
    with ``seed`` (what the pool must avoid; about 2 s, cached)."""
    keys: set[tuple] = set()
    for name in CLIENT_PRESETS:
        preset = PRESETS[name]
        for spec in preset.domains:
            keys.update(i.key() for i in build_domain(spec, seed, preset).identities.values())
    return frozenset(keys)


def domain_identities(
    domain: str, preset: str | Preset = "tiny", seed: int = 0
) -> dict[int, Identity]:
    """The identities (by pid) that :func:`generate` draws for ``domain``; for inspection."""
    p = get_preset(preset)
    spec = next((d for d in p.domains if d.name == domain), None)
    if spec is None:
        raise ConfigError(f"preset {p.name!r} has no domain {domain!r}")
    return build_domain(spec, seed, p).identities


def _market_name(pid: int, cam: int, frame: int) -> str:
    """``PPPP_cCs1_FFFFFF_01.jpg`` with a 1-based camera."""
    return f"{pid:04d}_c{cam + 1}s1_{frame:06d}_01.jpg"


def _plan_domain(spec: DomainSpec, world: DomainWorld, seed: int) -> _Job:
    """Lay out train, query and gallery shots; every query gets a cross-camera gallery match."""
    rng = _rng(seed, world.code, 1)
    shots: list[_Shot] = []

    def add(split: str, pid: int, cam: int) -> None:
        frame = len(shots)
        rel = f"{spec.name}/{SPLIT_DIRS[split]}/{_market_name(pid, cam, frame)}"
        shots.append(_Shot(rel, pid, cam, frame, world.identities.get(pid)))

    def cams_of(low: int) -> np.ndarray:
        k = int(rng.integers(spec.cams_per_id[0], spec.cams_per_id[1] + 1))
        k = min(max(k, low), spec.num_cams)
        return np.sort(rng.choice(spec.num_cams, size=k, replace=False))

    for pid in range(1, spec.train_ids + 1):
        cams = cams_of(1)
        n = int(rng.integers(spec.train_imgs_per_id[0], spec.train_imgs_per_id[1] + 1))
        order = list(cams[:n]) + list(rng.choice(cams, size=max(0, n - len(cams))))
        for cam in sorted(int(c) for c in order):
            add("train", pid, cam)
    for pid in range(spec.train_ids + 1, spec.train_ids + spec.test_ids + 1):
        cams = cams_of(2)
        n_query = min(spec.query_cams, len(cams) - 1)
        query_cams = set(rng.choice(cams, size=n_query, replace=False).tolist())
        for cam in (int(c) for c in cams):
            if cam in query_cams:
                add("query", pid, cam)
            n = int(rng.integers(spec.gallery_per_cam[0], spec.gallery_per_cam[1] + 1))
            for _ in range(n if cam in query_cams else max(1, n)):
                add("gallery", pid, cam)
    for _ in range(spec.distractors):
        add("gallery", 0, int(rng.integers(spec.num_cams)))
    return _Job(world.code, world.cameras, world.style, shots)


def _plan_public(preset: Preset, seed: int) -> _Job:
    """The server's unlabeled set: its own people and cameras, shuffled, flat names."""
    rng = _rng(seed, _PUBLIC_CODE, 0)
    style = sample_domain_style(rng, 1.5)
    scene = sample_scene(rng)
    cams = tuple(
        sample_camera(rng, scene, preset.height, preset.width, preset.cameras)
        for _ in range(preset.public_cams)
    )
    people = sample_identities(rng, style, preset.public_ids)
    lo, hi = preset.public_imgs_per_id
    pairs = [
        (ident, int(rng.integers(preset.public_cams)))
        for ident in people
        for _ in range(int(rng.integers(lo, hi + 1)))
    ]
    order = rng.permutation(len(pairs))
    shots = [
        _Shot(f"{PUBLIC_DIR}/{i:06d}.jpg", -1, pairs[j][1], i, pairs[j][0])
        for i, j in enumerate(order)
    ]
    return _Job(_PUBLIC_CODE, cams, style, shots)


# --------------------------------------------------------------------------------------------
# Writing: manifest, atomic swap, progress.
# --------------------------------------------------------------------------------------------


def _preset_digest(preset: Preset) -> str:
    """A short hash of the preset's numbers, so an edited preset is never mistaken for old."""
    text = json.dumps(dataclasses.asdict(preset), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _expected_header(preset: Preset, seed: int) -> dict:
    """The manifest fields that must match for an existing set to be reused."""
    return {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "preset": preset.name,
        "preset_digest": _preset_digest(preset),
        "seed": seed,
        "image_size": [preset.height, preset.width],
    }


def _read_manifest(root: Path) -> dict | None:
    """Our manifest in ``root``, or None if absent, unreadable or someone else's."""
    try:
        data = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR else None


def _count_images(folder: Path) -> int:
    """Number of ``.jpg`` files directly in ``folder`` (0 if it is missing)."""
    try:
        with os.scandir(folder) as it:
            return sum(1 for e in it if e.name.endswith(".jpg"))
    except OSError:
        return 0


def _is_complete(root: Path, manifest: dict) -> bool:
    """Whether every folder the manifest lists holds exactly the recorded number of images."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    return all(_count_images(root / rel) == n for rel, n in files.items())


def _matches(root: Path, preset: Preset, seed: int) -> bool:
    """An existing, complete set for this preset, seed and generator version."""
    manifest = _read_manifest(root)
    if manifest is None:
        return False
    header = _expected_header(preset, seed)
    return all(manifest.get(k) == v for k, v in header.items()) and _is_complete(root, manifest)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_siblings(root: Path) -> None:
    """Delete our own leftovers (``root.partial-PID``/``root.trash-PID``) of dead processes."""
    pattern = re.compile(re.escape(root.name) + r"\.(partial|trash)-(\d+)$")
    if not root.parent.is_dir():
        return
    for sib in root.parent.iterdir():
        m = pattern.match(sib.name)
        if m and sib.is_dir() and not _pid_alive(int(m.group(2))):
            shutil.rmtree(sib, ignore_errors=True)


@contextlib.contextmanager
def _progress(total: int, enabled: bool, label: str) -> Iterator:
    """A rich progress bar (or a no-op advance function when disabled)."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


def _write_set(target: Path, preset: Preset, seed: int, progress: bool) -> dict:
    """Draw every image of the preset into ``target`` (a fresh folder); return the manifest."""
    jobs: list[_Job] = []
    domains: dict[str, dict] = {}
    for spec in preset.domains:
        job = _plan_domain(spec, build_domain(spec, seed, preset), seed)
        jobs.append(job)
        domains[spec.name] = {
            split: sum(f"/{folder}/" in x.relpath for x in job.shots)
            for split, folder in SPLIT_DIRS.items()
        }
        domains[spec.name].update(
            train_ids=spec.train_ids,
            test_ids=spec.test_ids,
            cameras=spec.num_cams,
            distractors=sum(x.pid == 0 for x in job.shots),
        )
    jobs.append(_plan_public(preset, seed))

    files: dict[str, int] = {}
    for job in jobs:
        for shot in job.shots:
            folder = shot.relpath.rsplit("/", 1)[0]
            files[folder] = files.get(folder, 0) + 1
    for folder in files:
        (target / folder).mkdir(parents=True)
    total = sum(files.values())
    with _progress(total, progress, f"synthetic {preset.name}") as advance:
        for job in jobs:
            for shot in job.shots:
                rng = _rng(seed, job.code, 2, shot.frame)
                ident = shot.ident or sample_identity(rng, job.style)
                cam = job.cameras[shot.cam]
                img = render_image(
                    rng, ident, cam, preset.height, preset.width, distractor=shot.pid == 0
                )
                img.save(target / shot.relpath, format="JPEG", quality=JPEG_QUALITY)
                advance()
    return {
        **_expected_header(preset, seed),
        "domains": domains,
        "public": files.get(PUBLIC_DIR, 0),
        "total_images": total,
        "files": dict(sorted(files.items())),
    }


def generate(
    root: str | Path, preset: str | Preset = "default", seed: int = 0, *, progress: bool = True
) -> Path:
    """Write the synthetic benchmark under ``root`` (or reuse a matching one); return ``root``.

    Idempotent: if ``root/manifest.json`` records the same preset, seed and generator version
    and every folder is complete, nothing is written. Otherwise the set is drawn into a sibling
    ``root.partial-PID`` and swapped in atomically at the end, so ``root`` is never half
    written; an older set of ours is removed only after the new one is in place.

    Args:
        root: output folder; one sub-folder per domain plus ``public/``.
        preset: ``"tiny"``, ``"default"``, ``"large"`` or a :class:`Preset`.
        seed: the random seed; same seed and preset give byte-identical files.
        progress: show a rich progress bar.

    Raises:
        DatasetError: ``root`` is a file, or a non-empty folder that we did not write.
        ConfigError: an unknown preset name.
    """
    root = Path(root).expanduser().absolute()
    p = get_preset(preset)
    if root.exists() and not root.is_dir():
        raise DatasetError(f"synthetic root is a file, not a folder: {root}")
    if root.is_dir():
        if _matches(root, p, seed):
            return root
        if any(root.iterdir()) and _read_manifest(root) is None:
            raise DatasetError(
                f"refusing to overwrite {root}: it is not empty and holds no synthetic "
                f"{MANIFEST}; choose another --root"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(root)
    partial = root.with_name(f"{root.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    try:
        partial.mkdir()
        manifest = _write_set(partial, p, seed, progress)
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if root.is_dir() and _matches(root, p, seed):  # someone else finished first
            shutil.rmtree(partial)
            return root
        _swap_in(partial, root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return root


def _swap_in(new: Path, root: Path) -> None:
    """Put the complete folder ``new`` at ``root``; an old set there goes only once it has.

    Two renames within one folder (atomic on one file system): old -> trash, new -> root;
    if the second fails, the old set is renamed back. The trash is deleted last.
    """
    trash = root.with_name(f"{root.name}.trash-{os.getpid()}")
    had_old = root.is_dir() and any(root.iterdir())
    if had_old:
        os.rename(root, trash)
    elif root.is_dir():
        root.rmdir()  # an empty folder we were pointed at
    try:
        os.rename(new, root)
    except BaseException:
        if had_old and not root.exists():
            os.rename(trash, root)
        raise
    if had_old:
        shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedreid.data.synthetic --root DIR --preset tiny --seed 0 [--quiet]``."""
    parser = argparse.ArgumentParser(
        prog="python -m fedreid.data.synthetic",
        description="Generate the synthetic multi-domain person-ReID benchmark.",
    )
    parser.add_argument("--root", required=True, type=Path, help="output folder")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        root = generate(args.root, args.preset, args.seed, progress=not args.quiet)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        manifest = json.loads((root / MANIFEST).read_text())
        print(f"{'domain':<14}{'train':>7}{'query':>7}{'gallery':>9}{'ids':>6}{'cams':>6}")
        for name, d in manifest["domains"].items():
            print(
                f"{name:<14}{d['train']:>7}{d['query']:>7}{d['gallery']:>9}"
                f"{d['train_ids']:>6}{d['cameras']:>6}"
            )
        print(f"public: {manifest['public']} images; total {manifest['total_images']}")
        print(f"{root} ready in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
