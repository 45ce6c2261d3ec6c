"""Still images as one-frame videos (Pillow), so photos go through the same pipeline.

An image gives one sample at time 0 with index 0; ``media_type`` is "image" and the
duration 0. The EXIF orientation is applied, so a portrait photo stays portrait.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mama_augment.errors import ItemError
from mama_augment.video.base import SampledFrames, SamplingOptions, VideoInfo
from mama_augment.video.probe import check_file, thumbnail_size

_EXIF_ORIENTATION = 0x0112


class ImageReader:
    name = "pillow"

    def sample(self, path: Path, options: SamplingOptions) -> SampledFrames:
        from PIL import Image, ImageOps, UnidentifiedImageError

        path = Path(path)
        check_file(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    file_format = (image.format or path.suffix.lstrip(".")).lower()
                    width, height = image.size
                    if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # turned a quarter
                        width, height = height, width
                    # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: much faster for big photos.
                    image.draft("RGB", (options.thumb_size, options.thumb_size))
                    image = ImageOps.exif_transpose(image)
                    image = image.convert("RGB")
        except UnidentifiedImageError:
            raise ItemError("corrupt_image", f"{path.name} is not an image Pillow can read") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise ItemError("corrupt_image", f"{path.name} is too large to decode safely ({error})") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ItemError("corrupt_image", f"{path.name} could not be decoded ({error}); it is probably truncated or damaged") from None
        size = thumbnail_size(image.width, image.height, options.thumb_size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
        info = VideoInfo(media_type="image", duration_s=0.0, fps=None, width=width, height=height, codec=file_format, num_frames=1)
        return SampledFrames(
            info=info,
            images=[np.asarray(image, dtype=np.uint8)],
            times_s=np.zeros(1, dtype=np.float64),
            indices=np.zeros(1, dtype=np.int64),
            backend=self.name,
        )
