"""Occlusion masks for image completion (paper Sec. 4.3, Fig. 4) on this project's aligned CelebA face crops.
Gin-free, NumPy (+ `tf.io` to decode a PNG).

Convention: a mask m is float32 `[R, R, 1]` (or `[N, R, R, 1]`) with 1 = OBSERVED pixel and 0 = MISSING, the m of
Eq. 5 (`crvae_tf.models.completion`), broadcast over the colour channels.

Named regions (`named_mask(name, resolution)`), for square R x R crops of any R:
  right_half  columns R - R // 2 ... R - 1 missing (the viewer's right; exactly half for even R).
  eyes        one box over both eyes.
  mouth       one box over the mouth.

Where the eyes and the mouth are. CelebA's aligned images (178x218, width x height) were made by warping
each face so that its five landmarks land near one template; `list_landmarks_align_celeba.txt` gives each
image's landmarks after alignment. The template positions, in 178x218 pixels (x, y):

    lefteye (69, 111)   righteye (108, 111)   nose (88, 136)   leftmouth (72, 152)   rightmouth (105, 152)

(the widely used aligned-CelebA template, e.g. in the CelebA alignment code and face-alignment scripts built on
it; shared/data holds no landmark file, so these are not re-derived here). They agree with the mean of the
9,000 training faces of shared/data at R = 64 (the half-resolution copy): in the eye band its darkest row is
row 30 and its darkest columns are 22-23 and 39-40, where the template maps to v = 30.9 and u = 23.6, 40.4; its
mouth line (darkest row below the nose) is row 48, the template's v = 48.7.
The data pipeline (`crvae_tf.data.celeba`) crops rows 40:188, columns 15:163 (148 x 148, `CELEBA_FACE_CROP`) and
resizes to R x R, so a point (x, y) of the aligned image maps to

    u = (x + 0.5 - left) * R / width,   v = (y + 0.5 - top) * R / height       (continuous; pixel i spans [i, i+1))

with the crop window rounded for the source image's size as the pipeline rounds it (`celeba_crop_window`;
e.g. the 89x109 half-resolution copy), the landmark scaled by the same factor. With d the distance between the
eyes (39 px in 178x218, 16.9 px at R = 64), the boxes (continuous, then widened to whole pixels) are

    eyes   columns [lefteye_u - 0.45 d, righteye_u + 0.45 d], rows [eye_v - 0.3 d, eye_v + 0.3 d]
    mouth  columns [leftmouth_u - 0.3 d, rightmouth_u + 0.3 d], rows [mouth_v - 0.35 d, mouth_v + 0.35 d]

(eye_v, mouth_v: the mean of the two points' v). At R = 64 the template gives eyes rows 25:36, columns 15:49 and
mouth rows 42:55, columns 19:45. `landmark_masks` builds the same boxes per image from
`list_landmarks_align_celeba.txt` (`parse_landmarks`).

Per-image boxes of a dataset (`dataset_landmark_masks`, behind `explore --mode=complete --landmarks=PATH`): the
CelebA cache records the source file name of every row (`ImageSplits.names`, `image_cache` "Names") and the face
window it cut from each image size (the manifest's `crop_windows`); each row's landmarks are looked up by file
name (extension ignored) and mapped through that exact window. Refused with a message saying what to do: a
region other than eyes / mouth, a dataset other than CelebA (MNIST and the sprites have no files; birds no
landmarks), CelebA stored at several image sizes, file names the landmark file lacks (a few are named; tfds
celeb_a examples have no file names: read CelebA from a folder, `dataset.local_path`), and a cache written before
names were recorded (`image_cache.missing_names_error`: delete the folder it names to rebuild it).

User masks (`load_mask_png`): a PNG (or any image `tf.io.decode_image` reads), WHITE = OBSERVED, black =
missing: the image IS m, drawn as the paper's Eq. 5 defines it. Colour images are converted to grey, then
resized to R x R (nearest neighbour) and thresholded at 0.5 (of 255). Non-square images, and masks with no
missing or no observed pixel, are refused with a message saying so.
"""

import json
import os
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple

import numpy as np
import tensorflow as tf

from crvae_tf.data.image_cache import missing_names_error
from crvae_tf.data.image_files import CELEBA_ALIGNED_SHAPE
from crvae_tf.data.image_files import CELEBA_FACE_CROP
from crvae_tf.data.image_files import celeba_crop_window

