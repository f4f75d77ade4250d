"""CocoJsonWriter: pycocotools reads what it writes, with and without instance masks."""
import numpy as np
from pycocotools.coco import COCO

from rethink_st.data import coco_json_writer
from rethink_st.data import features as F


def test_writer_output_loads_in_pycocotools(tmp_path):
  writer = coco_json_writer.CocoJsonWriter(['cat', 'dog'], info={'v': 1})
  mask = np.zeros((1, 20, 40), np.uint8)
  mask[0, 5:10, 10:30] = 1
  writer.add(1, 'a.png', {F.HEIGHT: 20, F.WIDTH: 40, F.BOXES: np.array([[0.25, 0.25, 0.5, 0.75]]),
                          F.CLASSES: np.array([2]), F.AREA: np.array([100.0]),
                          F.INSTANCE_MASKS: mask}, label=1)
  writer.add(2, 'b.png', {F.HEIGHT: 20, F.WIDTH: 40, F.BOXES: np.array([[0, 0, 0.5, 0.5]]),
                          F.CLASSES: np.array([1]), F.SCORES: np.array([0.75])})
  writer.add(3, 'c.png', {F.HEIGHT: 20, F.WIDTH: 40})
  assert (writer.num_images, writer.num_annotations) == (3, 2)
  coco = COCO(writer.write(str(tmp_path / 'x' / 'i.json')))
  assert [c['name'] for c in coco.loadCats([1, 2])] == ['cat', 'dog']
  a, b = coco.loadAnns(coco.getAnnIds())
  assert a['bbox'] == [10.0, 5.0, 20.0, 5.0] and a['area'] == 100.0 and a['category_id'] == 2
  np.testing.assert_array_equal(coco.annToMask(a), mask[0])
  assert b['area'] == 200.0 and b['score'] == 0.75
  assert coco.annToMask(b)[:10, :20].sum() >= 150        # the box as a polygon
  assert coco.loadImgs(1)[0]['label'] == 1 and coco.getAnnIds(imgIds=3) == []
