"""Drawing helpers shared by previews, augmentation grids and pseudo-label reports.

Pure numpy + PIL (no TensorFlow, no display): `draw_example` overlays masks, boxes, class
names and scores on an image; `save_grid` tiles images (with optional titles) into one PNG.
Class id c is drawn with the name `class_names[c - 1]` (digits '0'..'9' by default).
"""
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DIGIT_NAMES = tuple(str(d) for d in range(10))
IGNORE_LABEL = 255

# A fixed palette: class id c -> colour PALETTE[c % len(PALETTE)] (0 is background).
PALETTE = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0), (170, 255, 195),
], np.uint8)


def class_colour(class_id: int) -> tuple:
  return tuple(int(v) for v in PALETTE[int(class_id) % len(PALETTE)])


def _to_uint8_rgb(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  if image.dtype != np.uint8:
    image = np.asarray(image, np.float32)
    if image.size and image.max() <= 1.0 + 1e-6 and image.min() >= 0:
      image = image * 255.0
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
  return image


def _font():
  return ImageFont.load_default()


def draw_example(image,
                 boxes=None,
                 classes=None,
                 scores=None,
                 instance_masks=None,
                 semantic_mask=None,
                 *,
                 class_names: Sequence[str] = DIGIT_NAMES,
                 scale: int = 1,
                 mask_alpha: float = 0.45,
                 min_score: float = 0.0) -> np.ndarray:
  """Returns a uint8 [H*scale, W*scale, 3] picture of an example.

  Args:
    image: [H, W, 3] (or [H, W] / [H, W, 1]) uint8, or float in [0, 1] or [0, 255].
    boxes: [N, 4] normalized [ymin, xmin, ymax, xmax].
    classes: [N] class ids (1-based; drawn as class_names[id - 1]).
    scores: [N] optional box scores, drawn after the name; boxes below min_score are skipped.
    instance_masks: [N, H, W] 0/1 (or probabilities, thresholded at 0.5).
    semantic_mask: [H, W] or [H, W, 1] class ids; 0 is left undrawn, 255 (ignore) is white.
    class_names: names of class ids 1, 2, ...
    scale: integer upscaling (nearest) so small images stay legible.
    mask_alpha: opacity of mask overlays.
    min_score: boxes with a score below it are not drawn.
  """
  img = _to_uint8_rgb(image).astype(np.float32)
  h, w = img.shape[:2]
  n = 0 if boxes is None else len(boxes)
  classes = np.zeros(n, np.int64) if classes is None else np.asarray(classes).reshape(-1)
  keep = np.ones(n, bool) if scores is None else np.asarray(scores).reshape(-1) >= min_score
  if semantic_mask is not None:
    sem = np.asarray(semantic_mask).reshape(h, w).astype(np.int64)
    colour = PALETTE[sem % len(PALETTE)].astype(np.float32)
    colour[sem == IGNORE_LABEL] = 255.0
    on = (sem > 0)[..., None]
    img = np.where(on, (1 - mask_alpha) * img + mask_alpha * colour, img)
  if instance_masks is not None:
    masks = np.asarray(instance_masks).reshape(-1, h, w)
    for i, m in enumerate(masks):
      if i < n and not keep[i]:
        continue
      cls = int(classes[i]) if i < len(classes) else 1
      on = (m > 0.5)[..., None]
      img = np.where(on, (1 - mask_alpha) * img + mask_alpha * np.array(class_colour(cls)), img)
  out = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8))
  if scale != 1:
    out = out.resize((w * scale, h * scale), Image.NEAREST)
  draw = ImageDraw.Draw(out)
  font = _font()
  sh, sw = h * scale, w * scale
  for i in range(n):
    if not keep[i]:
      continue
    ymin, xmin, ymax, xmax = (float(v) for v in np.asarray(boxes[i]).reshape(4))
    cls = int(classes[i])
    colour = class_colour(cls)
    x0, y0 = xmin * sw, ymin * sh
    draw.rectangle([x0, y0, max(x0, xmax * sw - 1), max(y0, ymax * sh - 1)], outline=colour)
    name = class_names[cls - 1] if 1 <= cls <= len(class_names) else str(cls)
    text = name if scores is None else f'{name}:{float(scores[i]):.2f}'
    tx, ty = x0 + 1, max(0.0, y0 - 11)
    tb = draw.textbbox((tx, ty), text, font=font)
    draw.rectangle(tb, fill=colour)
    draw.text((tx, ty), text, fill=(0, 0, 0) if sum(colour) > 380 else (255, 255, 255),
              font=font)
  return np.asarray(out, np.uint8)


def save_grid(images: Sequence[np.ndarray], path: str, ncols: int = 4,
              titles: Optional[Sequence[str]] = None, pad: int = 4) -> str:
  """Tiles `images` (uint8 or float, any sizes) in rows of `ncols` into a PNG at `path`
  (parent directories are created), with an optional title above each. Returns path."""
  images = [_to_uint8_rgb(im) for im in images]
  if not images:
    raise ValueError('save_grid: no images to save')
  if titles is not None and len(titles) != len(images):
    raise ValueError(f'save_grid: {len(titles)} titles for {len(images)} images')
  ncols = max(1, min(int(ncols), len(images)))
  nrows = (len(images) + ncols - 1) // ncols
  cell_h = max(im.shape[0] for im in images)
  cell_w = max(im.shape[1] for im in images)
  title_h = 12 if titles is not None else 0
  grid = Image.new('RGB', (ncols * (cell_w + pad) + pad,
                           nrows * (cell_h + title_h + pad) + pad), (255, 255, 255))
  draw = ImageDraw.Draw(grid)
  font = _font()
  for i, im in enumerate(images):
    r, c = divmod(i, ncols)
    x = pad + c * (cell_w + pad)
    y = pad + r * (cell_h + title_h + pad)
    if titles is not None:
      draw.text((x, y), str(titles[i]), fill=(0, 0, 0), font=font)
    grid.paste(Image.fromarray(im), (x, y + title_h))
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  grid.save(path, format='PNG')
  return path
