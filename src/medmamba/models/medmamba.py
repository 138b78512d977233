"""MedMamba (Yue & Li, arXiv 2403.03849): Vision Mamba for medical image classification.

Patch-E -> four stages of SS-Conv-SSM blocks with Patch-M between them -> average pool -> linear head.
Module and parameter names follow the official implementation (``VSSM``) key for key, so its
checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..ops.cross_scan import NUM_DIRECTIONS
from ..ops.scan_reference import compute_dtype
from ..ops.selective_scan import cross_selective_scan
from ._builder import build_model_with_cfg
from ._hub import HubMixin
from ._registry import register_model
from .layers import DropPath, concat_shuffle

__all__ = ["MedMamba", "MedMambaFeatures", "PatchEmbed2D", "PatchMerging2D", "SS2D", "SS_Conv_SSM", "VSSLayer",
           "checkpoint_filter_fn", "medmamba_t", "medmamba_s", "medmamba_b"]


def checked_images(x: torch.Tensor, in_chans: int, patch_size: int) -> torch.Tensor:
    """``x`` if it is a (batch, in_chans, H, W) batch of images of at least one patch; else one clear error."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"MedMamba expects images as a (batch, channels, height, width) tensor; got {shape}")
    if x.shape[1] != in_chans:
        raise ValueError(f"MedMamba was built for {in_chans}-channel images; got {x.shape[1]} channels "
                         f"(input shape {tuple(x.shape)})")
    if min(x.shape[-2:]) < patch_size:
        raise ValueError(f"images must be at least {patch_size}x{patch_size} pixels; got {tuple(x.shape[-2:])}")
    return x


# Symbolic tracing (torch.fx, timm's feature extraction) keeps the check as one call that runs on real tensors:
# its branches on shapes cannot be traced.
torch.fx.wrap("checked_images")


