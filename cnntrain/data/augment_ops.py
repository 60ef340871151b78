"""torchvision's auto-augment operations on a whole uint8 batch, one magnitude per image.

The operations RandAugment, TrivialAugmentWide and AugMix choose from (torchvision.transforms.v2's
`_AutoAugmentBase._apply_image_or_video_transform`), each taking a uint8 batch (N, C, H, W), C 1 or
3, and a float64 magnitude per image (N,), and computing what torchvision's functional op computes
on a uint8 image with that magnitude: the same inverse affine matrix and sampling grid
(`_get_inverse_affine_matrix`, `_affine_grid`), the same rounding after resampling and sharpening,
the same truncation after blending, posterize's bit mask and solarize's threshold in 0-255
(torchvision defines those two, and equalize, on uint8). Below them, each policy's operation list
with torchvision's magnitude tables (`RANDAUGMENT_OPS`, ...). The policies (augment_policies.py)
feed the operations the images of a batch grouped by the operation each image drew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

# (uint8 batch, magnitudes (N,), resampling settings) -> uint8 batch
Operation = Callable[[torch.Tensor, torch.Tensor, "Resampling"], torch.Tensor]


@dataclass(frozen=True)
class Resampling:
    """How the geometric operations resample: "nearest" or "bilinear", and the fill outside the
    image (None: zeros, as torchvision's fill=None; a number: a pixel value 0-255 for every channel)."""

    interpolation: str = "nearest"
    fill: float | None = None


def _inverse_affine(angle, translate, shear, center) -> torch.Tensor:
    """torchvision's `_get_inverse_affine_matrix` (scale 1) for per-image angles, translations and
    shears in degrees, float64 tensors (N,); `center` in pixels from the image centre. -> (N, 2, 3)."""
    rot, sx, sy = (torch.deg2rad(value) for value in (angle, shear[0], shear[1]))
    (cx, cy), (tx, ty) = center, translate
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    first = torch.stack([d, -b, cx - d * (cx + tx) + b * (cy + ty)], 1)
    second = torch.stack([-c, a, cy + c * (cx + tx) - a * (cy + ty)], 1)
    return torch.stack([first, second], 1)


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's `_affine_grid` (pixel-centred base grid, normalised after theta) for (N, 2, 3) float32 thetas."""
    base = torch.empty(1, height, width, 3, device=theta.device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=theta.device))
    rows = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=theta.device)
    base[..., 1].copy_(rows.unsqueeze(-1))
    base[..., 2].fill_(1)
    divisor = torch.full((2,), 0.5 * width, device=theta.device)  # filled on the device: no copy from the host,
    divisor[1] = 0.5 * height  # which on CUDA would wait for the queued work
    rescaled = theta.transpose(1, 2).div(divisor)
    grid = base.view(1, height * width, 3).expand(len(theta), -1, -1).bmm(rescaled)
    return grid.view(len(theta), height, width, 2)


def _warp(images: torch.Tensor, theta: torch.Tensor, resampling: Resampling) -> torch.Tensor:
    """torchvision's `_apply_grid_transform` on uint8 images, one grid per image."""
    n, c, height, width = images.shape
    grid = _affine_grid(theta.float(), height, width)
    x = images.float()
    if resampling.fill is not None:  # a mask channel tells which output pixels came from outside
        x = torch.cat([x, torch.ones(n, 1, height, width, device=x.device)], 1)
    x = F.grid_sample(x, grid, mode=resampling.interpolation, padding_mode="zeros", align_corners=False)
    if resampling.fill is not None:
        x, mask = x[:, :c], x[:, c:].expand(-1, c, -1, -1)
        fill = torch.full((), float(resampling.fill), device=x.device)
        if resampling.interpolation == "nearest":
            x = torch.where(mask < 0.5, fill, x)
        else:
            x = (x - fill) * mask + fill
    return x.round_().to(torch.uint8)


def _zeros(magnitude: torch.Tensor) -> torch.Tensor:
    """No angle, shear or shift: one zero per image."""
    return torch.zeros_like(magnitude)


def shear_x(images, magnitude, resampling):
    """F.affine(shear=[degrees(atan(m)), 0], center=[0, 0]): sheared about the top-left corner."""
    zero, height, width = _zeros(magnitude), *images.shape[-2:]
    shear = (torch.rad2deg(torch.atan(magnitude)), zero)
    return _warp(images, _inverse_affine(zero, (zero, zero), shear, (-0.5 * width, -0.5 * height)), resampling)


