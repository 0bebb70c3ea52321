"""The Flax DLN stage by stage: exact tiled and bucketed inference (core.tiling).

The stages call port.model's own submodules (through `DLN.apply(..., method=...)`)
with the checkpoint's parameters; port/model.py stays the one definition of the
network. Two things differ from the plain forward, both exact to float32 rounding:
- every convolution's output is multiplied by the validity mask (a Flax method
  interceptor), so zeros outside the image reproduce the convolutions' zero padding
  on padded tiles and buckets;
- each FA's mean is an input of its LBP stage (accumulated over the valid pixels of
  the whole image by core.tiling), or, in a bucket, the masked mean of the batch.
The FA's dense layers (no bias) are applied as the same products the Flax Dense
computes, on the same parameters; its 1x1 `outlayer` is port.model.ConvBlock.
1x1 convolutions are matrix products as in port.inference (port.pointwise).

JaxWholeImage is what `dln enhance` runs on whole images: each padded to its size
bucket (core.tiling.bucket_shape) with masking, or run unmasked (the plain forward)
when it already is a bucket shape; a portrait image (height > width) runs transposed
with every kernel's spatial axes swapped, which is the transposed output (exact up to
the order of float32 sums), so it shares the landscape bucket's compiled program.
Images of one bucket and orientation are batched.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from core.config import DLNConfig
from core.tiling import HALO_F1, HALO_FINAL, HALO_LBP, bucket_batch, bucket_shape, landscape
from port.inference import PARITY_PRECISION, make_apply, params_to_device
from port.model import DLN, ConvBlock
from port.pointwise import pointwise_conv_as_dot

LBP_NAMES = ("feat_out_1", "feat_out_2", "feat_out_3")


def _masking(mask, pointwise_as_dot: bool):
    """Interceptor: each nn.Conv's output times mask (and 1x1 convs as dots)."""
    def intercept(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not isinstance(context.module, nn.Conv):
            return next_fun(*args, **kwargs)
        if pointwise_as_dot:
            out = pointwise_conv_as_dot(next_fun, args, kwargs, context)
        else:
            out = next_fun(*args, **kwargs)
        return out * mask
    return intercept


def _model_input(module: DLN, x, mask):
    xs = (x - 0.5) * 2
    if module.config.brightness:
        xs = jnp.concatenate([xs, jnp.max(x, axis=-1, keepdims=True)], axis=-1)
    return xs * mask


def _f1(module: DLN, x, mask):
    return module.feat2(module.feat1(_model_input(module, x, mask)))


def _lbp(module: DLN, index: int, z, mean):
    """One LBP with its FA mean given: (N, h, w, cin) and (N, cin) -> (N, h, w, dim)."""
    name = LBP_NAMES[index]
    lbp = getattr(module, name)
    fusion = module.variables["params"][name]["fusion"]
    s = nn.relu(jnp.dot(mean, fusion["fc_0"]["kernel"]))
    w = nn.sigmoid(jnp.dot(s, fusion["fc_2"]["kernel"]))
    y = z * w[:, None, None, :] + z
    f = ConvBlock(module.config.dim, 1, 0).apply({"params": fusion["outlayer"]}, y)
    hr = lbp.conv1_1(f)
    lr = lbp.conv2(hr)
    r = lbp.local_weight1_1(f) - lr if lbp.residual_sign == "code" else lr - lbp.local_weight1_1(f)
    return lbp.local_weight2_1(hr) + lbp.conv3(r)


def _final(module: DLN, z, x):
    return x + module.config.gamma * module.out(module.feature(z))


def _masked_mean(z, mask):
    return jnp.sum(z * mask, axis=(1, 2)) / jnp.sum(mask, axis=(1, 2))


class JaxStages:
    """core.tiling.StageRunner for the port: one jit per stage (fixed tile shapes)."""

    def __init__(self, params_tree: dict, config: DLNConfig, pointwise_as_dot: bool = True):
        self.dim = config.dim
        self.config = config
        self._model = DLN(config)
        self._params = params_to_device(params_tree)
        self._dot = pointwise_as_dot
        self._f1 = jax.jit(self._stage_f1)
        self._lbp = jax.jit(self._stage_lbp, static_argnums=1)
        self._final = jax.jit(self._stage_final)
        self._bucket = jax.jit(self._bucket_forward)

    def _apply(self, params, mask, fn, *args):
        # traced in true float32 ("highest"), as port.inference.make_apply
        with jax.default_matmul_precision(PARITY_PRECISION), \
                nn.intercept_methods(_masking(mask, self._dot)):
            return self._model.apply({"params": params}, *args, method=fn)

    # each stage: input tile with halo -> core of the tile
    def _stage_f1(self, params, x, mask):
        out = self._apply(params, mask, _f1, x, mask)
        return out[:, HALO_F1:-HALO_F1, HALO_F1:-HALO_F1]

    def _stage_lbp(self, params, index, z, mean, mask):
        out = self._apply(params, mask, lambda m, z_, s_: _lbp(m, index, z_, s_), z, mean)
        return out[:, HALO_LBP:-HALO_LBP, HALO_LBP:-HALO_LBP]

    def _stage_final(self, params, z, x, mask):
        out = self._apply(params, mask, _final, z, x)
        return out[:, HALO_FINAL:-HALO_FINAL, HALO_FINAL:-HALO_FINAL]

    def _bucket_forward(self, params, x, mask):
        """Whole padded images (N, Hb, Wb, 3) with masks: every FA mean over valid pixels."""
        maps = [self._apply(params, mask, _f1, x, mask)]
        for index in range(3):
            z = jnp.concatenate(maps, axis=-1)
            fn = (lambda i: lambda m, z_, s_: _lbp(m, i, z_, s_))(index)
            maps.append(self._apply(params, mask, fn, z, _masked_mean(z, mask)))
        return self._apply(params, mask, _final, jnp.concatenate(maps, axis=-1), x)

    @staticmethod
    def _host(out) -> np.ndarray:
        return np.asarray(jax.block_until_ready(out))

    def f1(self, x_tile, mask):
        return self._host(self._f1(self._params, x_tile[None], mask[None]))[0]

    def lbp(self, index, z_tile, mean, mask):
        return self._host(self._lbp(self._params, index, z_tile[None], mean[None],
                                    mask[None]))[0]

    def final(self, z_tile, x_tile, mask):
        return self._host(self._final(self._params, z_tile[None], x_tile[None], mask[None]))[0]

    @property
    def params(self):
        return self._params

    def bucket(self, x: np.ndarray, mask: np.ndarray, params=None) -> np.ndarray:
        """(N, Hb, Wb, 3) padded batch and (N, Hb, Wb, 1) masks -> (N, Hb, Wb, 3), with
        the checkpoint's parameters or the given ones (e.g. transposed)."""
        return self._host(self._bucket(self._params if params is None else params, x, mask))


def transposed_params(tree: dict) -> dict:
    """Every convolution kernel (kh, kw, cin, cout) with its two spatial axes swapped."""
    return jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1) if a.ndim == 4 else a, tree)


