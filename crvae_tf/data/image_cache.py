"""The preprocessed, validated uint8 cache of the RGB datasets (CelebA, Birds): decode, crop and resize each
image once, assign splits, write atomically, reload as memory maps. Gin-free.

Cache
-----
Each image is decoded, cropped and resized ONCE; the result is stored as uint8 `.npy` files, one per
split, in `<cache root>/<dataset>-<R>-<key>/` (`train.npy`, `validation.npy`, `test.npy`, `manifest.json`),
where the cache root is `cache_dir`, else `<data_dir>/crvae_tf_cache`, else `~/.cache/crvae_tf`, and key =
the first 16 hex digits of a SHA-256 over the source listings (relative path, size and mtime of every
present image, the bytes of every metadata file, the first image of every tfds split), the crop rule,
resolution and hold-out (seed, size). A changed source therefore gets a new folder (old folders can be
deleted by hand). Every file is written to a temporary name and renamed; `manifest.json` is written last
and marks the folder complete, so an interrupted preprocessing run is redone, never half-read.

Names
-----
`names.json` (written before the manifest, which names it: `"names": "names.json"`) records, per split, the
source file name of every kept row in row order (skipped and blank images left out), as the item was listed:
CelebA's '000001.jpg', a bird's path relative to its source folder, '<tfds name>/<split>[<index>]' for tfds
examples. It is a few MB for all of CelebA, read with the arrays, and becomes `ImageSplits.names`
(`masks.dataset_landmark_masks` matches it against `list_landmarks_align_celeba.txt`).

Caches written before names were recorded (same `CACHE_FORMAT`, a manifest without `"names"`) are NOT
rebuilt: they keep serving every use with `names=None`, because rebuilding all of CelebA only for them would
cost every user a full preprocessing pass for a feature few use. Only a request for per-image names on such a
cache fails, with `missing_names_error`: a `DataUnavailableError` naming the folder to delete (the next load
then rebuilds it, names included). A manifest that names `names.json` while the file is missing, unreadable
or has the wrong counts is a damaged cache and is rebuilt like a damaged `.npy`.

Validation
---------------------------------
Undecodable images (truncated, empty, an HTML page saved as .jpg, ...), boxes outside their image and
blank images (every pixel equal) are skipped, listed with the reason in the manifest (`rejected`) and
counted in a logged warning. If more than `max_corrupt_fraction` (default 1%) of the present images are
rejected, nothing is cached: the list is written to `<cache folder>/rejected.json` and a
`DataUnavailableError` names it.
"""

import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Dict
from typing import Iterable
from typing import List
from typing import NamedTuple
from typing import Optional
from typing import Sequence
from typing import Tuple

import numpy as np

from crvae_tf import artifacts
from crvae_tf.data.image_files import PAPER_BIRDS_TOTAL
from crvae_tf.data.image_files import Item
from crvae_tf.data.image_files import Rejected
from crvae_tf.data.image_files import Source
from crvae_tf.data.image_files import abspath
from crvae_tf.data.image_files import celeba_crop_window
from crvae_tf.data.image_files import crop_window
from crvae_tf.data.image_files import decode_image_file
from crvae_tf.data.image_files import resize_to_uint8
from crvae_tf.data.image_files import round_half_up
from crvae_tf.data.image_files import square_box_window
from crvae_tf.data.splits import SPLIT_NAMES
from crvae_tf.data.splits import DataUnavailableError

RESOLUTIONS = (64, 128)
DEFAULT_HOLDOUT_FRACTION = 0.05
DEFAULT_MAX_CORRUPT_FRACTION = 0.01
CACHE_FORMAT = "crvae_tf-image-cache-v1"
NAMES_FILE = "names.json"
_CHUNK = 256  # Images submitted to the worker threads at once (bounds the memory of decoded tfds images).

_logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Preprocessing and the cache.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Processed:
    """Per-item outcome of preprocessing, in submission order."""

    items: List[Item]
    ok: List[bool]
    rejected: List[dict]
    windows: Dict[str, List[int]]  # "HxW" -> face window, CelebA only (one entry per image size seen).


