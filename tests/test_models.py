"""Every registered model (parametrised over the registry, so new models are covered).

Small config: dim 32, depth 2, heads 4, 12 x 10 (non-square) images.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from relative_performer.attention.clipped import ClippedRelativeAttention
from relative_performer.attention.favor import quadratic_softmax_attention
from relative_performer.errors import UserError
from relative_performer.models import MODELS, count_parameters, create_model, model_names
from relative_performer.models.blocks import AttentionContext, SelfAttention
from reference import clipped_relative_attention_naive

F64 = torch.float64
NAMES = model_names()
SMALL = dict(dim=32, depth=2, heads=4)
H, W = 12, 10


def small(name: str, **overrides):
    return create_model(model=name, **{**SMALL, **overrides})


def images(batch=3, channels=1, height=H, width=W, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, height, width, generator=generator, dtype=dtype)


def variants():
    """(model, config overrides): every model with FAVOR+, exact attention, the relu kernel and its own options."""
    out = []
    for name, spec in MODELS.items():
        out += [(name, {}), (name, {"no_projection": True}), (name, {"kernel": "relu"})]
        if "content_rel_attn" in spec.options:
            out.append((name, {"content_rel_attn": True}))
    return out


VARIANTS = variants()
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in cfg.items()) for name, cfg in VARIANTS]


def test_registry_has_the_four_models():
    assert {"Performer", "NoposPerformer", "RelativePerformer", "ClippedRelativePerformer"} <= set(NAMES)
    with pytest.raises(UserError):
        create_model(model="NoSuchModel")


# --------------------------------------------------------------------------- forward / backward


def may_be_unused_by_the_class_logits(model) -> set[str]:
    """Parameters that may, by design, not influence the class logits.

    The class token has no position features, so parameters of the last block's
    attention that act only on the positional part of pixel queries (strategy 1's
    alpha, beta and ``to_alpha_beta``; the periodic factor's phase ``theta``) shape
    only pixel outputs of the last block, which are never read out. The content
    projections (``to_qkv``, ``to_out``) are always used.
    """
    prefix = f"blocks.{len(model.blocks) - 1}.attn."
    return {
        name for name, _ in model.named_parameters()
        if name.startswith(prefix) and not name.startswith((prefix + "to_qkv", prefix + "to_out"))
    }


def gradient_report(model) -> tuple[list[str], list[str], list[str]]:
    missing, zero, bad = [], [], []
    for name, p in model.named_parameters():
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            bad.append(name)
        elif p.grad.abs().max() == 0:
            zero.append(name)
    return missing, zero, bad


def check_forward_backward(model, x):
    """Forward, backward; every parameter gets a finite nonzero gradient.

    From the class logits all parameters but those of may_be_unused_by_the_class_logits;
    those then from a loss on all final tokens (they are wired in, just not read out).
    """
    out = model(x)
    assert out.shape == (x.shape[0], model.cfg.num_classes)
    assert torch.isfinite(out).all(), "non-finite logits"
    (out * torch.randn_like(out)).sum().backward()
    missing, zero, bad = gradient_report(model)
    assert not bad, f"non-finite gradients in {bad}"
    unused = set(missing) | set(zero)
    assert unused <= may_be_unused_by_the_class_logits(model), f"from the logits, no gradient reaches {missing}, zero in {zero}"
    if unused:
        print(f"\n{model.cfg.model}: parameters that cannot influence the class logits (by design): {sorted(unused)}")
        model.zero_grad()
        tokens = model.tokens(x)
        (tokens * torch.randn_like(tokens)).sum().backward()
        missing, zero, bad = gradient_report(model)
        assert not bad and not unused & (set(missing) | set(zero)), f"token loss: missing {missing}, zero {zero}, bad {bad}"
    return out


@pytest.mark.parametrize("name,overrides", VARIANTS, ids=VARIANT_IDS)
def test_forward_backward_reaches_every_parameter(name, overrides):
    torch.manual_seed(0)
    model = small(name, **overrides).train()
    check_forward_backward(model, images())
    # the model-specific parameters exist (and so were among those checked)
    names = dict(model.named_parameters())
    assert "class_token" in names
    if name == "RelativePerformer":
        assert any(n.endswith("alpha") for n in names) and any(n.endswith("beta") for n in names)
        assert "positional.features.frequencies" in names
    if name == "ClippedRelativePerformer":
        assert any(n.endswith("relative_keys") for n in names)
    if name == "Performer":
        assert "positional.encoding.frequencies" in names


@pytest.mark.parametrize("embedding_type", ["linear", "MLP", "lookup"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_embedding_types_and_channels(name, embedding_type, channels):
    torch.manual_seed(1)
    model = small(name, embedding_type=embedding_type, in_channels=channels).train()
    x = images(channels=channels)
    if embedding_type == "lookup":
        with pytest.raises(UserError):
            model(x)  # float pixels into a lookup table
        x = torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    check_forward_backward(model, x)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_channel_count_raises_user_error(name):
    model = small(name, in_channels=1)
    with pytest.raises(UserError, match="channels"):
        model(images(channels=3))
    with pytest.raises(UserError):
        model(torch.randn(3, H, W))  # no channel axis


@pytest.mark.parametrize("name", NAMES)
def test_images_of_other_sizes(name):
    """Positions are computed per batch: one model runs on several sizes, non-square included."""
    torch.manual_seed(3)
    model = small(name).eval()
    with torch.no_grad():
        for height, width in ((H, W), (7, 13), (16, 16), (1, 5)):
            out = model(images(height=height, width=width))
            assert out.shape == (3, 10) and torch.isfinite(out).all(), f"{height}x{width}"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    x = images()
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        model = small(name).eval()
        with torch.no_grad():
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1]), f"same seed, max difference {(outs[0] - outs[1]).abs().max():.2e}"
    assert not torch.equal(outs[0], outs[2]), "different seeds give identical models"


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("no_projection", [False, True], ids=["favor", "exact"])
@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name, no_projection, dtype):
    """Eval mode: a sample's output does not change when the other samples change.

    float64 to 1e-6; float32 bit for bit (same shapes, same per-sample arithmetic): a
    key stabiliser shared across the batch already moves float32 outputs by ~3e-7.
    """
    torch.manual_seed(4)
    model = small(name, no_projection=no_projection).to(dtype).eval()
    with torch.no_grad():  # larger queries and keys: larger, more varied exponents
        for attention in attention_modules(model):
            attention.to_qkv.weight.mul_(3)
    x = images(batch=4, dtype=dtype, seed=5)
    y = x.clone()
    y[1:] = images(batch=3, dtype=dtype, seed=6) * 30  # very different others
    with torch.no_grad():
        a, b = model(x), model(y)
    err = (a[0] - b[0]).abs().max().item()
    assert err <= (1e-6 if dtype == F64 else 0.0), f"sample 0 changed by {err:.2e} when samples 1.. changed"
    assert (a[1:] - b[1:]).abs().max() > 1e-3, "other samples did not change: vacuous"


# --------------------------------------------------------------------------- random feature redraws


def attention_modules(model):
    return [m for m in model.modules() if isinstance(m, SelfAttention)]


@pytest.mark.parametrize("name", NAMES)
def test_feature_redraw_schedule(name):
    torch.manual_seed(9)
    interval = 3
    model = small(name, feature_redraw_interval=interval)
    modules = attention_modules(model)
    assert len(modules) == SMALL["depth"]
    assert all(m.feature_map is not None for m in modules), "an attention module holds no random features"
    maps = model.feature_maps()
    assert len(maps) == len(modules) == len({id(m.feature_map) for m in modules})
    x = images()

    model.train()
    history = [[fm.projection.clone()] for fm in maps]
    for _ in range(7):
        model(x)
        for fm, seen in zip(maps, history):
            seen.append(fm.projection.clone())
    for i, (fm, seen) in enumerate(zip(maps, history)):
        changed = [not torch.equal(a, b) for a, b in zip(seen, seen[1:])]
        assert changed == [False, False, True, False, False, True, False], f"feature map {i}: redrawn at {changed}"
        assert (fm.steps, fm.redraws) == (7, 2)

    model.eval()
    frozen = [fm.projection.clone() for fm in maps]
    for _ in range(2 * interval):
        model(x)
    assert all(torch.equal(fm.projection, p) for fm, p in zip(maps, frozen)), "features redrawn in eval mode"
    assert all((fm.steps, fm.redraws) == (7, 2) for fm in maps), "steps counted in eval mode"


def test_feature_redraw_interval_zero_never_redraws():
    torch.manual_seed(9)
    model = small("Performer", feature_redraw_interval=0).train()
    maps = model.feature_maps()
    before = [fm.projection.clone() for fm in maps]
    x = images()
    for _ in range(5):
        model(x)
    assert all(torch.equal(fm.projection, p) for fm, p in zip(maps, before)), "features redrawn with interval 0"
    assert all((fm.steps, fm.redraws) == (5, 0) for fm in maps)
    with pytest.raises(UserError, match="feature_redraw_interval must be >= 0"):
        small("Performer", feature_redraw_interval=-1)


def test_clipped_relative_heads_use_the_redrawn_features():
    """After redraws, the relative heads' weights come from the module's current projection."""
    torch.manual_seed(10)
    model = small("ClippedRelativePerformer", clipping_dist=3).double()
    attn = next(m for m in model.modules() if isinstance(m, ClippedRelativeAttention))
    hc, d = attn.content_heads, SMALL["dim"] // SMALL["heads"]
    q, k, v = torch.randn(3, 2, attn.heads, 1 + H * W, d, dtype=F64).unbind(0)
    before = attn.attend(q, k, v, AttentionContext(H, W))[:, hc:]
    attn.feature_map.redraw()
    attn.feature_map.redraw()
    after = attn.attend(q, k, v, AttentionContext(H, W))[:, hc:]
    expected = clipped_relative_attention_naive(q[:, hc:], v[:, hc:], attn.relative_keys, H, W, attn.feature_map.projection)
    err = (after - expected).abs().max().item()
    assert err < 1e-10, f"relative heads vs naive with the current projection: max error {err:.2e}"
    assert (before - after).abs().max() > 1e-3, "relative heads ignore the feature redraw"


@pytest.mark.parametrize("name", NAMES)
def test_feature_state_survives_a_checkpoint(name, tmp_path):
    torch.manual_seed(11)
    model = small(name, feature_redraw_interval=3).train()
    x = images()
    for _ in range(4):  # 4 steps, one redraw
        model(x)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.manual_seed(12)
    fresh = small(name, feature_redraw_interval=3)
    assert not all(torch.equal(a.projection, b.projection) for a, b in zip(model.feature_maps(), fresh.feature_maps()))
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    for a, b in zip(model.feature_maps(), fresh.feature_maps()):
        assert torch.equal(a.projection, b.projection)
        assert (a.seed, a.steps, a.redraws) == (b.seed, b.steps, b.redraws) == (a.seed, 4, 1)
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    model.train(), fresh.train()
    for _ in range(2):  # step 6: both redraw, to the same matrices
        model(x), fresh(x)
    for a, b in zip(model.feature_maps(), fresh.feature_maps()):
        assert a.redraws == b.redraws == 2 and torch.equal(a.projection, b.projection)


# --------------------------------------------------------------------------- parameter counts


def test_parameter_counts_at_original_defaults():
    counts = {name: count_parameters(create_model(model=name)) for name in NAMES}
    report = ", ".join(f"{name}: {count:,}" for name, count in counts.items())
    print(f"\nparameters at the original defaults (dim 128, depth 4, heads 4, 1x32x32): {report}")
    assert abs(counts["Performer"] - 794_000) / 794_000 < 0.02, f"Performer is not ~794K as in the original ({report})"
    for name, count in counts.items():
        assert abs(count - counts["Performer"]) / counts["Performer"] < 0.02, f"{name} far from Performer ({report})"


# --------------------------------------------------------------------------- linear memory


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces (ops as dispatched after autograd)."""

    def __init__(self):
        super().__init__()
        self.numel, self.where = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.where = t.numel(), f"{func} -> {tuple(t.shape)}"
        return out


def largest_tensor(fn, *args):
    with torch.no_grad(), LargestTensor() as mode:
        fn(*args)
    return mode


SIDE = 128
N = 1 + SIDE * SIDE  # 16385 tokens
LIMIT = N * N // 4


@pytest.mark.parametrize("name", NAMES)
def test_linear_memory_on_a_128x128_image(name):
    """No intermediate tensor with n^2/4 elements or more (FAVOR+, eval, no_grad, small dim, depth 1)."""
    torch.manual_seed(13)
    model = create_model(model=name, dim=16, depth=1, heads=2).eval()
    mode = largest_tensor(model, torch.randn(1, 1, SIDE, SIDE))
    assert mode.numel < LIMIT, f"{name}: a {mode.numel:,}-element tensor ({mode.where}) for n = {N} (limit n^2/4 = {LIMIT:,})"
    print(f"\n{name} at {SIDE}x{SIDE}: largest intermediate {mode.numel:,} elements ({mode.where}); n^2 = {N * N:,}")


def test_linear_memory_check_catches_quadratic_attention(monkeypatch):
    """Negative controls on the meta device (nothing allocated): the check fails for n x n attention."""
    q = torch.empty(1, 1, N, 8, device="meta")
    mode = largest_tensor(quadratic_softmax_attention, q, q, q)
    assert mode.numel >= LIMIT, f"quadratic attention not caught: largest {mode.where}"

    def quadratic_attend(self, q, k, v, ctx):
        return quadratic_softmax_attention(q, k, v)

    model = create_model(model="RelativePerformer", dim=16, depth=1, heads=2).eval().to("meta")
    monkeypatch.setattr(SelfAttention, "attend", quadratic_attend)
    mode = largest_tensor(model, torch.empty(1, 1, SIDE, SIDE, device="meta"))
    assert mode.numel >= LIMIT, f"a model with quadratic attention not caught: largest {mode.where}"


def test_a_new_attention_builds_on_self_attention(monkeypatch):
    """The README's recipe: subclass SelfAttention, override ``attend``, register a positional component
    that builds it. The override runs in training too, also with the compiled attention on (the packed
    path is SelfAttention's own), and the model trains like the registered ones."""
    from relative_performer.attention import compiled
    from relative_performer.models import registry
    from relative_performer.positional.components import PositionalComponent

    calls = []

    class MeanOfValues(SelfAttention):
        def attend(self, q, k, v, ctx):
            calls.append(q.shape)
            return v.mean(dim=-2, keepdim=True).expand_as(v)

    class MeanPositions(PositionalComponent):
        def attention(self):
            return MeanOfValues(self.cfg)

    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
    monkeypatch.setattr(compiled, "_enabled", True)  # as when training on the CPU (no compile happens here)
    registry.register_model("MeanPerformer", MeanPositions, (), "values averaged over the tokens")
    model = registry.create_model(model="MeanPerformer", **SMALL).train()
    out = model(images())
    out.sum().backward()
    assert len(calls) == SMALL["depth"] and calls[0] == (3, 4, H * W + 1, 8)
    assert all(p.grad is not None for name, p in model.named_parameters() if "to_out" in name or "to_qkv.bias" in name)
    with pytest.raises(UserError, match="MeanPerformer"):
        registry.get_spec("MeanPerformr")
