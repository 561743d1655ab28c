"""``medscope audit``: what is wrong with a dataset before anyone trusts a figure trained on it.

- exact duplicates (content hash, as ``data info``) and near-duplicates (perceptual hash);
  groups that cross splits (a leak) or carry different labels (a conflict) come first;
- suspected label errors: confident learning (cleanlab) on out-of-fold probabilities of a
  ``medscope cv`` directory, or on a plain run's test-split predictions;
- outliers: images whose brightness, contrast, sharpness, size or mode differ strongly from
  the rest of their class;
- counts per class and split;
- source groups (a group column, ``patches.csv``, or ``group_pattern`` on the file names:
  DeFungi's micrograph) that span splits or folds, or whose images carry different labels.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medscope.data.info import content_hash
from medscope.data.io import BadImageError, array_to_image, open_image
from medscope.data.sources import DataSource, Sample, npz_array
from medscope.errors import MedscopeError
from medscope.run import CvDir, RunDir, open_run_csv

# pHash (DCT of a 32x32 grey image, 64 bits) survives resizing, re-encoding and mild colour or
# contrast changes, which average/difference hashes handle worse; it does not match flips or
# rotations as such. Two hashes per image, a pair is near when either is within the distance:
# the whole image with black padding filled (the black corners of rotated augmentations alone
# put unrelated blood cells at distance 2-6: 7.7k false pairs on blood-cells-4), and its
# central half (the same cell rotated by an augmentation). Checked by eye on DeFungi and
# blood-cells-4: pairs up to 6 were the same view; at 10 a quarter were unrelated (docs/audit.md).
PHASH_DISTANCE = 6
PADDING_LEVEL = 8  # grey level at or below which a pixel counts as padding when filled
# |robust z| (median/MAD, per class) above which a feature marks an outlier: 5 MADs is
# beyond anything a normal feature produces by chance in a class of 10k images.
OUTLIER_Z = 5.0
# Size or mode is odd only when the class is otherwise uniform in it (>= this share).
UNIFORM_SHARE = 0.95
STATS_SIDE = 128  # brightness, contrast and blur are measured at this side (comparable values)
FEATURES = ("brightness", "contrast", "blur")


@dataclass
class ImageStats:
    digest: str = ""
    phash: int = 0  # of the whole image, black padding filled
    phash_centre: int = 0  # of its central half (side / 2)
    width: int = 0
    height: int = 0
    mode: str = ""
    brightness: float = 0.0  # mean grey level, 0-255
    contrast: float = 0.0  # standard deviation of the grey level
    blur: float = 0.0  # variance of the Laplacian: low = blurred or empty
    bad: str | None = None  # why the file could not be read


@dataclass
class DuplicateGroup:
    kind: str  # 'exact' or 'near'
    members: list[int]  # sample indices
    max_distance: int  # largest pHash distance to the first member
    leak: bool = False  # members in more than one split
    conflict: bool = False  # members with different labels


@dataclass
class LabelIssue:
    index: int  # sample index
    given: str
    suggested: str
    self_confidence: float  # probability of the given label
    p_suggested: float


@dataclass
class Outlier:
    index: int
    reasons: list[str]


@dataclass
class Audit:
    source: DataSource
    splits: list[str]  # per sample: 'train'/'val'/'test', 'fold k', or '' when unsplit
    split_origin: str  # where the splits came from, in words
    stats: list[ImageStats]
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    label_issues: list[LabelIssue] = field(default_factory=list)
    label_origin: str = ""  # what the label issues were computed from, or why there are none
    outliers: list[Outlier] = field(default_factory=list)
    phash_distance: int = PHASH_DISTANCE
    group_pattern: str | None = None
    source_groups: int = 0  # groups the pattern names
    # Those of them that span splits or folds, or carry different labels (kind 'source').
    source_issues: list[DuplicateGroup] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [self.source.sample_id(s) for s in self.source.samples]

    def label(self, i: int) -> str:
        return self.source.label_name(self.source.samples[i])

    def counts(self) -> dict[str, dict[str, int]]:
        """class -> split -> images (split '' when the data is unsplit; folds not counted)."""
        out = {c: {} for c in self.source.classes}
        for i, split in enumerate(map(_split_part, self.splits)):
            for c in self.label(i).split("|") if self.source.multilabel else [self.label(i)]:
                if c in out:
                    out[c][split] = out[c].get(split, 0) + 1
        return out


def progress_bar(it, total: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(it, total=total, disable=not show, desc="audit", unit="img", leave=False)


# ---------------------------------------------------------------- per image


def image_stats(sample: Sample) -> ImageStats:
    """The figures of one image (runs in a worker process)."""
    try:
        if sample.in_array:
            arr = np.asarray(npz_array(sample.path, f"{sample.split}_images")[sample.index])
            digest, img = content_hash(arr.tobytes()), array_to_image(arr)
        else:
            digest, img = content_hash(sample.path.read_bytes()), open_image(sample.path)
    except BadImageError as exc:
        return ImageStats(bad=str(exc))
    except OSError as exc:
        return ImageStats(bad=f"cannot read ({exc.strerror or exc})")
    grey = img.convert("L")
    w, h = grey.size
    centre = grey.crop((w // 4, h // 4, w // 4 + max(w // 2, 1), h // 4 + max(h // 2, 1)))
    small = np.asarray(grey.resize((STATS_SIDE, STATS_SIDE), Image.BILINEAR), dtype=np.float64)
    return ImageStats(
        digest=digest, phash=_phash(_fill_padding(grey)), phash_centre=_phash(centre),
        width=img.width,
        height=img.height, mode=img.mode, brightness=float(small.mean()),
        contrast=float(small.std()), blur=float(_laplacian(small).var()))


def _fill_padding(grey: Image.Image) -> Image.Image:
    """Near-black pixels (rotation corners, letterboxing) set to the median of the rest, unless
    they are most of the image (then the image is dark, not padded)."""
    arr = np.asarray(grey)
    pad = arr <= PADDING_LEVEL
    if not 0 < pad.mean() < 0.5:
        return grey
    filled = arr.copy()
    filled[pad] = int(np.median(arr[~pad]))
    return Image.fromarray(filled)


def _phash(img: Image.Image) -> int:
    import imagehash

    return int(str(imagehash.phash(img)), 16)


def _laplacian(a: np.ndarray) -> np.ndarray:
    return a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4 * a[1:-1, 1:-1]


# ---------------------------------------------------------------- splits


def sample_splits(source: DataSource, run: Path | None) -> tuple[list[str], str]:
    """Each sample's split: a run's splits.csv, else the data's own; with a CV directory the
    fold is added ('train · fold 3'), since a copy in another fold leaks into that fold's model.
    """
    ids = [source.sample_id(s) for s in source.samples]
    given = source.given_splits()
    splits = [""] * len(ids) if given is None else [str(s) for s in given]
    origin = "none: the data comes unsplit" if given is None else "as given by the data"
    if run is None:
        return splits, origin
    if not run.is_dir():
        raise MedscopeError(f"{run}: run or CV directory not found")
    if CvDir(run).oof_predictions.is_file():
        folds = _column(CvDir(run).oof_predictions, "fold", ids, run)
        merged = [" · ".join(x for x in (s, f"fold {f}" if f else "") if x)
                  for s, f in zip(splits, folds, strict=True)]
        return merged, f"{origin}, and the folds of {run.name}"
    if RunDir(run).splits.is_file():
        return _column(RunDir(run).splits, "split", ids, run), f"{run.name}/splits.csv"
    raise MedscopeError(f"{run}: neither oof_predictions.csv (a `medscope cv` directory) nor "
                        "splits.csv (a run directory)")


def _column(path: Path, column: str, ids: list[str], run: Path) -> list[str]:
    """``column`` of a CSV keyed by path, per sample id ('' for ids it does not list)."""
    by_id = {row["path"]: row[column] for row in read_rows(path, ("path", column))}
    if by_id and not set(ids) & set(by_id):
        raise MedscopeError(f"{run}: none of its paths are in the data (was it made from "
                            "other data?)")
    return [by_id.get(i, "") for i in ids]


def read_rows(path: Path, needed: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV this package wrote, refused with one line if a needed column is missing."""
    with open_run_csv(path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise MedscopeError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


# ---------------------------------------------------------------- duplicates


def find_duplicates(audit: Audit) -> list[DuplicateGroup]:
    """Exact groups (same content hash) and near groups (pHash within the distance, linked
    transitively) that hold more than one distinct content; leaks and conflicts first."""
    good = [i for i, s in enumerate(audit.stats) if s.bad is None]
    by_digest: dict[str, list[int]] = {}
    for i in good:
        by_digest.setdefault(audit.stats[i].digest, []).append(i)
    groups = [DuplicateGroup("exact", m, 0) for m in by_digest.values() if len(m) > 1]
    hashes = np.array([audit.stats[i].phash for i in good], dtype=np.uint64)
    centres = np.array([audit.stats[i].phash_centre for i in good], dtype=np.uint64)
    for component in near_components(hashes, audit.phash_distance, centres):
        members = [good[j] for j in component]
        if len({audit.stats[i].digest for i in members}) > 1:
            first = hashes[component[0]]
            dist = int(np.bitwise_count(hashes[component] ^ first).max())
            groups.append(DuplicateGroup("near", members, dist))
    groups = [_flagged(audit, g) for g in groups]
    return sorted(groups, key=lambda g: (not g.leak, not g.conflict, g.kind != "exact",
                                         audit.source.sample_id(
                                             audit.source.samples[g.members[0]])))


def find_source_issues(audit: Audit) -> tuple[int, list[DuplicateGroup]]:
    """How many source groups the data has, and those that span splits or folds (a leak: the
    model is tested on other views of what it trained on) or mix labels; leaks first, then
    the most images."""
    members: dict[str, list[int]] = {}
    for i, s in enumerate(audit.source.samples):
        if s.group is not None:
            members.setdefault(s.group, []).append(i)
    issues = [_flagged(audit, DuplicateGroup("source", m, 0)) for m in members.values()]
    issues = [g for g in issues if g.leak or g.conflict]
    return len(members), sorted(issues, key=lambda g: (not g.leak, -len(g.members)))


def _flagged(audit: Audit, g: DuplicateGroup) -> DuplicateGroup:
    g.leak = any(len({part(audit.splits[i]) for i in g.members} - {""}) > 1
                 for part in (_split_part, _fold_part))
    g.conflict = len({audit.label(i) for i in g.members}) > 1
    return g


def _split_part(split: str) -> str:
    return "" if split.startswith("fold ") else split.split(" · ")[0]


def _fold_part(split: str) -> str:
    return next((p for p in split.split(" · ") if p.startswith("fold ")), "")


def near_components(hashes: np.ndarray, max_distance: int, also: np.ndarray | None = None,
                    block: int = 512) -> list[list[int]]:
    """Groups (index lists, 2+ members) of 64-bit hashes linked by Hamming distance <=
    ``max_distance`` (in ``hashes`` or, when given, in ``also``). All pairs by blocks of numpy
    popcounts: 12k hashes is 77M pairs, a few seconds, memory bounded by ``block``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(hashes)
    rows, cols = [], []
    for start in range(0, n, block):
        near = np.bitwise_count(hashes[start:start + block, None] ^ hashes[None, :]
                                ) <= max_distance
        if also is not None:
            near |= np.bitwise_count(also[start:start + block, None] ^ also[None, :]
                                     ) <= max_distance
        r, c = np.nonzero(near)
        keep = c > r + start  # each pair once, no self-pairs
        rows.append(r[keep] + start)
        cols.append(c[keep])
    r, c = (np.concatenate(rows), np.concatenate(cols)) if rows else ([], [])
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        members.setdefault(int(lab), []).append(i)
    return [m for m in members.values() if len(m) > 1]


# ---------------------------------------------------------------- outliers


def find_outliers(audit: Audit) -> list[Outlier]:
    """Per class: robust z-scores (median / MAD) of brightness, log contrast and log blur above
    ``OUTLIER_Z``, and a size or mode the class otherwise never has; most extreme first."""
    if audit.source.multilabel:
        return []
    found: dict[int, list[str]] = {}
    score: dict[int, float] = {}
    for members in _class_members(audit).values():
        if len(members) < 8:  # too few images to say what is normal
            continue
        for name in FEATURES:
            values = np.array([getattr(audit.stats[i], name) for i in members])
            if name != "brightness":  # spread grows with the level: compare on a log scale
                values = np.log1p(values)
            z = robust_z(values)
            for i, zi in zip(members, z, strict=True):
                if abs(zi) > OUTLIER_Z:
                    found.setdefault(i, []).append(f"{name} {'high' if zi > 0 else 'low'} "
                                                   f"(z {zi:+.1f})")
                    score[i] = max(score.get(i, 0.0), abs(float(zi)))
        for attr, show in (("size", lambda s: f"{s.width}x{s.height}"), ("mode", lambda s: s.mode)):
            common, share = Counter(show(audit.stats[i]) for i in members).most_common(1)[0]
            if share / len(members) >= UNIFORM_SHARE:
                for i in members:
                    if show(audit.stats[i]) != common:
                        found.setdefault(i, []).append(f"{attr} {show(audit.stats[i])} "
                                                       f"(class: {common})")
                        score.setdefault(i, 0.0)
    return [Outlier(i, found[i]) for i in sorted(found, key=lambda i: -score[i])]


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD): a z-score that a few extreme values cannot mask."""
    median = np.median(values)
    scale = 1.4826 * np.median(np.abs(values - median))
    # A constant feature (MAD 0) would make any tiny difference infinite.
    scale = max(scale, 0.05 * abs(median), 1e-3)
    return (values - median) / scale


def _class_members(audit: Audit) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, (s, st) in enumerate(zip(audit.source.samples, audit.stats, strict=True)):
        if st.bad is None:
            out.setdefault(s.label, []).append(i)
    return out


# ---------------------------------------------------------------- label errors


def rank_label_issues(source: DataSource, index: np.ndarray, labels: np.ndarray,
                 probs: np.ndarray) -> list[LabelIssue]:
    from cleanlab.filter import find_label_issues as cl_find

    probs = probs / probs.sum(1, keepdims=True)  # cleanlab requires rows summing to 1
    ranked = cl_find(labels, probs, return_indices_ranked_by="self_confidence")
    issues = []
    for j in ranked:
        k = int(probs[j].argmax())
        issues.append(LabelIssue(int(index[j]), source.classes[labels[j]], source.classes[k],
                                 float(probs[j, labels[j]]), float(probs[j, k])))
    return issues


# ---------------------------------------------------------------- exclusion list


def suggested_exclusions(audit: Audit, top_issues: int = 20) -> list[tuple[str, str]]:
    """(sample id, why) for what the user will most likely drop: the non-train copies of a
    leak, every copy of a conflicting group, and the top label issues."""
    ids, out = audit.ids(), {}
    for g in audit.duplicates:
        if g.conflict:
            for i in g.members:
                out.setdefault(ids[i], f"{g.kind} duplicates with conflicting labels")
        elif g.leak:
            dropped = _leaked_copies(audit, g)
            kept = next(i for i in g.members if i not in dropped)
            for i in dropped:
                out.setdefault(ids[i], f"{g.kind} copy of {ids[kept]} "
                                       f"(leak into {audit.splits[i]})")
    for issue in audit.label_issues[:top_issues]:
        out.setdefault(ids[issue.index], f"label issue: given {issue.given}, suggested "
                                         f"{issue.suggested} (p {issue.self_confidence:.2f})")
    return list(out.items())


def _leaked_copies(audit: Audit, group: DuplicateGroup) -> list[int]:
    """The members to drop so that one split keeps the group: training keeps its copies
    (test and val lose theirs); across folds only, the first member stays."""
    parts = [_split_part(audit.splits[i]) for i in group.members]
    if len(set(parts) - {""}) <= 1:  # a leak across folds only
        return group.members[1:]
    keep = "train" if "train" in parts else parts[0]
    return [i for i, part in zip(group.members, parts, strict=True) if part != keep]


# ---------------------------------------------------------------- files


def summary(audit: Audit) -> dict[str, int]:
    """The headline counts (also the CLI's one line and the page's first table)."""
    exact = [g for g in audit.duplicates if g.kind == "exact"]
    near = [g for g in audit.duplicates if g.kind == "near"]
    return {
        "images": len(audit.stats), "unreadable": sum(s.bad is not None for s in audit.stats),
        "exact_groups": len(exact), "exact_redundant": sum(len(g.members) - 1 for g in exact),
        "near_groups": len(near),
        "leak_groups": sum(g.leak for g in audit.duplicates),
        "conflict_groups": sum(g.conflict for g in audit.duplicates),
        "label_issues": len(audit.label_issues), "outliers": len(audit.outliers),
        "source_groups": audit.source_groups,
        "source_leak_groups": sum(g.leak for g in audit.source_issues),
        "source_leak_test_images": sum(
            1 for g in audit.source_issues if g.leak
            for i in g.members if _split_part(audit.splits[i]) == "test"),
        "source_conflict_groups": sum(g.conflict for g in audit.source_issues),
    }


def write_audit_files(audit: Audit, out: Path) -> list[Path]:
    """audit_duplicates.csv, audit_label_issues.csv, audit_outliers.csv, audit_counts.csv,
    audit_bad_files.csv and audit.json in ``out``; returns their paths."""
    from medscope.run import atomic_write_csv, atomic_write_json

    ids, sp = audit.ids(), audit.splits
    files = {name: out / f"audit_{name}.csv" for name in
             ("duplicates", "label_issues", "outliers", "counts", "bad_files",
              "source_groups")}
    atomic_write_csv(files["duplicates"],
                     ("group", "kind", "leak", "conflict", "max_distance", "path", "label",
                      "split"),
                     [(n, g.kind, int(g.leak), int(g.conflict), g.max_distance, ids[i],
                       audit.label(i), sp[i])
                      for n, g in enumerate(audit.duplicates, 1) for i in g.members])
    atomic_write_csv(files["source_groups"],
                     ("group", "leak", "conflict", "path", "label", "split"),
                     [(audit.source.samples[g.members[0]].group, int(g.leak), int(g.conflict),
                       ids[i], audit.label(i), sp[i])
                      for g in audit.source_issues for i in g.members])
    atomic_write_csv(files["label_issues"],
                     ("rank", "path", "given", "suggested", "self_confidence", "p_suggested",
                      "split"),
                     [(r, ids[x.index], x.given, x.suggested, f"{x.self_confidence:.4f}",
                       f"{x.p_suggested:.4f}", sp[x.index])
                      for r, x in enumerate(audit.label_issues, 1)])
    st = audit.stats
    atomic_write_csv(files["outliers"],
                     ("path", "label", "split", "reasons", "brightness", "contrast", "blur",
                      "width", "height", "mode"),
                     [(ids[o.index], audit.label(o.index), sp[o.index], "; ".join(o.reasons),
                       f"{st[o.index].brightness:.1f}", f"{st[o.index].contrast:.1f}",
                       f"{st[o.index].blur:.1f}", st[o.index].width, st[o.index].height,
                       st[o.index].mode) for o in audit.outliers])
    counts = audit.counts()
    split_names = sorted({s for per in counts.values() for s in per})
    atomic_write_csv(files["counts"], ("class", *[s or "all" for s in split_names], "total"),
                     [(c, *[per.get(s, 0) for s in split_names], sum(per.values()))
                      for c, per in counts.items()])
    atomic_write_csv(files["bad_files"], ("path", "reason"),
                     [(ids[i], s.bad) for i, s in enumerate(st) if s.bad is not None])
    atomic_write_json(out / "audit.json", {
        **summary(audit), "phash_distance": audit.phash_distance, "outlier_z": OUTLIER_Z,
        "group_pattern": audit.group_pattern,
        "splits": audit.split_origin, "label_issues_from": audit.label_origin,
        "data": str(audit.source.root)})
    return [*files.values(), out / "audit.json"]


def write_exclude(audit: Audit, path: Path, top_issues: int = 20) -> int:
    """The suggested exclusions as a commented list the user edits (no interactive
    confirmation: this runs in CI too); returns how many ids it holds. Never overwrites."""
    from medscope.run import atomic_write_text

    if path.exists():
        raise MedscopeError(f"{path}: already exists; edit it, or name a new file")
    items = suggested_exclusions(audit, top_issues)
    width = max((len(i) for i, _ in items), default=0)
    lines = ["# medscope audit: suggested exclusions for " + str(audit.source.root),
             "# Review each line: delete the ones to keep. One sample id per line; '#' starts",
             "# a comment. Use with `data.exclude: FILE` in a config or `--exclude FILE`.",
             *(f"{i.ljust(width)}  # {why}" for i, why in items)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(items)