def _process_item(item: Item, resolution: int, crop, box_scale: float) -> Tuple[np.ndarray, Optional[tuple]]:
    image = decode_image_file(item.path) if item.image is None else item.image
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    height, width = image.shape[:2]
    if item.box is None:
        window = celeba_crop_window(height, width, crop)
        size_key = (height, width)
    else:
        box = item.box
        if item.normalized_box:  # tfds [ymin, xmin, ymax, xmax] in [0, 1].
            ymin, xmin, ymax, xmax = box
            box = (xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height)
        window = square_box_window(height, width, box, box_scale)
        size_key = None
    return resize_to_uint8(crop_window(image, window), resolution), (size_key, window)


def _preprocess(
    items: Iterable[Item], pool_path: str, capacity: int, resolution: int, crop, box_scale: float, num_workers: int
) -> _Processed:
    """Decodes, crops and resizes `items` into rows 0.. of a uint8 `[capacity, R, R, 3]` .npy memory map."""
    pool = np.lib.format.open_memmap(
        pool_path, mode="w+", dtype=np.uint8, shape=(max(capacity, 1), resolution, resolution, 3)
    )
    done = _Processed([], [], [], {})
    last_log = [time.perf_counter()]

    def work(index_item):
        index, item = index_item
        try:
            pixels, (size_key, window) = _process_item(item, resolution, crop, box_scale)
        except Rejected as reason:
            return index, str(reason), None
        finally:
            item.image = None  # tfds pixels: keep only the listing, not every decoded image.
        pool[index] = pixels  # noqa: F821 (the cell is deleted only after the pool is closed)
        return index, None, (size_key, window)

    def run(chunk):
        for index, reason, info in executor.map(work, chunk):
            item = chunk[index - chunk[0][0]][1]
            done.ok.append(reason is None)
            if reason is not None:
                done.rejected.append(
                    {"source": item.source, "split": item.split, "image": item.path or item.name, "reason": reason}
                )
            elif info[0] is not None:
                done.windows.setdefault(f"{info[0][0]}x{info[0][1]}", list(info[1]))
        if time.perf_counter() - last_log[0] > 10.0:
            last_log[0] = time.perf_counter()
            _logger.info("Preprocessed %d of %d images ...", len(done.ok), capacity)

    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as executor:
        chunk = []
        for item in items:
            if len(done.items) >= capacity:
                raise RuntimeError(f"More images than the {capacity} counted; the source changed while reading.")
            chunk.append((len(done.items), item))
            done.items.append(item)
            if len(chunk) == _CHUNK:
                run(chunk)
                chunk = []
        if chunk:
            run(chunk)
    pool.flush()
    del pool
    return done