def shear_y(images, magnitude, resampling):
    """F.affine(shear=[0, degrees(atan(m))], center=[0, 0])."""
    zero, height, width = _zeros(magnitude), *images.shape[-2:]
    shear = (zero, torch.rad2deg(torch.atan(magnitude)))
    return _warp(images, _inverse_affine(zero, (zero, zero), shear, (-0.5 * width, -0.5 * height)), resampling)


def translate_x(images, magnitude, resampling):
    """F.affine(translate=[int(m), 0]): whole pixels, the magnitude truncated towards zero."""
    zero = _zeros(magnitude)
    return _warp(images, _inverse_affine(zero, (magnitude.trunc(), zero), (zero, zero), (0.0, 0.0)), resampling)


def translate_y(images, magnitude, resampling):
    """F.affine(translate=[0, int(m)])."""
    zero = _zeros(magnitude)
    return _warp(images, _inverse_affine(zero, (zero, magnitude.trunc()), (zero, zero), (0.0, 0.0)), resampling)


def rotate(images, magnitude, resampling):
    """F.rotate(angle=m) about the centre, counter-clockwise; torchvision's exact paths for 0 and 180
    degrees (and 90, 270 on square images) are taken too, as they can differ from resampling."""
    angle = torch.remainder(magnitude, 360)
    zero = _zeros(magnitude)
    out = _warp(images, _inverse_affine(-angle, (zero, zero), (zero, zero), (0.0, 0.0)), resampling)
    turns = {0: 0, 180: 2} | ({90: 1, 270: 3} if images.shape[-1] == images.shape[-2] else {})
    for degrees, k in turns.items():
        out = torch.where((angle == degrees).view(-1, 1, 1, 1), torch.rot90(images, k, dims=(-2, -1)), out)
    return out


def _factors(magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 + m, 1 - (1 + m)) per image: computed in float64 then float32, as torchvision's Python floats
    become float32 in its tensor arithmetic, shaped to broadcast over the images."""
    factor = 1.0 + magnitude
    return factor.float().view(-1, 1, 1, 1), (1.0 - factor).float().view(-1, 1, 1, 1)


def _blend(images: torch.Tensor, other: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """torchvision's `_blend` for uint8 with ratio 1 + m: ratio * image + (1 - ratio) * other, clamped, truncated."""
    ratio, rest = _factors(magnitude)
    # addcmul rounds as torchvision's add_(other, alpha=1 - ratio) does (one fused multiply-add)
    return torch.addcmul(images.float() * ratio, other, rest).clamp_(0, 255).to(torch.uint8)


def _grey(images: torch.Tensor) -> torch.Tensor:
    """torchvision's float luma of a uint8 RGB batch, floored as its colour ops floor it. (N, 1, H, W)."""
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def brightness(images, magnitude, resampling):
    """F.adjust_brightness(1 + m)."""
    return (images.float() * _factors(magnitude)[0]).clamp_(0, 255).to(torch.uint8)


def color(images, magnitude, resampling):
    """F.adjust_saturation(1 + m); grey images are left as they are (as torchvision and PIL do)."""
    if images.shape[-3] == 1:
        return images
    return _blend(images, _grey(images), magnitude)


def contrast(images, magnitude, resampling):
    """F.adjust_contrast(1 + m): blended with the mean grey level of each image."""
    grey = _grey(images) if images.shape[-3] == 3 else images.float()
    return _blend(images, grey.mean(dim=(-3, -2, -1), keepdim=True), magnitude)


def sharpness(images, magnitude, resampling):
    """F.adjust_sharpness(1 + m): blended with a 3x3 smoothing (rounded); the border pixels stay."""
    channels, height, width = images.shape[-3:]
    if height <= 2 or width <= 2:
        return images
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.full((3, 3), a, device=images.device)
    kernel[1, 1] = b
    kernel = kernel.expand(channels, 1, 3, 3)
    out = images.float()
    blurred = F.conv2d(out, kernel, groups=channels).round_()
    inner = out[..., 1:-1, 1:-1]
    inner.addcmul_(blurred.sub_(inner), _factors(magnitude)[1])
    return out.clamp_(0, 255).to(torch.uint8)