def whole_group_key(height: int, width: int) -> tuple[int, int, bool]:
    """An image's own (landscape bucket shape, transposed)."""
    return bucket_shape(*landscape(height, width)) + (height > width,)


class JaxWholeImage:
    """Whole images, bucketed (masked only where padded), portrait ones transposed."""

    def __init__(self, stages: JaxStages):
        self.config = stages.config
        self._stages = stages
        self._plain = make_apply(stages.config)
        self._params = self._stages.params
        self._transposed = None

    def params(self, transposed: bool):
        if not transposed:
            return self._params
        if self._transposed is None:
            self._transposed = jax.jit(transposed_params)(self._params)
        return self._transposed

    def run(self, images: list[np.ndarray], bucket: tuple[int, int] | None = None
            ) -> list[np.ndarray]:
        """Images of one orientation -> their (H, W, 3) float32 outputs, run in `bucket`
        (landscape; default: the first image's whole_group_key bucket)."""
        portrait = {im.shape[0] > im.shape[1] for im in images}
        if len(portrait) != 1:
            raise ValueError("images of one batch must share an orientation")
        transposed = portrait.pop()
        batch = [np.swapaxes(im, 0, 1) if transposed else im for im in images]
        bucket = tuple(bucket or bucket_shape(*batch[0].shape[:2]))
        params = self.params(transposed)
        if all(im.shape[:2] == bucket for im in batch):
            out = np.asarray(jax.block_until_ready(
                self._plain(params, np.stack(batch).astype(np.float32))))
        else:
            x, mask = bucket_batch(batch, bucket)
            out = self._stages.bucket(x, mask, params)
        outputs = [o[:im.shape[0], :im.shape[1]] for o, im in zip(out, batch)]
        return [np.swapaxes(o, 0, 1) if transposed else o for o in outputs]


def enable_compilation_cache(folder) -> None:
    """Keep every compiled XLA executable in `folder` (JAX's persistent compilation
    cache), so a later process with the same shapes compiles nothing. Entries of any
    compile time and size are kept: the stage and bucket programs compile in ~0.3-2 s."""
    import os

    from jax.experimental.compilation_cache import compilation_cache

    os.makedirs(folder, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(folder):
        compilation_cache.reset_cache()  # a process may switch folders (tests do)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
