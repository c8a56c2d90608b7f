"""A 1x1 convolution whose weights differ per image, as one batched matrix product.

The attention's composed output projection and MEFC's routed fusing convolution are such maps: a (C_out, C_in)
matrix per image applied at every pixel. One ``bmm`` does every image at once, for any batch size (so exported
graphs keep a dynamic batch), and writes the result in the input's layout: NHWC input gives NHWC output, with
no copy on either side.
"""

from __future__ import annotations

from torch import Tensor


def mix_channels(matrices: Tensor, x: Tensor) -> Tensor:
    """``out[b, :, h, w] = matrices[b] @ x[b, :, h, w]``; matrices: (B, C_out, C_in), x: (B, C_in, H, W)."""
    b, c_in, h, w = x.shape
    c_out = matrices.shape[1]
    flat = x.reshape(b, c_in, h * w)
    if flat.stride(1) == 1 and c_in > 1:  # channels innermost: the transposed product is stored as NHWC
        return flat.transpose(1, 2).bmm(matrices.transpose(1, 2)).view(b, h, w, c_out).permute(0, 3, 1, 2)
    return matrices.bmm(flat).view(b, c_out, h, w)