def posterize(images, magnitude, resampling):
    """F.posterize(bits=int(m)): keep the top `bits` bits of each value (0 bits: black)."""
    bits = magnitude.long().clamp(0, 8)
    mask = (256 - (1 << (8 - bits))).to(torch.uint8).view(-1, 1, 1, 1)
    return images & mask


def solarize(images, magnitude, resampling):
    """F.solarize(threshold=255 * m): values at or above the threshold inverted (compared in float32, as torch does)."""
    threshold = (255 * magnitude).float().view(-1, 1, 1, 1)
    return torch.where(images.float() >= threshold, 255 - images, images)


def autocontrast(images, magnitude, resampling):
    """F.autocontrast: each channel stretched to 0-255 (torchvision's kernel is batched already)."""
    return TF.autocontrast(images)


def equalize(images, magnitude, resampling):
    """F.equalize: each channel's histogram equalised as PIL does (torchvision's kernel is batched already)."""
    return TF.equalize(images)


def identity(images, magnitude, resampling):
    return images


OPERATIONS: dict[str, Operation] = {
    "Identity": identity,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Rotate": rotate,
    "Brightness": brightness,
    "Color": color,
    "Contrast": contrast,
    "Sharpness": sharpness,
    "Posterize": posterize,
    "Solarize": solarize,
    "AutoContrast": autocontrast,
    "Equalize": equalize,
}


# (number of bins, height, width) -> the magnitude of each bin, as torchvision tabulates them
Table = Callable[[int, int, int], torch.Tensor]


@dataclass(frozen=True)
class Op:
    """One entry of a policy's operation list: torchvision's name, magnitude table (None: the
    operation takes none) and whether its magnitude gets a random sign."""

    name: str
    magnitudes: Table | None = None
    signed: bool = False


def _up_to(top: float) -> Table:
    return lambda bins, height, width: torch.linspace(0.0, top, bins)


def _posterize_bits(most: int, spread: int) -> Table:
    return lambda bins, height, width: (most - (torch.arange(bins) / ((bins - 1) / spread))).round().int()


_SOLARIZE = Op("Solarize", lambda bins, height, width: torch.linspace(1.0, 0.0, bins))
_NO_MAGNITUDE = (Op("AutoContrast"), Op("Equalize"))


def _colour_ops(top: float) -> tuple[Op, ...]:
    return tuple(Op(name, _up_to(top), True) for name in ("Brightness", "Color", "Contrast", "Sharpness"))


RANDAUGMENT_OPS = (
    Op("Identity"),
    Op("ShearX", _up_to(0.3), True),
    Op("ShearY", _up_to(0.3), True),
    Op("TranslateX", lambda bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * width, bins), True),
    Op("TranslateY", lambda bins, height, width: torch.linspace(0.0, 150.0 / 331.0 * height, bins), True),
    Op("Rotate", _up_to(30.0), True),
    *_colour_ops(0.9),
    Op("Posterize", _posterize_bits(8, 4)),
    _SOLARIZE,
    *_NO_MAGNITUDE,
)
TRIVIALAUGMENT_OPS = (
    Op("Identity"),
    Op("ShearX", _up_to(0.99), True),
    Op("ShearY", _up_to(0.99), True),
    Op("TranslateX", _up_to(32.0), True),
    Op("TranslateY", _up_to(32.0), True),
    Op("Rotate", _up_to(135.0), True),
    *_colour_ops(0.99),
    Op("Posterize", _posterize_bits(8, 6)),
    _SOLARIZE,
    *_NO_MAGNITUDE,
)
AUGMIX_OPS = (
    Op("ShearX", _up_to(0.3), True),
    Op("ShearY", _up_to(0.3), True),
    Op("TranslateX", lambda bins, height, width: torch.linspace(0.0, width / 3.0, bins), True),
    Op("TranslateY", lambda bins, height, width: torch.linspace(0.0, height / 3.0, bins), True),
    Op("Rotate", _up_to(30.0), True),
    Op("Posterize", _posterize_bits(4, 4)),
    _SOLARIZE,
    *_NO_MAGNITUDE,
)
AUGMIX_ALL_OPS = AUGMIX_OPS + _colour_ops(0.9)  # all_ops=true adds brightness, colour, contrast, sharpness