class PatchEmbed2D(nn.Module):
    """Patch-E: non-overlapping patch_size x patch_size convolution, then LayerNorm; output NHWC."""

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, norm_layer: Optional[Callable] = nn.LayerNorm):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        # Pad rather than let the strided conv silently drop the last rows/columns of odd-sized images.
        pad_h, pad_w = (-x.shape[-2]) % self.patch_size, (-x.shape[-1]) % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class PatchMerging2D(nn.Module):
    """Patch-M: concatenate each 2x2 neighbourhood (4C), LayerNorm, Linear to 2C; halves H and W.

    Odd grids are zero-padded first (the official code crashes or crops there), so 28 px inputs work.
    """

    def __init__(self, dim, norm_layer: Callable = nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x):
        _, height, width, _ = x.shape
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SS2D(nn.Module):
    """2-D selective scan: in_proj -> (x, z); depthwise conv + SiLU on x; four-direction S6 scan;
    LayerNorm; gate with SiLU(z); out_proj. Input and output are NHWC with ``d_model`` channels."""

    def __init__(self, d_model, d_state=16, d_conv=3, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                 dt_scale=1.0, dt_init_floor=1e-4, dropout=0.0, conv_bias=True, bias=False, scan_backend="auto"):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.scan_backend = scan_backend
        k, d_inner = NUM_DIRECTIONS, self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=d_inner,
                                bias=conv_bias)
        self.act = nn.SiLU()
        # Per direction: x -> (Delta low-rank, B, C), then Delta low-rank -> d_inner.
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_ssm_parameters(dt_min, dt_max, dt_scale, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=0.001, dt_max=0.1, dt_scale=1.0, dt_init_floor=1e-4):
        """Mamba's initialisation: S4D-real A, D = 1, softplus(dt bias) log-uniform in [dt_min, dt_max]."""
        bound = 1 / math.sqrt(self.d_inner)  # nn.Linear's default, which the official x_proj keeps
        self.x_proj_weight.uniform_(-bound, bound)
        dt_std = self.dt_rank ** -0.5 * dt_scale
        self.dt_projs_weight.uniform_(-dt_std, dt_std)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def selective_scan_2d(self, x):
        """x: (B, d_inner, H, W) -> sum of the four directions' scans, (B, d_inner, H, W), float32/64.

        Delta, B and C are position-wise projections of x, one per direction k, computed on the pixel grid:
        the scan reads them in each direction's order, so no scanned copies of the map are made. They are
        computed channels last (x is, coming from SS2D's convolution), the layout the CPU kernel reads.
        """
        k, r, n = NUM_DIRECTIONS, self.dt_rank, self.d_state
        pixels = x.permute(0, 2, 3, 1)                                       # (B, H, W, d): a view
        w = self.x_proj_weight                                               # (k, r + 2n, d)
        dt = F.linear(pixels, w[:, :r].flatten(0, 1))                        # (B, H, W, k*r)
        B = F.linear(pixels, w[:, r:r + n].flatten(0, 1)).unflatten(-1, (k, n))
        C = F.linear(pixels, w[:, r + n:].flatten(0, 1)).unflatten(-1, (k, n))
        # Delta_k = W_k dt_k for every direction at once: one GEMM with the block-diagonal of the W_k.
        dt = F.linear(dt, torch.block_diag(*self.dt_projs_weight)).unflatten(-1, (k, self.d_inner))
        A = -torch.exp(self.A_logs.to(compute_dtype(x.dtype)))
        return cross_selective_scan(x, dt.permute(0, 3, 4, 1, 2), A, B.permute(0, 3, 4, 1, 2),
                                    C.permute(0, 3, 4, 1, 2), D=self.Ds, delta_bias=self.dt_projs_bias.reshape(-1),
                                    delta_softplus=True, backend=self.scan_backend)

    def forward(self, x):
        # in_proj as two products, so x and z each come out contiguous (chunking one output would leave
        # both strided, and the depthwise conv and the gate would each copy them)
        w, bias = self.in_proj.weight, self.in_proj.bias
        x, z = (F.linear(x, wi, bi) for wi, bi in zip(w.chunk(2), bias.chunk(2) if bias is not None else (None, None)))
        # channels last all the way: the conv keeps the NHWC memory it is given, the scan returns it
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2)))
        y = self.selective_scan_2d(x).permute(0, 2, 3, 1)
        y = self.out_norm(y.to(self.out_norm.weight.dtype)) * F.silu(z)
        return self.dropout(self.out_proj(y))


