"""The one decoded-example format every source yields and every pipeline reads.

Keys are Model Garden's (`official.vision.dataloaders.tf_example_decoder`), plus three of
this project's for semantic masks, image-level labels and pseudo-label scores. A source may
leave out the optional keys it has no data for; pipelines that need one say so by name.

    source_id                  tf.string  []
    image                      tf.uint8   [H, W, 3]
    height, width              tf.int64   []
    groundtruth_classes        tf.int64   [N]     1..num_classes (0 is background)
    groundtruth_is_crowd       tf.bool    [N]
    groundtruth_area           tf.float32 [N]     pixels
    groundtruth_boxes          tf.float32 [N, 4]  normalized [ymin, xmin, ymax, xmax]
    groundtruth_instance_masks tf.float32 [N, H, W]   optional, 0/1
    groundtruth_semantic_mask  tf.uint8   [H, W, 1]   optional; 0 background,
                                                      1..num_classes, IGNORE_LABEL ignored
    groundtruth_label          tf.int64   []          optional; image-level class, 0-based
    groundtruth_scores         tf.float32 [N]         optional; pseudo-label box scores

The tf.Example features are those of Model Garden's `create_coco_tf_record.py`
(image/encoded, image/object/bbox/*, image/object/class/label, image/object/mask as PNGs, ...)
plus `image/segmentation/class/encoded` (PNG), `image/class/label` and
`image/object/score`; Model Garden's own decoders read the files we write.
"""

IGNORE_LABEL = 255
# The class of a detection pseudo box in the student's ignore band (pseudo_label_source's
# ignore_threshold): the anchors it matches are neither an object nor background in the loss.
IGNORE_BOX_CLASS = -1

SOURCE_ID = 'source_id'
IMAGE = 'image'
HEIGHT = 'height'
WIDTH = 'width'
CLASSES = 'groundtruth_classes'
IS_CROWD = 'groundtruth_is_crowd'
AREA = 'groundtruth_area'
BOXES = 'groundtruth_boxes'
INSTANCE_MASKS = 'groundtruth_instance_masks'
SEMANTIC_MASK = 'groundtruth_semantic_mask'
LABEL = 'groundtruth_label'
SCORES = 'groundtruth_scores'

DETECTION_KEYS = (SOURCE_ID, IMAGE, HEIGHT, WIDTH, CLASSES, IS_CROWD, AREA, BOXES)
# Source.dataset(images_only=True): the image's bytes as the source stores them (b'' if it
# stores none), beside SOURCE_ID, IMAGE, HEIGHT, WIDTH and nothing else.
ENCODED_IMAGE = 'encoded_image'
IMAGE_ONLY_KEYS = (SOURCE_ID, IMAGE, HEIGHT, WIDTH, ENCODED_IMAGE)
# Source.dataset(images_only=True, unreadable='flag') adds this bool: False for an image
# that could not be read or decoded (its example holds the id, an empty [0, 0, 3] image,
# height = width = 0 and b'' bytes), so the caller can count it.
READABLE = 'readable'

# tf.Example feature keys beyond Model Garden's detection ones.
TFEX_SEMANTIC_MASK = 'image/segmentation/class/encoded'
TFEX_LABEL = 'image/class/label'
TFEX_SCORE = 'image/object/score'
