"""image_folder_source: recursive unlabeled images; unreadable files skipped and counted."""
import io

from PIL import Image
import rethink_st  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from rethink_st.data import features as F
from rethink_st.data import sources
from rethink_st.errors import UserError


def _image(value, height=6, width=5):
  image = np.full([height, width, 3], value, np.uint8)
  image[0, 0] = [1, 2, 3]
  return image


@pytest.fixture()
def folder(tmp_path):
  """5 good images in nested folders (png, jpg, bmp, gif, upper-case JPEG) + 3 bad + 1 text."""
  (tmp_path / 'a' / 'b').mkdir(parents=True)
  (tmp_path / 'one.png').write_bytes(tf.io.encode_png(_image(10)).numpy())
  (tmp_path / 'a' / 'two.jpg').write_bytes(tf.io.encode_jpeg(_image(20, 7, 9)).numpy())
  (tmp_path / 'a' / 'b' / 'three.JPEG').write_bytes(tf.io.encode_jpeg(_image(30)).numpy())
  (tmp_path / 'a' / 'four.bmp').write_bytes(_bmp())
  (tmp_path / 'five.gif').write_bytes(_gif())
  (tmp_path / 'zero.png').write_bytes(b'')
  (tmp_path / 'a' / 'notanimage.jpg').write_bytes(b'hello, I am text')
  truncated = tf.io.encode_png(_image(50, 20, 20)).numpy()
  (tmp_path / 'a' / 'b' / 'truncated.png').write_bytes(truncated[:len(truncated) // 2])
  (tmp_path / 'readme.txt').write_text('not listed: wrong extension')
  return tmp_path


def _bmp():
  out = io.BytesIO()
  Image.fromarray(_image(40, 3, 4)).save(out, format='BMP')
  return out.getvalue()


def _gif():
  out = io.BytesIO()
  frames = [Image.fromarray(_image(60, 4, 4)), Image.fromarray(_image(70, 4, 4))]
  frames[0].save(out, format='GIF', save_all=True, append_images=frames[1:])
  return out.getvalue()


def test_reads_good_images_and_counts_bad_ones(folder):
  source = sources.image_folder_source(str(folder))
  assert source.num_classes is None
  assert len(source.files) == 8  # the .txt file is not listed
  examples = list(source.dataset())
  ids = [ex[F.SOURCE_ID].numpy().decode() for ex in examples]
  assert ids == ['a/b/three.JPEG', 'a/four.bmp', 'a/two.jpg', 'five.gif', 'one.png']
  for ex in examples:
    assert set(ex) == {F.SOURCE_ID, F.IMAGE, F.HEIGHT, F.WIDTH}
    assert ex[F.IMAGE].dtype == tf.uint8 and ex[F.IMAGE].shape[-1] == 3
    assert ex[F.IMAGE].shape[:2] == (int(ex[F.HEIGHT]), int(ex[F.WIDTH]))
  two = examples[2]
  assert two[F.IMAGE].shape == (7, 9, 3)
  assert examples[3][F.IMAGE].shape == (4, 4, 3)  # first frame of the animated gif
  assert source.skipped == 3
  assert sorted(p.split('/')[-1] for p in source.skipped_files) == [
      'notanimage.jpg', 'truncated.png', 'zero.png']
  # A second pass counts the same files once.
  assert len(list(source.dataset(shuffle=True, seed=2))) == 5
  assert source.skipped == 3


def test_shards_and_fraction(folder):
  source = sources.image_folder_source(str(folder))
  shards = [[ex[F.SOURCE_ID].numpy() for ex in source.dataset(num_shards=2, shard_index=i)]
            for i in range(2)]
  assert sorted(shards[0] + shards[1]) == sorted(
      ex[F.SOURCE_ID].numpy() for ex in source.dataset())
  half = sources.image_folder_source(str(folder), fraction=0.5)
  kept = {ex[F.SOURCE_ID].numpy().decode() for ex in half.dataset()}
  expected = {p for p in ['a/b/three.JPEG', 'a/four.bmp', 'a/two.jpg', 'five.gif', 'one.png']
              if sources.in_fraction(p, 0.5, 0).numpy()}
  assert kept == expected


def test_missing_directory(tmp_path):
  missing = str(tmp_path / 'nope')
  with pytest.raises(UserError, match='does not exist') as e:
    sources.image_folder_source(missing)
  assert missing in str(e.value).splitlines()[0]


def test_directory_without_images(tmp_path):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'notes.txt').write_text('x')
  with pytest.raises(UserError, match='holds no images') as e:
    sources.ImageFolderSource(str(tmp_path))
  assert str(tmp_path) in str(e.value) and '\n' not in str(e.value)


def test_bad_fraction(folder):
  with pytest.raises(UserError, match=r'image_folder_source.*fraction=2'):
    sources.image_folder_source(str(folder), fraction=2)
