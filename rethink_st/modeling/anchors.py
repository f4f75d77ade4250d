"""Anchor settings shared by the detection model (head outputs) and the input pipeline
(anchor labeling): one configurable, so the two can never disagree."""
import dataclasses
from typing import Tuple

import gin


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
  min_level: int = 3
  max_level: int = 7
  num_scales: int = 3
  aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  anchor_size: float = 4.0

  @property
  def num_anchors_per_location(self) -> int:
    return self.num_scales * len(self.aspect_ratios)


@gin.configurable
def anchor_config(min_level: int = 3,
                  max_level: int = 7,
                  num_scales: int = 3,
                  aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0),
                  anchor_size: float = 4.0) -> AnchorConfig:
  """The paper's RetinaNet anchors: levels P3-P7, 3 scales x 3 ratios = 9 per location."""
  if not 1 <= min_level <= max_level:
    raise ValueError(f'anchor_config: need 1 <= min_level <= max_level, got '
                     f'min_level={min_level}, max_level={max_level}')
  return AnchorConfig(min_level, max_level, num_scales, tuple(aspect_ratios), anchor_size)