MASK_NAMES = ("right_half", "eyes", "mouth")
LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
# (x, y) in 178x218 aligned-CelebA pixels: the alignment template (module docstring).
CELEBA_LANDMARK_TEMPLATE = np.array([[69.0, 111.0], [108.0, 111.0], [88.0, 136.0], [72.0, 152.0], [105.0, 152.0]])
# Box half-extents as fractions of the inter-ocular distance d: (horizontal margin, vertical half-height).
EYES_BOX = (0.45, 0.3)
MOUTH_BOX = (0.3, 0.35)
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
LANDMARK_REGIONS = ("eyes", "mouth")


class MaskError(ValueError):
    """A mask that cannot be used (wrong size, nothing missing, nothing observed, unreadable)."""


def _check_resolution(resolution) -> int:
    if int(resolution) != resolution or int(resolution) < 2:
        raise MaskError(f"resolution={resolution!r} must be an integer >= 2 (the side of the square images).")
    return int(resolution)


def right_half_mask(resolution: int) -> np.ndarray:
    """`[R, R, 1]`: the right R // 2 columns missing (exactly half the pixels for even R)."""
    resolution = _check_resolution(resolution)
    mask = np.ones((resolution, resolution, 1), np.float32)
    mask[:, resolution - resolution // 2 :] = 0.0
    return mask


def to_crop_coordinates(points, resolution: int, source_shape=CELEBA_ALIGNED_SHAPE, crop=CELEBA_FACE_CROP, window=None):
    """Aligned-image pixel coordinates (x, y) `[..., 2]` -> continuous (u, v) in the R x R face crop.

    `source_shape`: (height, width) of the stored aligned images (218x178, or 109x89 for the half-resolution
    copy); the landmarks are always given in 178x218 coordinates and are scaled to it, and the crop window is
    the pipeline's rounding of `crop` for that size (`celeba_crop_window`), or `window` (top, left, height,
    width) in pixels of the stored image when given (as the cache's manifest records it; `crop` is then unused).
    """
    resolution = _check_resolution(resolution)
    height, width = (int(v) for v in source_shape)
    if window is None:
        window = celeba_crop_window(height, width, crop)
    top, left, window_height, window_width = (int(v) for v in window)
    points = np.asarray(points, np.float64)
    x = points[..., 0] * width / CELEBA_ALIGNED_SHAPE[1]
    y = points[..., 1] * height / CELEBA_ALIGNED_SHAPE[0]
    # Pixel centres: landmark pixel x covers [x, x + 1) of the scaled image (scaled by the same factor).
    u = (x + 0.5 * width / CELEBA_ALIGNED_SHAPE[1] - left) * resolution / window_width
    v = (y + 0.5 * height / CELEBA_ALIGNED_SHAPE[0] - top) * resolution / window_height
    return np.stack([u, v], axis=-1)


def region_box(landmarks_uv, region: str, resolution: int) -> Tuple[int, int, int, int]:
    """(top, left, bottom, right), whole pixels (bottom / right exclusive), clipped to the image, of the 'eyes'
    or 'mouth' box for five landmarks `[5, 2]` in crop coordinates (`to_crop_coordinates`)."""
    points = np.asarray(landmarks_uv, np.float64)
    if points.shape != (5, 2):
        raise MaskError(f"expected 5 landmarks (x, y) {LANDMARK_NAMES}, got shape {points.shape}.")
    d = float(np.hypot(*(points[1] - points[0])))
    if region == "eyes":
        (a, b), (margin, half) = points[:2], EYES_BOX
    elif region == "mouth":
        (a, b), (margin, half) = points[3:], MOUTH_BOX
    else:
        raise MaskError(f"region={region!r} must be 'eyes' or 'mouth'.")
    centre_v = 0.5 * (a[1] + b[1])
    left, right = min(a[0], b[0]) - margin * d, max(a[0], b[0]) + margin * d
    top, bottom = centre_v - half * d, centre_v + half * d
    box = (int(np.floor(top)), int(np.floor(left)), int(np.ceil(bottom)), int(np.ceil(right)))
    box = tuple(min(max(v, 0), resolution) for v in box)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise MaskError(f"the {region} box of landmarks {points.tolist()} lies outside the {resolution}px crop.")
    return box


def box_mask(resolution: int, box) -> np.ndarray:
    """`[R, R, 1]` with the (top, left, bottom, right) box missing."""
    mask = np.ones((resolution, resolution, 1), np.float32)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 0.0
    return mask


def named_mask(name: str, resolution: int) -> np.ndarray:
    """'right_half', 'eyes' or 'mouth' for R x R face crops of the default crop: `[R, R, 1]`."""
    resolution = _check_resolution(resolution)
    if name == "right_half":
        return right_half_mask(resolution)
    if name in ("eyes", "mouth"):
        uv = to_crop_coordinates(CELEBA_LANDMARK_TEMPLATE, resolution)
        return box_mask(resolution, region_box(uv, name, resolution))
    raise MaskError(f"mask {name!r} is not one of {list(MASK_NAMES)} (or give a PNG file: white = observed).")


def parse_landmarks(path) -> Dict[str, np.ndarray]:
    """Reads `list_landmarks_align_celeba.txt`: image file name -> float `[5, 2]` (x, y) in 178x218 pixels.

    Format: a first line with the number of images, a header line naming the ten columns
    (lefteye_x lefteye_y righteye_x ... rightmouth_y), then `<file> <ten integers>` per image. Kaggle's CSV
    copy (`image_id,lefteye_x,...` header, comma-separated) is read too.
    """
    landmarks = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            fields = line.replace(",", " ").split()
            if not fields:
                continue
            if len(fields) == 1 and fields[0].isdigit() and number == 1:
                continue  # the image count
            if fields[0] in ("lefteye_x", "image_id"):
                continue  # the header
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                values = []
            if len(values) != 10:
                raise MaskError(
                    f"{path}:{number}: expected '<image file> lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                    f"leftmouth_x leftmouth_y rightmouth_x rightmouth_y' (ten numbers), got {line.strip()!r}."
                )
            landmarks[fields[0]] = np.array(values).reshape(5, 2)
    if not landmarks:
        raise MaskError(f"{path} lists no landmarks (expected the format of {LANDMARKS_FILE}).")
    return landmarks


def landmark_masks(
    landmarks: Dict[str, np.ndarray],
    names: Sequence[str],
    region: str,
    resolution: int,
    source_shape=CELEBA_ALIGNED_SHAPE,
    crop=CELEBA_FACE_CROP,
    window=None,
) -> np.ndarray:
    """Per-image 'eyes' / 'mouth' masks `[N, R, R, 1]` from each image's own landmarks (`parse_landmarks`).

    `names`: the images' file names as in the landmark file (e.g. '000001.jpg'; the extension is ignored, so
    '000001.png' matches too); names the file lacks are a `MaskError` that counts them and names a few.
    `source_shape`, `crop`, `window`: the stored aligned images' (height, width) and face window (see
    `to_crop_coordinates`).
    """
    resolution = _check_resolution(resolution)
    if region not in LANDMARK_REGIONS:
        raise MaskError(f"region={region!r}: landmark boxes exist for {list(LANDMARK_REGIONS)} only.")
    by_stem = {os.path.splitext(name)[0]: value for name, value in landmarks.items()}
    stems = [os.path.splitext(os.path.basename(name))[0] for name in names]
    missing = [name for name, stem in zip(names, stems) if stem not in by_stem]
    if missing:
        hint = ""
        if any("[" in name for name in missing):
            hint = (
                " Names like 'celeb_a/validation[0]' are tensorflow-datasets examples, which have no file names: "
                "read CelebA from a folder of aligned images (dataset.local_path) to use per-image landmarks."
            )
        raise MaskError(
            f"{len(missing)} of the {len(names)} images have no landmarks in the landmark file ({len(by_stem)} "
            f"images listed), e.g. {', '.join(repr(name) for name in missing[:5])}. Give the "
            f"{LANDMARKS_FILE} that covers these images.{hint}"
        )
    masks = []
    for stem in stems:
        uv = to_crop_coordinates(by_stem[stem], resolution, source_shape, crop, window)
        masks.append(box_mask(resolution, region_box(uv, region, resolution)))
    return np.stack(masks) if masks else np.zeros((0, resolution, resolution, 1), np.float32)


def dataset_landmark_masks(
    splits, landmarks: Dict[str, np.ndarray], region: str, split: str = "validation", count: Optional[int] = None
) -> np.ndarray:
    """Per-image 'eyes' / 'mouth' masks `[count, R, R, 1]` of the first `count` (default all) images of a CelebA
    `ImageSplits` split, from each row's file name (`splits.names`) and landmarks (module docstring)."""
    if region not in LANDMARK_REGIONS:
        raise MaskError(f"per-image landmark boxes exist for the masks {list(LANDMARK_REGIONS)} only, not {region!r}.")
    if splits.name != "celeba":
        why = "its images come from no files" if splits.names is None else "its images have no face landmarks"
        raise MaskError(
            f"per-image landmark boxes are for aligned CelebA faces (dataset.name='celeba' read from a folder); this "
            f"dataset is {splits.name!r} and {why}. Use the fixed boxes (no landmark file) or a mask image."
        )
    if splits.names is None:
        raise missing_names_error(splits.name, splits.manifest_path, "a per-image landmark mask")
    names = list(splits.names[split])[: len(splits.split(split)) if count is None else int(count)]
    resolution = int(splits.image_shape[0])
    window, source_shape = None, CELEBA_ALIGNED_SHAPE
    windows = {}
    if splits.manifest_path is not None:
        with open(splits.manifest_path, encoding="utf-8") as f:
            windows = json.load(f).get("crop_windows", {})
    if len(windows) > 1:
        raise MaskError(
            f"the CelebA images of {splits.manifest_path} come in {len(windows)} sizes ({sorted(windows)}), and the "
            "cache does not record which row had which size, so the landmarks cannot be placed. Use one copy of "
            "CelebA (all 178x218, or all of one downsampled size)."
        )
    if windows:
        ((size, recorded),) = windows.items()
        source_shape = tuple(int(v) for v in size.split("x"))
        rows, cols = recorded["rows"], recorded["cols"]
        window = (rows[0], cols[0], rows[1] - rows[0], cols[1] - cols[0])
    return landmark_masks(landmarks, names, region, resolution, source_shape, window=window)


def check_mask(mask, what="the mask") -> np.ndarray:
    """Refuses a mask with no missing or no observed pixel; returns it as float32."""
    mask = np.asarray(mask, np.float32)
    if not np.any(mask < 0.5):
        raise MaskError(f"{what} has no missing pixel (all observed, m = 1): nothing to complete.")
    if not np.any(mask > 0.5):
        raise MaskError(
            f"{what} has no observed pixel (all missing, m = 0): nothing to complete from. In a mask image, "
            "white = observed, black = missing."
        )
    return mask


def load_mask_png(path, resolution: int) -> np.ndarray:
    """A user mask image (white = observed, black = missing) -> `[R, R, 1]` float32 in {0, 1}.

    Any square image is accepted (converted to grey, resized to R x R nearest-neighbour, thresholded at 0.5);
    anything else is a `MaskError` saying what was wrong.
    """
    resolution = _check_resolution(resolution)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask file {path} does not exist (give right_half, eyes, mouth or a PNG path).")
    with open(path, "rb") as f:
        payload = f.read()
    try:
        image = tf.io.decode_image(payload, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        raise MaskError(f"mask file {path} is not a readable image (PNG, JPEG, BMP, GIF): {error}") from error
    height, width, channels = image.shape
    if height != width:
        raise MaskError(
            f"mask file {path} is {width}x{height} (width x height); it must be square (the images are "
            f"{resolution}x{resolution}): draw it at {resolution}x{resolution}."
        )
    image = image.astype(np.float32) / (65535.0 if image.dtype == np.uint16 else 255.0)
    if channels in (2, 4):  # drop alpha
        image = image[..., : channels - 1]
    grey = image.mean(axis=-1, keepdims=True)
    rows = ((np.arange(resolution) + 0.5) * height / resolution).astype(np.int64)  # nearest (pixel centres)
    grey = grey[rows][:, rows]
    mask = (grey > 0.5).astype(np.float32)
    return check_mask(mask, f"mask file {path} (at {resolution}x{resolution})")


def check_mask_spec(spec: str) -> str:
    """Refuses an unknown mask name or a missing mask file before any work; returns the file-name stem."""
    if spec in MASK_NAMES:
        return spec
    if os.path.splitext(spec)[1] or os.path.sep in spec or os.path.exists(spec):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f"mask file {spec} does not exist (give right_half, eyes, mouth or a PNG path).")
        stem = os.path.splitext(os.path.basename(spec))[0]
        return "file_" + ("".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "mask")
    raise MaskError(f"--mask={spec!r} is not one of {list(MASK_NAMES)} nor an image file (white = observed).")


def mask_from_spec(spec: str, resolution: int) -> Tuple[str, np.ndarray]:
    """'right_half' | 'eyes' | 'mouth' | a path to a mask image -> (a short name for file names, `[R, R, 1]`)."""
    name = check_mask_spec(spec)
    if spec in MASK_NAMES:
        return name, named_mask(spec, resolution)
    return name, load_mask_png(spec, resolution)
