"""Validation of a dataset folder, shared by ``gaugan check-data`` and the preprocess stage.

Every problem is collected before anything fails (a user fixing a dataset wants the whole
list, not one error per run), and each names the file, the offending value and the
setting to change: label values outside ``[0, label_nc)`` other than the don't-care value
(docs/SPADE.md section 3 for each dataset's convention), an image whose size differs from
its label map, an instance map of another size, pairs with a missing half, and files that
cannot be read (with the reason). Nothing is ever dropped silently.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from gaugan.config import DataConfig
from gaugan.data.classes import class_names, named_class_count, read_class_file
from gaugan.data.diagnose import (
    LabelStatistics,
    OutsideValues,
    describe_aspects,
    describe_storage,
    distortion_warning,
    label_statistics,
    stray_value_warning,
    void_value_hint,
    void_warning,
)
from gaugan.data.io import DataError, LabelValueError, Problem, image_size, map_labels, read_image, read_index_map
from gaugan.data.registry import ASPECT_MULTIPLE, DatasetSpec, resolve_dataset
from gaugan.data.sources import Listing, Pair, list_dataset, split_problems

EXIF_ORIENTATION = 0x0112
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class LoadedPair:
    """A pair read from disk and checked: RGB photo, stored label indices, raw instance ids."""

    image: Image.Image
    label: np.ndarray  # (H, W) int64 in [0, spec.num_label_values)
    instance: np.ndarray | None  # (H, W) int64 as read (only edges matter)


@dataclass
class PairCheck:
    """What reading one pair found: the pair (None when it has a problem), its problems, and the
    raw label values outside the spec's range (None when the label map could not be read)."""

    loaded: LoadedPair | None
    problems: list[str]
    outside_values: tuple[int, ...] | None


def load_pair(pair: Pair, spec: DatasetSpec, max_pixels: int | None = None) -> PairCheck:
    """Read and check one pair: the pair, or every problem found in it.

    ``max_pixels`` (data.max_image_pixels) refuses larger files before decoding them.
    """
    problems: list[str] = []
    label = image = instance = outside = None
    try:
        label = map_labels(read_index_map(pair.label, max_pixels=max_pixels), spec, pair.label)
        outside = ()
    except LabelValueError as err:
        problems.append(err.problem)
        outside = err.values
    except DataError as err:
        problems.append(err.problem)
    try:
        image = read_image(pair.image, max_pixels)
    except DataError as err:
        problems.append(err.problem)
    if spec.use_instance and pair.instance is not None:
        try:
            instance = read_index_map(pair.instance, what="instance map", max_pixels=max_pixels)
        except DataError as err:
            problems.append(err.problem)
    if label is not None:
        height, width = label.shape
        if image is not None and image.size != (width, height):
            problems.append(Problem(
                f"{pair.image}: image is {image.size[0]}x{image.size[1]} (WxH) but its label map {pair.label} is "
                f"{width}x{height}; they must be the same size{_orientation_hint(pair.image)}",
                pair.image, "image and its label map differ in size; they must be the same size"))
        if instance is not None and instance.shape != label.shape:
            problems.append(Problem(
                f"{pair.instance}: instance map is {instance.shape[1]}x{instance.shape[0]} (WxH) but its label map "
                f"{pair.label} is {width}x{height}; they must be the same size",
                pair.instance, "instance map and its label map differ in size; they must be the same size"))
    return PairCheck(None if problems else LoadedPair(image, label, instance), problems, outside)


def _orientation_hint(path: Path) -> str:
    """Why a photo may look the right size in a viewer: an EXIF orientation tag, which we ignore."""
    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - only a hint; the file's own problems are reported elsewhere
        return ""
    if orientation in (None, 1):
        return ""
    return (f" (the photo has EXIF orientation {orientation}: viewers show it rotated or mirrored, but its pixels "
            f"are used as stored; rotate the pixels themselves, e.g. with `mogrify -auto-orient`, or fix the label map)")


