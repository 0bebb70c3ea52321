"""The PyTorch DLN stage by stage: exact tiled and bucketed inference (core.tiling).

The stages call the reference model's own submodules (reference_torch.model), with
two changes that are exact to float32 rounding: a forward hook multiplies every
nn.Conv2d's output by the validity mask (zeros outside the image reproduce the
convolutions' zero padding on padded tiles and buckets), and each FA mean is an
input of its LBP stage (accumulated over the valid pixels of the whole image by
core.tiling, or the masked mean of a bucket). Inputs and outputs are NHWC numpy;
inside, tensors are channels_last and run under inference_mode, PyTorch's fastest
CPU settings for this network.
"""

from __future__ import annotations

import numpy as np
import torch

from core.config import DLNConfig
from core.tiling import crop
from reference_torch.inference import model_from_state
from weights.stages import dln_stages


class Computed:
    def __init__(self, value: np.ndarray):
        self._value = value

    def result(self) -> np.ndarray:
        return self._value


class TorchStages:
    """core.tiling.StageRunner for the reference model (weights.stages' table), and its
    unmodified whole-image forward."""

    def __init__(self, state: dict[str, np.ndarray], config: DLNConfig,
                 channels_last: bool = True, compile_whole: bool = False):
        self.dim = config.dim
        self.config = config
        self.stages = dln_stages(config)
        self._format = torch.channels_last if channels_last else torch.contiguous_format
        self._model = model_from_state(state, config).to(memory_format=self._format)
        self._whole_model = self._model
        if compile_whole:
            # torch.compile (Inductor, freezing: weights constant-folded and pre-packed)
            # of the whole-image forward; the masked stages of tiled runs stay eager.
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            self._whole_model = torch.compile(self._model)
        self._lbps = (self._model.feat_out_1, self._model.feat_out_2, self._model.feat_out_3)
        self._mask = None
        for module in self._model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(self._mask_output)

    def _mask_output(self, module, inputs, output):
        return output if self._mask is None else output * self._mask

    def tensor(self, nhwc: np.ndarray) -> torch.Tensor:
        """A (N, H, W, C) numpy batch as an NCHW tensor in this runner's memory format."""
        x = torch.from_numpy(np.ascontiguousarray(nhwc, np.float32)).permute(0, 3, 1, 2)
        return x.contiguous(memory_format=self._format)

    @staticmethod
    def _numpy(nchw: torch.Tensor) -> np.ndarray:
        return nchw.permute(0, 2, 3, 1).contiguous().numpy()

    # ---- the stages, on NCHW tensors ----
    def _f1(self, x, mask):
        m = self._model
        xs = (x - 0.5) * 2
        if self.config.brightness:
            xs = torch.cat([xs, torch.amax(x, dim=1, keepdim=True)], dim=1)
        return m.feat2(m.feat1(xs * mask))

    def _lbp(self, index, z, mean, mask=None):
        lbp = self._lbps[index]
        w = lbp.fusion.fc(mean)[:, :, None, None]
        f = lbp.fusion.outlayer(z * w + z)
        hr = lbp.conv1_1(f)
        lr = lbp.conv2(hr)
        r = lbp.local_weight1_1(f) - lr if lbp.residual_sign == "code" \
            else lr - lbp.local_weight1_1(f)
        return lbp.local_weight2_1(hr) + lbp.conv3(r)

    def _final(self, z, x, mask=None):
        return x + self.config.gamma * self._model.out(self._model.feature(z))

    def _run(self, mask_nhwc, fn, *args):
        """fn(*args, mask) with every conv output masked."""
        self._mask = self.tensor(mask_nhwc)
        try:
            with torch.inference_mode():
                return fn(*args, self._mask)
        finally:
            self._mask = None

    # ---- core.tiling.StageRunner ----
    def start_stage(self, index, maps, image, mean, mask) -> "Computed":
        """PyTorch on the CPU computes synchronously: the result is there on return."""
        return Computed(self._run_stage(index, maps, image, mean, mask))

    def _run_stage(self, index, maps, image, mean, mask):
        """The stage's pieces in order (core.tiling.Stage.steps), each on the maps so far
        with the pieces before it appended, and the image and mask, all cropped by the
        halo each piece used up; NCHW inside."""
        z = None if maps is None else torch.cat([self.tensor(m[None]) for m in maps], dim=1)
        x = None if image is None else self.tensor(image[None])
        mask = mask[None]
        steps = self.stages[index].steps
        for number, (name, halo) in enumerate(steps):
            if name == "f1":
                out = self._run(mask, self._f1, x)
            elif name == "final":
                out = self._run(mask, self._final, z, x)
            else:
                lbp = int(name.removeprefix("lbp")) - 1
                out = self._run(mask, self._lbp, lbp, z,
                                torch.from_numpy(np.asarray(mean, np.float32)[None]))
            out = crop(out, halo, axis=2)
            if number + 1 < len(steps):
                z = out if z is None else torch.cat([crop(z, halo, axis=2), out], dim=1)
                x, mask = crop(x, halo, axis=2), crop(mask, halo)
        return self._numpy(out)[0]

    def bucket(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(N, Hb, Wb, 3) padded batch and (N, Hb, Wb, 1) masks -> (N, Hb, Wb, 3)."""
        xt, mt = self.tensor(x), self.tensor(mask)
        self._mask = mt
        try:
            with torch.inference_mode():
                maps = [self._f1(xt, mt)]
                for index in range(3):
                    z = torch.cat(maps, dim=1)
                    mean = (z * mt).sum(dim=(2, 3)) / mt.sum(dim=(2, 3))
                    maps.append(self._lbp(index, z, mean))
                out = self._final(torch.cat(maps, dim=1), xt)
        finally:
            self._mask = None
        return self._numpy(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The unmodified reference forward (torch.compile'd when asked) on an NCHW batch."""
        with torch.inference_mode():
            return self._whole_model(x)

    def whole(self, image: np.ndarray) -> np.ndarray:
        """The unmodified reference forward on one (H, W, 3) image (no masks, no padding)."""
        return self._numpy(self.forward(self.tensor(image[None])))[0]
