"""Small STL-10 folders in the exact binary layout of the official stl10_binary/ (column-major 96x96x3 uint8, labels
1..10, fold_indices.txt), for the STL-10 reader and the semi-supervised protocol's tests."""

import os

import numpy as np

SIDE = 96


def position_images(count: int, base: int) -> np.ndarray:
    """uint8 `[count, 96, 96, 3]` (rows, columns, RGB) whose pixel (r, c, ch) of image i is (r + 2c + 50ch + base + i)
    mod 256: rows, columns and channels all differ, so a reader that misses the column-major transpose fails."""
    r, c, ch = np.meshgrid(np.arange(SIDE), np.arange(SIDE), np.arange(3), indexing="ij")
    return np.stack([((r + 2 * c + 50 * ch + base + i) % 256).astype(np.uint8) for i in range(count)])


def colour_images(labels: np.ndarray, seed: int, noise: float = 20.0) -> np.ndarray:
    """uint8 `[N, 96, 96, 3]`: image i is the flat colour of its class (10 distinct RGB colours) + uniform noise."""
    colours = np.array(
        [[230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [230, 30, 230], [30, 230, 230], [240, 240, 240],
         [20, 20, 20], [240, 140, 20], [120, 120, 120]],
        np.float32,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    images = colours[labels][:, None, None, :] + rng.uniform(-noise, noise, (len(labels), SIDE, SIDE, 3))
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def write_images(path: str, images: np.ndarray) -> None:
    """`[N, 96, 96, 3]` -> STL-10's column-major bytes (each image as channel, column, row)."""
    np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tofile(path)


def write_stl10_folder(
    root,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    unlabeled: np.ndarray,
    folds,
) -> str:
    """Writes the six files of stl10_binary/ into `root` (labels 0..9 are written as 1..10); returns `root`."""
    os.makedirs(root, exist_ok=True)
    write_images(os.path.join(root, "train_X.bin"), train_images)
    write_images(os.path.join(root, "test_X.bin"), test_images)
    write_images(os.path.join(root, "unlabeled_X.bin"), unlabeled)
    (np.asarray(train_labels) + 1).astype(np.uint8).tofile(os.path.join(root, "train_y.bin"))
    (np.asarray(test_labels) + 1).astype(np.uint8).tofile(os.path.join(root, "test_y.bin"))
    with open(os.path.join(root, "fold_indices.txt"), "w") as f:
        for fold in folds:
            f.write(" ".join(str(int(i)) for i in fold) + " \n")  # the official file ends each line with a space
    return root


def write_position_folder(root, num_train=20, num_test=10, num_unlabeled=30, fold_size=2, seed=0) -> str:
    """A folder of position-coded images (train base 0, test 100, unlabeled 200), labels i mod 10, 10 random folds."""
    rng = np.random.default_rng(seed)
    return write_stl10_folder(
        root,
        position_images(num_train, 0),
        np.arange(num_train) % 10,
        position_images(num_test, 100),
        np.arange(num_test) % 10,
        position_images(num_unlabeled, 200),
        [rng.permutation(num_train)[:fold_size] for _ in range(10)],
    )


def write_colour_folder(root, num_train=60, num_test=40, num_unlabeled=40, fold_size=30, seed=0) -> str:
    """A learnable folder: every image is its class's colour + noise (unlabeled images too, random classes)."""
    rng = np.random.default_rng(seed)
    train_labels, test_labels = np.arange(num_train) % 10, np.arange(num_test) % 10
    return write_stl10_folder(
        root,
        colour_images(train_labels, seed),
        train_labels,
        colour_images(test_labels, seed + 1),
        test_labels,
        colour_images(rng.integers(0, 10, num_unlabeled), seed + 2),
        [rng.permutation(num_train)[:fold_size] for _ in range(10)],
    )