class SS_Conv_SSM(nn.Module):  # noqa: N801 (official name, kept for readers comparing the two)
    """SS-Conv-SSM block: half the channels through a conv branch, half through LayerNorm + SS2D;
    concatenate, shuffle the two groups of channels, add the input. NHWC in and out."""

    def __init__(self, hidden_dim, drop_path=0.0, norm_layer: Callable = nn.LayerNorm, attn_drop_rate=0.0,
                 d_state=16, **ss2d_kwargs):
        super().__init__()
        half = hidden_dim // 2
        self.ln_1 = norm_layer(half)
        self.self_attention = SS2D(d_model=half, d_state=d_state, dropout=attn_drop_rate, **ss2d_kwargs)
        self.drop_path = DropPath(drop_path)
        self.conv33conv33conv11 = nn.Sequential(
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, kernel_size=3, padding=1),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, kernel_size=3, padding=1),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, kernel_size=1),
            nn.ReLU(),
        )

    def forward(self, x):
        conv_in, ssm_in = x.chunk(2, dim=-1)
        ssm_out = self.drop_path.branch(lambda t: self.self_attention(self.ln_1(t)), ssm_in)
        # channels_last memory is the NHWC tensor itself: the conv branch needs no transposed copy back.
        conv_out = self.conv33conv33conv11(conv_in.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
        return concat_shuffle(conv_out.permute(0, 2, 3, 1), ssm_out) + x


class VSSLayer(nn.Module):
    """One stage: ``depth`` SS-Conv-SSM blocks; its Patch-M (``downsample``) follows unless it is the last stage."""

    def __init__(self, dim, depth, attn_drop=0.0, drop_path: float | Sequence[float] = 0.0,
                 norm_layer: Callable = nn.LayerNorm, downsample: Optional[Callable] = None, use_checkpoint=False,
                 d_state=16, **ss2d_kwargs):
        super().__init__()
        self.dim = dim
        self.use_checkpoint = use_checkpoint
        rates = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            SS_Conv_SSM(dim, drop_path=rates[i], norm_layer=norm_layer, attn_drop_rate=attn_drop, d_state=d_state,
                        **ss2d_kwargs)
            for i in range(depth)])
        self.downsample = downsample(dim=dim, norm_layer=norm_layer) if downsample is not None else None

    def forward(self, x):
        """The stage's blocks; Patch-M (``downsample``) is applied by the model, which also needs the map before it."""
        for block in self.blocks:
            if self.use_checkpoint and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def init_weights(m: nn.Module):
    """The official VSSM's initialisation of one module; SS2D's parameters that are not Linear keep their Mamba
    initialisation (``SS2D.reset_ssm_parameters``)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class MedMamba(nn.Module, HubMixin):
    """MedMamba classifier. Argument names follow the official ``VSSM``.

    Args:
        depths: blocks per stage. dims: channels per stage (an int C means C, 2C, 4C, 8C).
        num_classes: classes of the head; 0 gives pooled features. in_chans: image channels.
        drop_rate: dropout after the patch embedding (where the official code applies it).
        drop_path_rate: stochastic depth, rising linearly over the blocks.
        scan_backend: selective-scan backend of every SS2D ("auto", "reference", "cpu", "triton", "mamba_ssm").
        backbone_stages: build only the first N stages, with no Patch-M after the last of them and no pool or
            head (a features-only backbone); drop-path rates stay those of the full depth.
        global_pool: "avg" (the paper's), or "" for no pooling: the head then acts on each position and
            forward returns NCHW maps (timm's convention).
    """

    def __init__(self, depths=(2, 2, 4, 2), dims=(96, 192, 384, 768), num_classes=1000, in_chans=3, patch_size=4,
                 d_state=16, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, norm_layer=nn.LayerNorm,
                 patch_norm=True, use_checkpoint=False, scan_backend="auto", backbone_stages: Optional[int] = None,
                 global_pool: str = "avg", **ss2d_kwargs):
        super().__init__()
        if isinstance(dims, int):
            dims = [dims * 2 ** i for i in range(len(depths))]
        if len(dims) != len(depths):
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must have the same length")
        self.depths, self.dims = list(depths), list(dims)
        self.num_layers = len(depths)
        built = self.num_layers if backbone_stages is None else backbone_stages
        if not 1 <= built <= self.num_layers:
            raise ValueError(f"backbone_stages={backbone_stages}: the model has stages 1..{self.num_layers}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.embed_dim = dims[0]
        self.num_features = self.head_hidden_size = dims[-1]
        self.global_pool = global_pool
        self.patch_embed = PatchEmbed2D(patch_size, in_chans, self.embed_dim, norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, dim) in enumerate(zip(depths[:built], dims[:built])):
            self.layers.append(VSSLayer(
                dim, depth, attn_drop=attn_drop_rate, drop_path=rates[sum(depths[:i]):sum(depths[:i + 1])],
                norm_layer=norm_layer, downsample=PatchMerging2D if i < built - 1 else None,
                use_checkpoint=use_checkpoint, d_state=d_state, scan_backend=scan_backend, **ss2d_kwargs))
        self.feature_info = [dict(num_chs=dim, reduction=patch_size * 2 ** i, module=f"layers.{i}")
                             for i, dim in enumerate(dims[:built])]
        if backbone_stages is None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self):
        """The SSM's A and D (mamba_ssm's rule). By name, not by a flag on the tensor: copy.deepcopy drops
        such flags, and a copied model then decayed A and D."""
        return {name for name, _ in self.named_parameters() if name.rsplit(".", 1)[-1] in ("A_logs", "Ds")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """Parameter groups from input to head, for timm's layer-wise lr decay (each Patch-M ends its stage)."""
        return dict(stem=r"^patch_embed", blocks=r"^layers\.(\d+)" if coarse else [
            (r"^layers\.(\d+)\.blocks\.(\d+)", None), (r"^layers\.(\d+)\.downsample", (99999,))])

    def set_scan_backend(self, backend: str):
        for m in self.modules():
            if isinstance(m, SS2D):
                m.scan_backend = backend
        return self

    def set_grad_checkpointing(self, enable: bool = True):
        for layer in self.layers:
            layer.use_checkpoint = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool={global_pool!r}: MedMamba pools by 'avg' or not at all ('')")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            init_weights(self.head)

    def forward_stages(self, x, out_indices: Sequence[int] = ()):
        """Run the backbone; returns the final NHWC map and the NCHW maps of the stages in out_indices.

        A stage's map is taken after its blocks and before its Patch-M, at stride patch_size * 2**i.
        """
        x = checked_images(x, self.in_chans, self.patch_size)
        x = self.pos_drop(self.patch_embed(x))
        maps = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in out_indices:
                maps.append(x.permute(0, 3, 1, 2))
            if layer.downsample is not None:
                x = layer.downsample(x)
        return x, maps

    def forward_backbone(self, x):
        """Last-stage features as NHWC, as the official ``VSSM.forward_backbone``."""
        return self.forward_stages(x)[0]

    def forward_features(self, x):
        """Last-stage feature map, NCHW."""
        return self.forward_backbone(x).permute(0, 3, 1, 2)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[int | Sequence[int]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's interface: (last-stage map as ``forward_features`` gives it, [the NCHW map of each stage in
        ``indices``]); an int n means the last n stages. ``norm`` and ``stop_early`` change nothing here:
        MedMamba has no final norm, and every stage is run."""
        from timm.models._features import feature_take_indices
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: MedMamba's intermediates are NCHW")
        take, _ = feature_take_indices(len(self.layers), indices)
        final, maps = self.forward_stages(x, take)
        return maps if intermediates_only else (final.permute(0, 3, 1, 2), maps)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what follows the last stage in ``indices`` (its Patch-M and later stages; the head with
        ``prune_head``); returns the kept stage indices."""
        from timm.models._features import feature_take_indices
        take, last = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:last + 1]
        if self.layers[-1].downsample is not None:
            self.layers[-1].downsample = None
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = torch.flatten(self.avgpool(x), 1)
            return x if pre_logits else self.head(x)
        return x if pre_logits else self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class MedMambaFeatures(MedMamba):
    """Multi-scale backbone for dense tasks: forward returns the NCHW map of each stage in out_indices.
    Only the stages up to the last one requested are built."""

    def __init__(self, *args, out_indices: Sequence[int] = (0, 1, 2, 3), depths=(2, 2, 4, 2), **kwargs):
        n = len(depths)
        if not out_indices or any(not -n <= i < n for i in out_indices):
            raise ValueError(f"out_indices {tuple(out_indices)} must name stages among 0..{n - 1}")
        self.out_indices = tuple(sorted({i % n for i in out_indices}))
        kwargs["num_classes"] = 0
        super().__init__(*args, depths=depths, backbone_stages=max(self.out_indices) + 1, **kwargs)
        from timm.models import FeatureInfo  # timm's form of a backbone's feature_info: channels(), reduction()...
        self.feature_info = FeatureInfo(self.feature_info, self.out_indices)

    def forward(self, x):
        return self.forward_stages(x, self.out_indices)[1]


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MedMamba) -> dict[str, torch.Tensor]:
    """Fit a MedMamba checkpoint (this package's or the official layout, which share their keys) to ``model``:
    a 3-channel stem summed for a 1-channel model, and the weights of stages, Patch-M and head that a
    features-only backbone does not have left out. Other differences are left for the loader to report."""
    state = dict(state_dict)
    own = model.state_dict()
    stem = "patch_embed.proj.weight"
    if stem in state and stem in own and state[stem].shape != own[stem].shape:
        theirs, ours = state[stem], own[stem]
        if theirs.shape[1] == 3 and ours.shape[1] == 1 and theirs.shape[0] == ours.shape[0]:
            # A grey image is an RGB image with three equal channels: summing the kernel keeps the response.
            state[stem] = theirs.sum(dim=1, keepdim=True)
    built = len(model.layers)
    if isinstance(model, MedMambaFeatures):
        absent = ("head.", f"layers.{built - 1}.downsample.", *(f"layers.{i}." for i in range(built, model.num_layers)))
        state = {k: v for k, v in state.items() if not k.startswith(absent)}
    return state


