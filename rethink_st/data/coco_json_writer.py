"""Writing examples as COCO instances JSON (what pycocotools.COCO and the COCO evaluator read).

`CocoJsonWriter` collects images and their instances (numpy dicts keyed by
`rethink_st.data.features`) and writes one JSON file: bbox [x, y, w, h] in pixels, area,
iscrowd, segmentation as RLE from `pycocotools.mask.encode`, categories 1..K. Optional
per-image extras (e.g. an image-level `label`) go into the image entry.
"""
import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_util

from rethink_st.data import features as F


def mask_to_rle(mask: np.ndarray) -> Dict[str, Any]:
  """COCO RLE (counts as a str) of a 0/1 [H, W] mask."""
  rle = mask_util.encode(np.asfortranarray((np.asarray(mask) > 0.5).astype(np.uint8)))
  return {'size': [int(v) for v in rle['size']], 'counts': rle['counts'].decode('ascii')}


class CocoJsonWriter:
  """Accumulates images and instances; `write(path)` dumps the COCO JSON (deterministic)."""

  def __init__(self, class_names: Sequence[str], supercategory: str = 'object',
               info: Optional[Mapping[str, Any]] = None):
    self._categories = [{'id': i + 1, 'name': name, 'supercategory': supercategory}
                        for i, name in enumerate(class_names)]
    self._images = []
    self._annotations = []
    self._info = dict(info or {})

  @property
  def num_images(self) -> int:
    return len(self._images)

  @property
  def num_annotations(self) -> int:
    return len(self._annotations)

  def add(self, image_id: int, file_name: str, example: Mapping[str, np.ndarray],
          **image_extras) -> None:
    """Adds one image; instances from BOXES (normalized), CLASSES, IS_CROWD, AREA and,
    if present, INSTANCE_MASKS (RLE segmentation; else the box as a polygon) and SCORES."""
    height, width = int(example[F.HEIGHT]), int(example[F.WIDTH])
    self._images.append({'id': int(image_id), 'file_name': file_name, 'height': height,
                         'width': width, **image_extras})
    boxes = np.asarray(example.get(F.BOXES, np.zeros((0, 4))), np.float64).reshape(-1, 4)
    classes = np.asarray(example.get(F.CLASSES, np.zeros(len(boxes))), np.int64)
    crowd = np.asarray(example.get(F.IS_CROWD, np.zeros(len(boxes))), np.int64)
    masks = example.get(F.INSTANCE_MASKS)
    scores = example.get(F.SCORES)
    for i, (ymin, xmin, ymax, xmax) in enumerate(boxes):
      x, y = xmin * width, ymin * height
      w, h = (xmax - xmin) * width, (ymax - ymin) * height
      ann = {'id': len(self._annotations) + 1, 'image_id': int(image_id),
             'category_id': int(classes[i]),
             'bbox': [round(float(v), 4) for v in (x, y, w, h)],
             'iscrowd': int(crowd[i])}
      if masks is not None:
        ann['segmentation'] = mask_to_rle(masks[i])
      else:
        ann['segmentation'] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
      if F.AREA in example:
        ann['area'] = float(np.asarray(example[F.AREA]).reshape(-1)[i])
      else:
        ann['area'] = float(w * h)
      if scores is not None:
        ann['score'] = float(np.asarray(scores).reshape(-1)[i])
      self._annotations.append(ann)

  def to_dict(self) -> Dict[str, Any]:
    return {'info': self._info, 'images': self._images, 'annotations': self._annotations,
            'categories': self._categories}

  def write(self, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(self.to_dict(), f, separators=(',', ':'), sort_keys=True)
    return path