def _write_npy(path: str, source: np.ndarray, rows: np.ndarray) -> None:
    """Writes `source[rows]` (uint8 `[n, R, R, 3]`) to `path` atomically, copying in chunks."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=folder)
    os.close(fd)
    try:
        if len(rows):
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows),) + source.shape[1:])
            for start in range(0, len(rows), 1024):
                out[start : start + 1024] = source[rows[start : start + 1024]]
            out.flush()
            del out
        else:
            np.save(tmp, np.zeros((0,) + source.shape[1:], np.uint8))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def holdout_size(validation_size, pool_size: int, num_holdouts: int, dataset: str) -> int:
    """Images per hold-out split: `validation_size` as a count (int) or a fraction of the pool (float in (0, 1))."""
    if validation_size is None:
        validation_size = DEFAULT_HOLDOUT_FRACTION
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"validation_size={validation_size!r} must be an int (images) or a float in (0, 1) (fraction "
            "of the training pool); set dataset.validation_size."
        )
    if isinstance(validation_size, (float, np.floating)):
        if not 0.0 < validation_size < 1.0:
            raise ValueError(
                f"validation_size={validation_size!r} as a fraction must lie in (0, 1); set dataset.validation_size."
            )
        size = max(1, round_half_up(validation_size * pool_size))
    else:
        size = int(validation_size)
    if size < 0 or num_holdouts * size >= pool_size:
        raise ValueError(
            f"validation_size={validation_size!r} holds out {num_holdouts} x {size} of the {pool_size} {dataset} "
            f"images that the hold-out draws from, leaving no training images; set dataset.validation_size to a "
            f"smaller count or a fraction such as 0.05."
        )
    return size


def _cache_root(cache_dir, data_dir) -> str:
    if cache_dir is not None:
        return abspath(cache_dir)
    if data_dir is not None:
        return os.path.join(abspath(data_dir), "crvae_tf_cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "crvae_tf")


class Cached(NamedTuple):
    """A complete cache folder: `arrays` {split: uint8 `[n, R, R, 3]`}, its manifest, the manifest's path and
    `names` {split: [source file name per row]}, None for a cache written before names were recorded."""

    arrays: Dict[str, np.ndarray]
    manifest: dict
    manifest_path: str
    names: Optional[Dict[str, List[str]]]


def _load_names(folder: str, manifest: dict) -> Tuple[bool, Optional[Dict[str, List[str]]]]:
    """(usable, names): names None when the manifest predates them; usable False when the file is damaged."""
    if "names" not in manifest:
        return True, None
    path = os.path.join(folder, manifest["names"])
    try:
        with open(path, encoding="utf-8") as f:
            names = json.load(f)
        names = {split: [str(name) for name in names[split]] for split in SPLIT_NAMES}
    except (OSError, ValueError, KeyError, TypeError) as error:
        _logger.warning("Cache %s is damaged (%s: %s); rebuilding it.", folder, type(error).__name__, error)
        return False, None
    counts = {split: len(names[split]) for split in SPLIT_NAMES}
    if counts != {split: manifest["splits"][split] for split in SPLIT_NAMES}:
        _logger.warning(
            "Cache %s: %s lists %s names, the manifest says %s; rebuilding it.",
            folder,
            manifest["names"],
            counts,
            manifest["splits"],
        )
        return False, None
    return True, names


def _load_cached(folder: str, key: str) -> Optional[Cached]:
    manifest_path = os.path.join(folder, "manifest.json")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
        return None
    arrays = {}
    for split in SPLIT_NAMES:
        path = os.path.join(folder, f"{split}.npy")
        try:
            count = manifest["splits"][split]
            array = np.load(path, mmap_mode="r") if count else np.load(path)
        except (OSError, ValueError, KeyError) as error:
            _logger.warning("Cache %s is damaged (%s: %s); rebuilding it.", folder, type(error).__name__, error)
            return None
        if array.shape[0] != count or array.dtype != np.uint8:
            _logger.warning(
                "Cache %s: %s.npy has %s %s, the manifest says %d; rebuilding it.",
                folder,
                split,
                array.dtype,
                array.shape,
                count,
            )
            return None
        arrays[split] = array
    usable, names = _load_names(folder, manifest)
    if not usable:
        return None
    return Cached(arrays, manifest, manifest_path, names)


def missing_names_error(dataset: str, manifest_path: Optional[str], purpose: str) -> DataUnavailableError:
    """The error for a cache written before names were recorded (module docstring): delete it to rebuild it."""
    folder = os.path.dirname(manifest_path) if manifest_path else "the dataset's cache folder"
    return DataUnavailableError(
        f"{purpose} needs the source file name of every {dataset} image, but the cache {folder} was written "
        f"before the cache recorded them (its manifest.json has no '{NAMES_FILE}'). Delete that folder (rm -r "
        f"{folder}) and run again: the data is preprocessed once more (its manifest's preprocess_seconds says "
        "how long that took) and the new cache records the names; nothing else about it changes."
    )


def build_or_load(
    dataset: str,
    sources: Sequence[Source],
    *,
    resolution: int,
    crop,
    box_scale: float,
    holdout: Optional[dict],
    cache_dir,
    data_dir,
    max_corrupt_fraction: float,
    num_workers,
    describe_crop: str,
) -> Cached:
    """Returns the `Cached` folder ({split: uint8 [n, R, R, 3] memmap}, manifest, its path, names per split),
    preprocessing on a cache miss.

    `holdout`: None (the sources' own splits) or `{'seed', 'validation_size', 'num_holdouts'}`: 'pool' items
    and, for the birds composite, 'train' items are split by a seeded permutation (see `_assign_splits`).
    """
    key_material = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "resolution": resolution,
        "crop": describe_crop,
        "box_scale": box_scale,
        "holdout": holdout,
        "sources": [(s.name, s.description, s.fingerprint) for s in sources],
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = os.path.join(_cache_root(cache_dir, data_dir), f"{dataset}-{resolution}-{key}")
    manifest_path = os.path.join(folder, "manifest.json")
    cached = _load_cached(folder, key)
    if cached is not None:
        _logger.info("Using the preprocessed %s cache %s.", dataset, folder)
        return cached

    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    num_workers = num_workers or min(8, 2 * (os.cpu_count() or 1))
    capacity = sum(source.num_items() for source in sources)

    def all_items():
        for source in sources:
            yield from source.iterate()

    _logger.warning(
        "Preprocessing %d %s images to %dx%d into %s (once; later runs reuse it) ...",
        capacity,
        dataset,
        resolution,
        resolution,
        folder,
    )
    fd, pool_path = tempfile.mkstemp(prefix=".pool-", suffix=".npy", dir=folder)
    os.close(fd)
    try:
        processed = _preprocess(all_items(), pool_path, capacity, resolution, crop, box_scale, num_workers)
        num_present = len(processed.items)
        rejected = processed.rejected
        if rejected:
            _logger.warning(
                "%d of %d %s images were rejected (corrupt, undecodable, blank or bad box) and skipped; "
                "first: %s. The full list is in %s.",
                len(rejected),
                num_present,
                dataset,
                rejected[0],
                manifest_path,
            )
        if num_present and len(rejected) > max_corrupt_fraction * num_present:
            report = os.path.join(folder, "rejected.json")
            artifacts.atomic_write_text(report, json.dumps(rejected, indent=1))
            raise DataUnavailableError(
                f"{len(rejected)} of the {num_present} {dataset} images ({100.0 * len(rejected) / num_present:.1f}%) "
                f"are corrupt or unusable, more than max_corrupt_fraction={max_corrupt_fraction} allows (e.g. "
                f"{rejected[0]['image']}: {rejected[0]['reason']}). The list with reasons is in {report}. Re-fetch "
                "or delete those files (a damaged download or extraction?), or raise dataset.max_corrupt_fraction "
                "to train without them."
            )
        rows, split_sources, split_rule = _assign_splits(processed, holdout, dataset)
        pool = np.load(pool_path, mmap_mode="r")
        for split in SPLIT_NAMES:
            _write_npy(os.path.join(folder, f"{split}.npy"), pool, rows[split])
        del pool
        names = {split: [processed.items[index].name for index in rows[split]] for split in SPLIT_NAMES}
        artifacts.atomic_write_text(os.path.join(folder, NAMES_FILE), json.dumps(names, separators=(",", ":")))
    finally:
        if os.path.exists(pool_path):
            os.unlink(pool_path)
    seconds = time.perf_counter() - start
    manifest = _manifest(
        dataset, key, resolution, describe_crop, box_scale, sources, processed, rows, split_sources, split_rule, seconds
    )
    artifacts.atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    _logger.warning(
        "Preprocessed %d %s images in %.1f s: %s.", num_present - len(rejected), dataset, seconds, manifest["splits"]
    )
    cached = _load_cached(folder, key)
    if cached is None or cached.names is None:
        raise RuntimeError(f"The cache just written to {folder} could not be read back.")
    return cached


def _assign_splits(processed: _Processed, holdout: Optional[dict], dataset: str):
    """Row indices (into the pool) of each split, per-source counts per split, and the split rule text."""
    good = {split: [] for split in ("train", "validation", "test", "pool")}
    for index, (item, ok) in enumerate(zip(processed.items, processed.ok)):
        if ok:
            good[item.split].append(index)
    rule = "the sources' own splits"
    if holdout is not None:
        seed, num_holdouts = holdout["seed"], holdout["num_holdouts"]
        # CelebA partial copies: the whole pool; the Birds composite: its training images.
        pool_name = "pool" if num_holdouts == 2 else "train"
        pool = np.asarray(good[pool_name], np.int64)
        size = holdout_size(holdout["validation_size"], len(pool), num_holdouts, dataset)
        order = np.random.default_rng(seed).permutation(len(pool))
        good["validation"] = sorted(pool[order[:size]].tolist())
        if num_holdouts == 2:
            good["test"] = sorted(pool[order[size : 2 * size]].tolist())
        good["train"] = sorted(pool[order[num_holdouts * size :]].tolist())
        good["pool"] = []
        held = "validation and test" if num_holdouts == 2 else "validation"
        rule = (
            f"seeded hold-out (seed={seed}, validation_size={holdout['validation_size']!r}): {size} images "
            f"each for {held}, drawn with np.random.default_rng({seed}).permutation from the {len(pool)} usable "
            f"{'images' if num_holdouts == 2 else 'training images'}"
        )
    rows = {split: np.asarray(good[split], np.int64) for split in SPLIT_NAMES}
    split_sources = {}
    for split in SPLIT_NAMES:
        counts = {}
        for index in rows[split]:
            name = processed.items[index].source
            counts[name] = counts.get(name, 0) + 1
        split_sources[split] = counts
    return rows, split_sources, rule


def _manifest(
    dataset, key, resolution, describe_crop, box_scale, sources, processed, rows, split_sources, split_rule, seconds
) -> dict:
    per_source = []
    for source in sources:
        used = {split: split_sources[split].get(source.name, 0) for split in SPLIT_NAMES}
        rejected = [r for r in processed.rejected if r["source"] == source.name]
        per_source.append(
            {
                "name": source.name,
                "source": source.description,
                "listed": source.num_listed,
                "present": source.num_items(),
                "missing": len(source.missing),
                "missing_examples": source.missing[:20],
                "rejected": len(rejected),
                "used": used,
                "total_used": sum(used.values()),
                "notes": source.notes,
            }
        )
    manifest = {
        "format": CACHE_FORMAT,
        "key": key,
        "dataset": dataset,
        "resolution": resolution,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preprocess_seconds": round(seconds, 2),
        "crop": describe_crop,
        "box_scale": box_scale,
        "split_rule": split_rule,
        "splits": {split: int(len(rows[split])) for split in SPLIT_NAMES},
        "sources": per_source,
        "rejected": processed.rejected,
        "files": {split: f"{split}.npy" for split in SPLIT_NAMES},
        "names": NAMES_FILE,
        "pixel_format": "uint8 [num_images, R, R, 3] in [0, 255]",
    }
    if processed.windows:
        manifest["crop_windows"] = {
            size: {"rows": [w[0], w[0] + w[2]], "cols": [w[1], w[1] + w[3]]} for size, w in processed.windows.items()
        }
    if dataset == "birds":
        total = sum(manifest["splits"].values())
        manifest["paper_total"] = PAPER_BIRDS_TOTAL
        manifest["total"] = total
    return manifest


# ----------------------------------------------------------------------------------------------------
# Entry points (called by data.load_image_splits).
# ----------------------------------------------------------------------------------------------------


def check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or resolution not in RESOLUTIONS:
        raise ValueError(
            f"resolution={resolution!r} must be one of {RESOLUTIONS} for the RGB datasets; set dataset.resolution."
        )
    return int(resolution)


def check_fraction(value, what) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what}={value!r} must be a number in [0, 1].")
    return float(value)


def source_text(dataset, resolution, manifest, manifest_path, crop_text) -> str:
    parts = [
        f"{s['name']}={s['source']} ({s['total_used']} used: {s['used']['train']} train, "
        f"{s['used']['validation']} validation, {s['used']['test']} test"
        + (f"; {s['rejected']} rejected" if s["rejected"] else "")
        + "".join(f"; {note}" for note in s["notes"])
        + ")"
        for s in manifest["sources"]
    ]
    text = f"{dataset} {resolution}x{resolution}, {crop_text}; " + " + ".join(parts)
    if dataset == "birds":
        text += f"; total {manifest['total']} images vs the paper's {PAPER_BIRDS_TOTAL}"
    return f"{text}; splits: {manifest['split_rule']}; cache manifest {manifest_path}"