def parallel_map(function: Callable[[T], R], items: Iterable[T], num_workers: int, chunksize: int = 4) -> Iterator[R]:
    """``map`` in worker processes (ordered), or in this process when num_workers == 0.

    The workers stop by being told to, never by a signal, once the work is done or abandoned
    (an error, Ctrl-C, SIGTERM in this process): ``multiprocessing.Pool`` ended with
    ``terminate()``, and a worker forked just before lost that SIGTERM (Python clears a signal
    that arrives while a child is being set up, and the stage's handler is inherited), or one
    killed while holding the task queue's lock blocked the others: both hung forever. At most
    two chunks per worker are submitted at a time, so an abandoned map waits only for those
    (none is cancelled: Python 3.11's executor fails on a cancelled future when a worker dies).
    A worker that dies (the out-of-memory killer) is a :class:`DataError`, not a hang.

    Ctrl-C and SIGTERM are held back while the workers are forked (all of them at the first
    submission): one arriving then would otherwise be lost, in a worker still being set up or
    raised in this process inside Python's at-fork hooks, which ignore exceptions. Each worker
    ignores Ctrl-C (this process stops them) and then takes the signals it was sent.
    """
    if num_workers <= 0:
        yield from map(function, items)
        return
    chunks = _chunks(items, chunksize)
    context = get_context("spawn" if os.name == "nt" else "fork")
    with ProcessPoolExecutor(num_workers, mp_context=context, initializer=_start_worker) as executor:
        with _signals_held():
            pending = deque(executor.submit(_run_chunk, function, chunk)
                            for chunk in itertools.islice(chunks, 2 * num_workers))
        try:
            while pending:
                results = pending.popleft().result()
                for chunk in itertools.islice(chunks, 1):
                    pending.append(executor.submit(_run_chunk, function, chunk))
                yield from results
        except BrokenProcessPool as err:
            raise DataError("a worker process died while reading or writing the data (killed by the system: out of "
                            "memory?); use fewer worker processes (data.num_workers, or check-data --num-workers)"
                            ) from err


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, max(1, size))):
        yield chunk


