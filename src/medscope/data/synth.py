"""The built-in dataset: procedurally generated micrographs that imitate direct mycological
examination, so the whole pipeline runs anywhere without downloading data.

Five classes differ only in morphology; stain colour, organism density, focus, noise and
artifacts (field-stop dark borders, empty areas, debris, fibres, noisy regions) are drawn from
the same distributions for every class, so colour or brightness alone does not tell them apart.
Each slide is drawn from its own RNG seeded by (seed, class, index): deterministic and
independent of how many slides are made.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from medscope.parallel import process_map
from medscope.run import atomic_write_text

CLASSES = ("septate_hyphae", "budding_yeast", "conidia_chains", "spherules", "pseudohyphae")

# Stains of direct examination (lactophenol cotton blue, PAS/fuchsin, iodine, calcofluor-like),
# shared by all classes.
STAINS = np.array([[40, 60, 160], [150, 40, 120], [120, 80, 40], [60, 110, 120],
                   [90, 50, 150]], dtype=np.float32)

# Organism size relative to a 1000 px slide: large enough that a 500 px patch shown to a
# network at 96-128 px still resolves spores and cell walls, as real 500x500 DeFungi patches do.
S = 1.8

Draw = Callable[[ImageDraw.ImageDraw, ImageDraw.ImageDraw, np.random.Generator, tuple], None]


def make_slide(label: int, rng: np.random.Generator, size: int = 1000) -> np.ndarray:
    """One H x W x 3 uint8 micrograph of class ``label``."""
    body = Image.new("L", (size, size), 0)  # organism cytoplasm (translucent)
    wall = Image.new("L", (size, size), 0)  # cell walls and septa (darker)
    draw_body, draw_wall = ImageDraw.Draw(body), ImageDraw.Draw(wall)
    # Organisms cluster around a few centres, leaving empty background elsewhere.
    centres = rng.uniform(0.15, 0.85, size=(rng.integers(1, 4), 2)) * size
    spread = rng.uniform(0.2, 0.4) * size
    count = int(rng.integers(*_DENSITY[label]))
    for _ in range(count):
        c = centres[rng.integers(len(centres))]
        xy = tuple(np.clip(rng.normal(c, spread), 0, size - 1))
        _DRAWERS[label](draw_body, draw_wall, rng, xy)
    _debris(draw_body, draw_wall, rng, size)
    return _render(np.asarray(body), np.asarray(wall), rng, size)


def make_dataset(out: Path | str, per_class: int = 40, seed: int = 0, size: int = 1000,
                 progress: bool = True, workers: int | None = None) -> Path:
    """Write ``per_class`` slides per class as ``out/<class>/slide_XXXX.jpg``."""
    out = Path(out)
    for name in CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    jobs = [(out, label, i, seed, size) for label in range(len(CLASSES))
            for i in range(per_class)]
    for _ in tqdm(process_map(_write_slide, jobs, workers), total=len(jobs),
                  desc="synth slides", disable=not progress, unit="slide"):
        pass
    atomic_write_text(out / "synth.json", json.dumps(
        {"generator": "medscope.data.synth", "seed": seed, "per_class": per_class,
         "slide_size": size, "classes": list(CLASSES)}, indent=2))
    return out


def _write_slide(job) -> None:
    out, label, i, seed, size = job
    slide = make_slide(label, np.random.default_rng([seed, label, i]), size)
    Image.fromarray(slide).save(out / CLASSES[label] / f"slide_{i:04d}.jpg", quality=92)


# ---------------------------------------------------------------- morphologies


def _septate_hyphae(body, wall, rng, xy) -> None:
    """Long tubes of constant width with cross-walls (septa) and acute-angle branches."""
    width = rng.uniform(7, 12) * S
    _hypha(body, wall, rng, xy, rng.uniform(0, 2 * math.pi), width, int(rng.integers(8, 16)),
           depth=0)


def _hypha(body, wall, rng, xy, angle, width, steps, depth) -> None:
    x, y = xy
    seg = rng.uniform(22, 32) * S
    for step in range(steps):
        angle += rng.normal(0, 0.12)
        nx, ny = x + seg * math.cos(angle), y + seg * math.sin(angle)
        body.line([(x, y), (nx, ny)], fill=255, width=int(width))
        _tube_walls(wall, (x, y), (nx, ny), width)
        if step % 2 == 1:  # septum across the tube
            px, py = -math.sin(angle) * width / 2, math.cos(angle) * width / 2
            wall.line([(nx - px, ny - py), (nx + px, ny + py)], fill=255, width=3)
        if depth < 2 and rng.random() < 0.12:  # dichotomous branch at ~45 degrees
            side = rng.choice([-1, 1])
            _hypha(body, wall, rng, (nx, ny), angle + side * rng.uniform(0.6, 0.9),
                   width * 0.9, steps // 2, depth + 1)
        x, y = nx, ny


def _tube_walls(wall, a, b, width) -> None:
    ang = math.atan2(b[1] - a[1], b[0] - a[0])
    px, py = -math.sin(ang) * width / 2, math.cos(ang) * width / 2
    for s in (-1, 1):
        wall.line([(a[0] + s * px, a[1] + s * py), (b[0] + s * px, b[1] + s * py)], fill=255,
                  width=3)


def _budding_yeast(body, wall, rng, xy) -> None:
    """Small oval cells, often with a smaller daughter bud at one pole."""
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = np.asarray(xy) + rng.normal(0, 18 * S, 2)
        rx, ry = rng.uniform(9, 14) * S, rng.uniform(7, 11) * S
        _ellipse(body, wall, cx, cy, rx, ry)
        if rng.random() < 0.7:
            a = rng.uniform(0, 2 * math.pi)
            r = rng.uniform(0.4, 0.6)
            _ellipse(body, wall, cx + (rx + rx * r * 0.8) * math.cos(a),
                     cy + (ry + ry * r * 0.8) * math.sin(a), rx * r, ry * r)


def _conidia_chains(body, wall, rng, xy) -> None:
    """Chains of small round spores in gently curving rows."""
    x, y = xy
    angle = rng.uniform(0, 2 * math.pi)
    r = rng.uniform(4.5, 6.5) * S
    for _ in range(int(rng.integers(6, 15))):
        _ellipse(body, wall, x, y, r, r)
        angle += rng.normal(0, 0.18)
        x, y = x + 2.1 * r * math.cos(angle), y + 2.1 * r * math.sin(angle)


def _spherules(body, wall, rng, xy) -> None:
    """Large thick-walled spheres filled with small endospores."""
    cx, cy = xy
    r = rng.uniform(30, 55) * S
    body.ellipse([cx - r, cy - r, cx + r, cy + r], fill=110)
    wall.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=int(rng.integers(4, 7)))
    for _ in range(int(rng.integers(8, 25))):
        a, d = rng.uniform(0, 2 * math.pi), r * 0.75 * math.sqrt(rng.random())
        e = rng.uniform(2.5, 4.5) * S
        x, y = cx + d * math.cos(a), cy + d * math.sin(a)
        wall.ellipse([x - e, y - e, x + e, y + e], fill=200)


def _pseudohyphae(body, wall, rng, xy) -> None:
    """Chains of elongated cells pinched at each junction (no true septa), sometimes branching."""
    x, y = xy
    angle = rng.uniform(0, 2 * math.pi)
    length, thick = rng.uniform(20, 30) * S, rng.uniform(6, 9) * S
    for _ in range(int(rng.integers(4, 9))):
        angle += rng.normal(0, 0.3)
        cx, cy = x + length / 2 * math.cos(angle), y + length / 2 * math.sin(angle)
        _rotated_ellipse(body, wall, cx, cy, length / 2, thick / 2, angle)
        if rng.random() < 0.15:
            b = angle + rng.choice([-1, 1]) * rng.uniform(0.8, 1.3)
            _rotated_ellipse(body, wall, cx + length / 2 * math.cos(b),
                             cy + length / 2 * math.sin(b), length * 0.4, thick * 0.45, b)
        x, y = x + length * math.cos(angle), y + length * math.sin(angle)


def _ellipse(body, wall, cx, cy, rx, ry) -> None:
    body.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    wall.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=255, width=3)


def _rotated_ellipse(body, wall, cx, cy, a, b, angle, n: int = 20) -> None:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    xs = cx + a * np.cos(t) * math.cos(angle) - b * np.sin(t) * math.sin(angle)
    ys = cy + a * np.cos(t) * math.sin(angle) + b * np.sin(t) * math.cos(angle)
    pts = list(zip(xs.tolist(), ys.tolist(), strict=True))
    body.polygon(pts, fill=255)
    wall.polygon(pts, outline=255, width=3)


_DRAWERS: dict[int, Draw] = {0: _septate_hyphae, 1: _budding_yeast, 2: _conidia_chains,
                             3: _spherules, 4: _pseudohyphae}
# Organism counts per slide, chosen so every class covers a similar share of the slide.
_DENSITY = {0: (5, 10), 1: (25, 60), 2: (16, 40), 3: (8, 18), 4: (16, 40)}


# ---------------------------------------------------------------- artifacts and rendering


def _debris(body, wall, rng, size) -> None:
    """Dust, crystals and stray fibres: present on every slide, whatever the class."""
    for _ in range(int(rng.integers(5, 40))):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(1.5, 9)
        pts = [(x + r * rng.uniform(0.5, 1.3) * math.cos(a), y + r * rng.uniform(0.5, 1.3)
                * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7, endpoint=False)]
        wall.polygon(pts, fill=int(rng.integers(120, 256)))
    for _ in range(int(rng.integers(0, 4))):  # fibres: thin, long, unsegmented
        x, y = rng.uniform(0, size, 2)
        a = rng.uniform(0, 2 * math.pi)
        pts = [(x, y)]
        for _ in range(int(rng.integers(5, 20))):
            a += rng.normal(0, 0.1)
            x, y = x + 25 * math.cos(a), y + 25 * math.sin(a)
            pts.append((x, y))
        body.line(pts, fill=int(rng.integers(100, 200)), width=int(rng.integers(2, 4)))


def _render(body: np.ndarray, wall: np.ndarray, rng: np.random.Generator, size: int
            ) -> np.ndarray:
    stain = STAINS[rng.integers(len(STAINS))] * rng.uniform(0.8, 1.2, 3)
    background = np.clip(rng.normal(232, 10, 3), 195, 252).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Uneven illumination: a smooth gradient across the field.
    light = 1 + rng.uniform(-0.08, 0.08) * (xx - 0.5) + rng.uniform(-0.08, 0.08) * (yy - 0.5)
    alpha_body = (body * np.float32(rng.uniform(0.35, 0.6) / 255))[..., None]
    alpha_wall = (wall * np.float32(rng.uniform(0.65, 0.95) / 255))[..., None]
    stain = stain.astype(np.float32)
    img = background[None, None, :] * light[..., None]
    # Alpha compositing, in place: this runs on 3 M floats per slide, several times.
    img += (stain - img) * alpha_body
    img += (stain * np.float32(0.45) - img) * alpha_wall
    img = _field_stop(img, rng, size, xx, yy)
    pil = Image.fromarray(np.clip(img, 0, 255, out=img).astype(np.uint8))
    pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 2.0)))  # focus varies
    img = np.asarray(pil).astype(np.float32)
    img += rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(2, 7))
    if rng.random() < 0.1:  # a corrupted region: pure sensor noise over one quadrant
        q = size // 2
        qy, qx = rng.integers(0, 2, 2) * q
        img[qy:qy + q, qx:qx + q] = rng.uniform(0, 255, (q, q, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _field_stop(img, rng, size, xx, yy) -> np.ndarray:
    """Dark borders: the circular field stop of the microscope, or a straight cover-slip edge."""
    kind = rng.random()
    if kind < 0.35:
        cx, cy = rng.uniform(0.4, 0.6, 2)
        r = rng.uniform(0.55, 0.75)
        outside = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) > r
    elif kind < 0.6:
        edge = rng.uniform(0.1, 0.55)
        side = rng.integers(4)
        outside = [xx < edge, xx > 1 - edge, yy < edge, yy > 1 - edge][side]
    else:
        return img
    dark = rng.uniform(8, 30)
    img[outside] = dark
    return img