VARIANTS = {
    "medmamba_t": dict(depths=(2, 2, 4, 2), dims=(96, 192, 384, 768)),
    "medmamba_s": dict(depths=(2, 2, 8, 2), dims=(96, 192, 384, 768)),
    "medmamba_b": dict(depths=(2, 2, 12, 2), dims=(128, 256, 512, 1024)),
}


def _cfg(**kwargs) -> dict:
    """A variant's pretrained config in timm's terms. No weights are published on a hub (the official ones are
    on a file-sharing site only), so it names none: ``pretrained`` is a path, or a config that names a file or
    a hub repository (``timm.create_model("hf-hub:...")``)."""
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 1.0,
            "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),  # the official recipe's
            "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
            "paper_ids": "arXiv:2403.03849", "paper_name": "MedMamba: Vision Mamba for Medical Image Classification",
            **kwargs}


PRETRAINED_CFGS = {name: _cfg(architecture=name) for name in VARIANTS}

# Training settings this family takes where the configuration leaves them at "auto" (config.FAMILY_KEYS):
# chosen on 3-fold cross-validation over BreastMNIST and PneumoniaMNIST, never on a test split (BENCHMARKS,
# "A default chosen on cross-validation"). MedMamba, without a CNN's built-in locality, needs more
# augmentation than the package's plain flips on these small data sets.
TRAIN_DEFAULTS = {"augment.policy": "trivialaugment"}