def _run_chunk(function: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [function(item) for item in chunk]


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait (in this thread, and in the processes and threads started here) until the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: workers are spawned, not forked
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _start_worker() -> None:
    """In each worker: ignore Ctrl-C (the main process stops the workers; no traceback from each),
    then take the signals held back while it was forked (a pending SIGTERM ends it now)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


# --------------------------------------------------------------------------------------
# Resolving the spec of a folder (custom datasets: instance maps and classes found there).


def infer_num_classes(pairs: list[Pair], dontcare_value: int | None, root: Path, num_workers: int = 0,
                      max_pixels: int | None = None) -> tuple[int | None, list[str], str | None]:
    """max label value + 1 over the given label maps (the don't-care value excluded), the
    problems of unreadable maps, and a warning when a few stray values make the count jump."""
    problems: list[str] = []
    files_by_value: dict[int, list[Path]] = {}
    count_by_value: Counter = Counter()
    results = parallel_map(_label_values, [(p.label, dontcare_value, max_pixels) for p in pairs], num_workers)
    for pair, result in zip(pairs, results):
        if isinstance(result, str):
            problems.append(result)
            continue
        for value in result:
            count_by_value[value] += 1
            files = files_by_value.setdefault(value, [])
            if len(files) < 3:
                files.append(pair.label.relative_to(root) if pair.label.is_relative_to(root) else pair.label)
    if not count_by_value:
        return None, problems, None
    warning = stray_value_warning(files_by_value, count_by_value, len(pairs) - len(problems))
    return max(count_by_value) + 1, problems, warning


def _label_values(args: tuple[Path, int | None, int | None]) -> list[int] | str:
    path, dontcare, max_pixels = args
    try:
        raw = read_index_map(path, max_pixels=max_pixels)
    except DataError as err:
        return err.problem
    values = np.unique(raw)
    if dontcare is not None:
        values = values[values != dontcare]
    return values.tolist()


def photo_aspect_ratio(pairs: list[Pair], num_workers: int = 0) -> float | None:
    """The most common width / height (to 2 decimals) of the photos, from their headers."""
    aspects: Counter = Counter()
    for size in parallel_map(image_size, [pair.image for pair in pairs], num_workers, chunksize=64):
        if size is not None and size[1] > 0:
            aspects[round(size[0] / size[1], 2)] += 1
    return aspects.most_common(1)[0][0] if aspects else None


def _custom_class_count(data: DataConfig, listing: Listing, folder: Path, num_workers: int) -> int | None:
    """A custom dataset's class count when data.custom.num_classes is null: the classes
    file's, else the training labels' (with their read problems and a stray-value warning)."""
    if data.custom.num_classes is not None:
        return None
    if listing.classes is not None:
        count = named_class_count(listing.classes, data.custom.dontcare_label)
        listing.notes.append(f"classes: {count} named in {listing.classes.path.name} (data.custom.num_classes is null)")
        return count
    count, problems, warning = infer_num_classes(listing.splits.get("train", []), data.custom.dontcare_label, folder,
                                                 num_workers, data.max_image_pixels)
    listing.problems.extend(problems)
    listing.warnings.extend([warning] if warning else [])
    if count is None:
        found = listing.problems + split_problems(listing)
        if found:  # no training pairs, or none readable: those problems, not the class count, are what to fix
            raise DatasetProblems(listing.root, found)
        raise DataError(f"{folder}: cannot infer the number of classes (the training label maps hold no value but "
                        f"the don't-care value {data.custom.dontcare_label}); set data.custom.num_classes")
    listing.notes.append(f"classes inferred from the training labels: {count} "
                         f"(max label value + 1, don't-care {data.custom.dontcare_label} excluded)")
    return count


def resolve_folder(data: DataConfig, folder: Path, repo_root: Path | None = None,
                   num_workers: int = 0) -> tuple[DatasetSpec, Listing]:
    """The spec and the listing of ``data.dataset`` in ``folder``.

    For custom datasets the instance edge channel is on when the folder has any instance
    maps (unless data.use_instance says otherwise), class names come from a
    ``classes.txt`` / ``classes.csv`` beside the splits, and when data.custom.num_classes is
    null the class count is the number of names in that file, or else inferred from the
    training labels.
    """
    if data.dataset == "custom":
        use_instance = data.use_instance
        if use_instance is None:
            probe = list_dataset("custom", folder, data, use_instance=False, repo_root=repo_root)
            # an instances/ folder anywhere means instance maps are meant to be used (and then
            # a missing one is a problem, not a reason to silently train without edges)
            use_instance = any(p.instance is not None for pairs in probe.splits.values() for p in pairs)
        listing = list_dataset("custom", folder, data, use_instance=use_instance, repo_root=repo_root)
        listing.classes = read_class_file(folder)
        inferred = _custom_class_count(data, listing, folder, num_workers)
        aspect = None
        if data.aspect_ratio is None and data.preprocess_mode is None:
            aspect = photo_aspect_ratio(listing.splits.get("train", []), num_workers)
        spec = resolve_dataset(dataclasses.replace(data, use_instance=use_instance), inferred_num_classes=inferred,
                               photo_aspect_ratio=aspect)
        if aspect is not None:
            listing.notes.append(
                f"aspect ratio {spec.aspect_ratio:.2f} (W/H): the training photos' most common {aspect:.2f}"
                + (f", as near as crops {spec.image_size[1]}x{spec.image_size[0]} (WxH, height a multiple of "
                   f"{ASPECT_MULTIPLE}) allow" if abs(spec.aspect_ratio / aspect - 1) > 0.01 else "")
                + "; preprocess_mode 'fixed' (data.aspect_ratio and data.preprocess_mode are null)")
        return spec, listing
    spec = resolve_dataset(data)
    return spec, list_dataset(data.dataset, folder, data, use_instance=spec.use_instance, repo_root=repo_root)


# --------------------------------------------------------------------------------------
# The check itself.


@dataclass
class CheckReport:
    spec: DatasetSpec
    listing: Listing
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # likely mistakes that are not errors (gaugan.data.diagnose)
    pairs: dict[str, int] = field(default_factory=dict)
    image_sizes: dict[str, Counter] = field(default_factory=dict)  # split -> Counter of (width, height)
    labels: dict[str, LabelStatistics] = field(default_factory=dict)  # split -> pixels per stored index
    instance_maps: dict[str, int] = field(default_factory=dict)
    hints: list[str] = field(default_factory=list)  # what the problems suggest (gaugan.data.diagnose)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def class_pixels(self) -> dict[str, np.ndarray]:
        return {split: statistics.pixels for split, statistics in self.labels.items()}


def _inspect(args: tuple[Pair, DatasetSpec, int | None]) -> tuple[PairCheck, tuple[int, int] | None,
                                                                  LabelStatistics | None]:
    pair, spec, max_pixels = args
    check = load_pair(pair, spec, max_pixels)
    if check.loaded is None:
        return check, None, None
    return check, check.loaded.image.size, label_statistics(check.loaded.label, spec.num_label_values)


def dataset_warnings(listing: Listing, spec: DatasetSpec, train_labels: LabelStatistics | None,
                     image_sizes: dict[str, Counter]) -> list[str]:
    """The listing's warnings and those of the label statistics and photo sizes (check-data and preprocess)."""
    found = [void_warning(spec, listing.classes, train_labels) if train_labels is not None else None,
             distortion_warning(spec, image_sizes)]
    return list(listing.warnings) + [warning for warning in found if warning]


def problem_hints(listing: Listing, spec: DatasetSpec, outside: OutsideValues) -> list[str]:
    """What the problems suggest (check-data and preprocess): a void value the settings do not name."""
    hint = void_value_hint(spec, listing.classes, outside)
    return [hint] if hint else []


def check_listing(listing: Listing, spec: DatasetSpec, num_workers: int = 0, progress: bool = False,
                  max_pixels: int | None = None) -> CheckReport:
    """Read every file of the listing and collect all problems, warnings and the summary statistics."""
    report = CheckReport(spec, listing, problems=listing.problems + split_problems(listing))
    outside = OutsideValues()
    for split, pairs in listing.splits.items():
        report.pairs[split] = len(pairs)
        report.image_sizes[split] = Counter()
        report.labels[split] = LabelStatistics.zeros(spec.num_label_values)
        report.instance_maps[split] = 0
        if not pairs:
            continue
        results = parallel_map(_inspect, [(p, spec, max_pixels) for p in pairs], num_workers)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(pairs), desc=f"check {split}", unit="pair")
        for check, size, statistics in results:
            report.problems.extend(check.problems)
            outside.add(check.outside_values)
            if size is not None:
                report.image_sizes[split][size] += 1
                report.labels[split].add(statistics)
                report.instance_maps[split] += int(check.loaded.instance is not None)
    report.warnings = dataset_warnings(listing, spec, report.labels.get("train"), report.image_sizes)
    report.hints = problem_hints(listing, spec, outside)
    report.problems = list(dict.fromkeys(report.problems))  # inferring the class count read the train labels once already
    return report


def check_dataset(data: DataConfig, folder: str | os.PathLike, repo_root: Path | None = None, num_workers: int = 0,
                  progress: bool = False) -> CheckReport:
    """Resolve, list and check a dataset folder in its official layout (what check-data runs).

    A folder without the dataset's layout raises :class:`DataError`; a bad setting
    raises :class:`gaugan.config.ConfigError`.
    """
    spec, listing = resolve_folder(data, Path(folder), repo_root, num_workers)
    return check_listing(listing, spec, num_workers, progress, data.max_image_pixels)


class DatasetProblems(DataError):
    """Every problem of a dataset folder (``problems``, with ``hints``); nothing was written."""

    def __init__(self, root: Path, problems: list[str], hints: list[str] | None = None) -> None:
        self.root, self.problems, self.hints = root, list(problems), list(hints or [])
        super().__init__(f"{root}: the dataset has problems; nothing was written.\n"
                         + format_problems(self.problems, root, self.hints))


def format_problems(problems: list[str], root: Path | None = None, hints: Iterable[str] = ()) -> str:
    """Every problem, one line per cause, then the hints.

    Files with the same :class:`gaugan.data.io.Problem` cause share one line: their count,
    the cause and three of them (relative to ``root``); any other problem is its own line.
    """
    problems = list(dict.fromkeys(problems))  # the same problem found by two passes is one problem
    groups: dict[tuple[bool, str], list[str]] = {}
    for problem in problems:
        key = (True, problem.cause) if isinstance(problem, Problem) else (False, problem)
        groups.setdefault(key, []).append(problem)
    header = f"{len(problems)} problem(s) found"
    if len(groups) < len(problems):
        header += f", {len(groups)} cause{'' if len(groups) == 1 else 's'}"
    lines = [header + ":"]
    for (_, cause), members in groups.items():
        if len(members) == 1:
            lines.append(f"  - {members[0]}")
        else:
            examples = ", ".join(_shown_path(member.path, root) for member in members[:3])
            lines.append(f"  - {len(members)} files: {cause} (e.g. {examples})")
    lines += [f"  hint: {hint}" for hint in hints]
    return "\n".join(lines)


def _shown_path(path: str, root: Path | None) -> str:
    """``path`` relative to ``root`` when it lies inside it."""
    if root is not None and Path(path).is_relative_to(root):
        return Path(path).relative_to(root).as_posix()
    return path


def format_report(report: CheckReport, max_classes: int = 40) -> str:
    """A human-readable summary: pairs, sizes, classes present with pixel shares, instance maps."""
    spec = report.spec
    lines = [
        f"dataset {spec.name!r} at {report.listing.root}",
        f"  label_nc={spec.label_nc} contain_dontcare={spec.contain_dontcare} dontcare_value={spec.dontcare_value} "
        f"use_instance={spec.use_instance} -> {spec.label_channels} label channels",
    ]
    lines.append(f"  stored: {describe_storage(spec)}")
    if not spec.comparable_to_paper:
        lines.append("  note: results on this dataset are not comparable to the paper's numbers")
    lines += [f"  note: {note}" for note in report.listing.notes]
    names = class_names(spec, report.listing.classes)
    for split in report.pairs:
        sizes = report.image_sizes[split]
        lines.append(f"{split}: {report.pairs[split]} pairs, {report.instance_maps[split]} instance maps")
        if sizes:
            common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(5))
            more = f" and {len(sizes) - 5} more sizes" if len(sizes) > 5 else ""
            lines.append(f"  image sizes (WxH): {common}{more}")
            lines.append(f"  aspect ratios (W/H): {describe_aspects(sizes)}")
        pixels = report.class_pixels[split]
        total = int(pixels.sum())
        if total:
            present = [i for i in np.argsort(-pixels) if pixels[i] > 0]
            lines.append(f"  classes present: {len(present)} of {spec.num_label_values}")
            for i in present[:max_classes]:
                lines.append(f"    {i:4d} {names[i]:<24s} {100 * pixels[i] / total:6.2f}%")
            if len(present) > max_classes:
                lines.append(f"    ... {len(present) - max_classes} more")
    lines += [f"warning: {warning}" for warning in report.warnings]
    if report.problems:
        lines.append(format_problems(report.problems, report.listing.root, report.hints))
    else:
        lines.append("no problems found" + (f" ({len(report.warnings)} warning(s) above)" if report.warnings else ""))
    return "\n".join(lines)
