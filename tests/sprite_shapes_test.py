"""The sprites' shape accuracy: pose-matched template matching against the ground-truth factors."""

import numpy as np
import tensorflow as tf

from crvae_tf import data
from crvae_tf.evaluation import sprite_shapes


class SpriteShapesTest(tf.test.TestCase):
    def test_clean_images_are_classified_exactly_and_blobs_near_chance(self):
        images, factors = data.generate_sprites(96, seed=5, radius=11.0, scale_range=(0.6, 1.0))
        self.assertEqual(sprite_shapes.shape_accuracy(images, factors, radius=11.0), 1.0)
        confusion = sprite_shapes.shape_confusion(images, factors, radius=11.0)
        np.testing.assert_array_equal(confusion, np.diag(np.bincount(factors["shape"], minlength=4)))
        # A blob with the right position and ink (a disc of each image's area) carries no shape: every
        # prediction falls on whichever shapes are closest to a disc, so the accuracy is far from 1.
        yy, xx = np.mgrid[:28, :28] + 0.5
        cx = 11.0 + 6.0 * factors["x"][:, None, None]
        cy = 11.0 + 6.0 * factors["y"][:, None, None]
        area = images.sum(axis=(1, 2, 3))[:, None, None]
        discs = (np.hypot(xx - cx, yy - cy) <= np.sqrt(area / np.pi)).astype(np.float32)[..., None]
        predicted = sprite_shapes.nearest_shape(discs, factors, radius=11.0)
        self.assertLess(np.mean(predicted == factors["shape"]), 0.6)
        self.assertLessEqual(len(np.unique(predicted)), 3)

    def test_nearest_shape_against_a_hand_computed_distance(self):
        images, factors = data.generate_sprites(8, seed=1)
        # Swap each image for the rendering of the next shape at the same pose: that shape is predicted.
        shifted = dict(factors, shape=(factors["shape"] + 1) % 4)
        swapped = data.render_sprites(shifted)
        np.testing.assert_array_equal(sprite_shapes.nearest_shape(swapped, factors), shifted["shape"])
        # The radius matters: scoring large sprites with the default radius misses the poses.
        large, large_factors = data.generate_sprites(64, seed=1, radius=13.0)
        self.assertLess(sprite_shapes.shape_accuracy(large, large_factors, radius=9.0), 1.0)


if __name__ == "__main__":
    tf.test.main()