def __getattr__(name: str):
    # timm's register_model reads the module's ``default_cfgs``; built on first use, as importing timm costs
    # seconds that `import medmamba` need not pay.
    if name == "default_cfgs":
        from timm.models import generate_default_cfgs
        return generate_default_cfgs(PRETRAINED_CFGS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _create(variant: str, pretrained=None, **kwargs) -> MedMamba:
    return build_model_with_cfg(MedMamba, variant, VARIANTS[variant], pretrained, feature_cls=MedMambaFeatures,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                variant_pretrained_cfg=PRETRAINED_CFGS[variant], **kwargs)


@register_model
def medmamba_t(pretrained=None, **kwargs) -> MedMamba:
    """MedMamba-T: depths (2, 2, 4, 2), dims 96..768."""
    return _create("medmamba_t", pretrained, **kwargs)


@register_model
def medmamba_s(pretrained=None, **kwargs) -> MedMamba:
    """MedMamba-S: depths (2, 2, 8, 2), dims 96..768."""
    return _create("medmamba_s", pretrained, **kwargs)


@register_model
def medmamba_b(pretrained=None, **kwargs) -> MedMamba:
    """MedMamba-B: depths (2, 2, 12, 2), dims 128..1024."""
    return _create("medmamba_b", pretrained, **kwargs)
