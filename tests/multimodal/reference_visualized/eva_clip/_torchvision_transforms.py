"""The torchvision 0.28 transforms transform.py uses, on the PIL path, for a test run without torchvision.

PyPI's torchvision wheel for x86-64 Linux is built against CUDA torch and fails on import with bgekit's
CPU torch ("operator torchvision::nms does not exist"), so the few transforms the evaluation transform
needs are transcribed here from torchvision/transforms/functional.py and functional_pil.py (BSD-3-Clause,
Copyright (c) Soumith Chintala 2016), for PIL images only: Resize (shorter edge, ``int`` of the longer),
CenterCrop (``int(round(...))`` offsets), ToTensor (``/ 255``) and Normalize (``sub_``, ``div_``).
"""
import enum
import types

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    BICUBIC = "bicubic"


_PIL_MODES = {InterpolationMode.BICUBIC: Image.BICUBIC}


def _compute_resized_output_size(image_size, size):
    h, w = image_size
    short, long = (w, h) if w <= h else (h, w)
    requested_new_short = size if isinstance(size, int) else size[0]
    new_short, new_long = requested_new_short, int(requested_new_short * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return [new_h, new_w]


def _resize(img, size, interpolation=InterpolationMode.BICUBIC):
    if isinstance(size, int):
        size = [size]
    if len(size) == 1:
        output_size = _compute_resized_output_size((img.size[1], img.size[0]), size)
    else:
        output_size = list(size)
    if [img.size[1], img.size[0]] == output_size:
        return img
    return img.resize(tuple(output_size[::-1]), _PIL_MODES[interpolation])


def _pad(img, padding, fill=0):
    raise NotImplementedError("ResizeMaxSize is not used by Visualized-BGE's evaluation transform")


F = types.SimpleNamespace(resize=_resize, pad=_pad)


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BICUBIC):
        self.size, self.interpolation = size, interpolation

    def __call__(self, img):
        return _resize(img, self.size, self.interpolation)


class CenterCrop:
    def __init__(self, size):
        self.size = (int(size), int(size)) if isinstance(size, int) else tuple(size)

    def __call__(self, img):
        crop_height, crop_width = self.size
        image_width, image_height = img.size
        if crop_width > image_width or crop_height > image_height:
            raise NotImplementedError("padding smaller images is not needed after Resize")
        crop_top = int(round((image_height - crop_height) / 2.0))
        crop_left = int(round((image_width - crop_width) / 2.0))
        return img.crop((crop_left, crop_top, crop_left + crop_width, crop_top + crop_height))


class ToTensor:
    def __call__(self, pic):
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
        img = img.permute((2, 0, 1)).contiguous()
        return img.to(dtype=torch.get_default_dtype()).div(255)


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, tensor):
        tensor = tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)


class RandomResizedCrop:
    def __init__(self, *args, **kwargs):
        pass  # training transform: built by image_transform(is_train=True), never run by the tests
