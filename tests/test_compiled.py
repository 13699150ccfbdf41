"""The torch.compile'd FAVOR+ core (``attention/compiled.py``) against the eager one, and its wiring.

Compiling takes a few seconds per kernel, dtype and shape; the shapes here are small and shared.
Where ``torch.compile`` does not work (no C++ compiler), the comparisons are skipped and the
fallback tests still run.
"""

from __future__ import annotations

import json

import pytest
import torch

from relative_performer import cli
from relative_performer.attention import compiled, favor
from relative_performer.attention.favor import FeatureMap

from test_cli import data_dir, train_args  # noqa: F401  (the module-scoped fake MNIST fixture)

F64 = torch.float64


@pytest.fixture
def fresh_state(monkeypatch):
    """The module's process-wide state, restored after the test."""
    monkeypatch.setattr(compiled, "_enabled", False)
    monkeypatch.setattr(compiled, "_unavailable", None)
    monkeypatch.setattr(compiled, "_functions", dict(compiled._functions))


@pytest.fixture
def compiled_on(fresh_state):
    if not compiled.enable():
        pytest.skip(f"torch.compile does not work here: {compiled.unavailable_reason()}")


def _inputs(dtype, seed=21):
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(2, 21, 3, 3, 16, generator=generator, dtype=dtype) * 1.5  # (b, n, t, h, d)
    return [t.requires_grad_() for t in qkv.permute(2, 0, 3, 1, 4).clone().unbind(0)]


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
def test_compiled_attention_matches_eager(kernel, dtype, compiled_on):
    torch.manual_seed(22)
    fm = FeatureMap(16, 40, kernel=kernel).to(dtype)
    q, k, v = _inputs(dtype)
    fast = compiled.attend(kernel, q, k, v, fm.projection)
    assert fast is not None, compiled.unavailable_reason()
    slow = fm._attend_all(q, k, v)
    tol_out, tol_grad = (1e-12, 1e-10) if dtype == F64 else (2e-5, 2e-4)
    assert (fast - slow).abs().max() <= tol_out
    assert fast.transpose(1, 2).is_contiguous()  # laid out (b, n, h, e): the head merge is a view
    grad = torch.randn_like(slow)
    for a, b in zip(torch.autograd.grad(fast, (q, k, v), grad), torch.autograd.grad(slow, (q, k, v), grad)):
        assert (a - b).abs().max() <= tol_grad * max(1.0, b.abs().max().item())
        assert b.abs().max() > 0


def test_enable_raises_torch_recompile_limit(compiled_on):
    """Past torch's default of 8 compiled shapes per function, dynamo would silently run the rest eagerly
    (a benchmark's scaling sweep reaches that)."""
    import torch._dynamo.config as dynamo_config

    limit = getattr(dynamo_config, "recompile_limit", getattr(dynamo_config, "cache_size_limit", None))
    assert limit >= compiled.RECOMPILE_LIMIT >= 32


def test_feature_map_takes_the_compiled_core_only_for_cpu_training(compiled_on, monkeypatch):
    fm = FeatureMap(16, 40)
    q, k, v = _inputs(torch.float32)
    calls = []
    original = compiled.attend
    monkeypatch.setattr(compiled, "attend", lambda *a: calls.append(1) or original(*a))
    out = fm.attend(q, k, v)
    assert len(calls) == 1
    out.sum().backward()
    with torch.no_grad():
        fm.attend(q, k, v)  # evaluation: the chunked eager path
    compiled.disable()
    fm.attend(q, k, v)
    assert len(calls) == 1


def test_a_failing_compile_falls_back_to_eager_for_good(fresh_state, monkeypatch):
    monkeypatch.setattr(compiled, "_enabled", True)

    def broken(kernel):
        raise RuntimeError("no C++ compiler\nsecond line")

    monkeypatch.setattr(compiled, "compiled_function", broken)
    fm = FeatureMap(16, 40)
    q, k, v = _inputs(torch.float32)
    out = fm.attend(q, k, v)
    assert torch.equal(out, fm._attend_all(q, k, v))
    assert not compiled.enabled() and compiled.unavailable_reason() == "RuntimeError: no C++ compiler"


def test_enable_reports_why_torch_compile_does_not_work(fresh_state, monkeypatch):
    monkeypatch.setattr(compiled, "_functions", {})

    def no_compile(*args, **kwargs):
        raise RuntimeError("Python 3.99 is not supported")

    monkeypatch.setattr(torch, "compile", no_compile)
    assert compiled.enable() is False
    assert "Python 3.99" in compiled.unavailable_reason()
    assert compiled.enable() is False  # not tried again


@pytest.mark.parametrize("how", ["default", "flag", "environment", "broken"])
def test_train_records_whether_the_attention_was_compiled(how, capsys, fresh_state, monkeypatch, data_dir, tmp_path):  # noqa: F811
    monkeypatch.delenv(compiled.ENV, raising=False)
    extra = []
    if how == "flag":
        extra = ["--no_compile_attention"]
    elif how == "environment":
        monkeypatch.setenv(compiled.ENV, "0")
    elif how == "broken":
        monkeypatch.setattr(compiled, "_probe", lambda: (_ for _ in ()).throw(RuntimeError("no compiler")))
    elif not compiled.enable():
        pytest.skip(f"torch.compile does not work here: {compiled.unavailable_reason()}")
    compiled.disable()
    code = cli.main([*map(str, train_args(data_dir, tmp_path, "Performer", "--max_steps", "3", *extra))])
    out, err = capsys.readouterr()
    assert code == 0, err
    config = json.loads(next(tmp_path.rglob("config.json")).read_text())
    assert config["sessions"][0]["machine"]["compiled_attention"] is (how == "default")
    assert config["runtime"]["compile_attention"] is (how != "flag")
    assert ("torch.compile does not work here (RuntimeError: no compiler)" in out) is (how == "broken")


def test_compiled_core_keeps_no_more_for_the_backward_than_eager(compiled_on):
    """The benchmark measures memory with the eager core; the compiled one must not keep more tensors alive."""
    fm = FeatureMap(16, 40)

    def saved_megabytes(attend) -> float:
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        q, k, v = _inputs(torch.float32, seed=23)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            attend(q, k, v)
        return sum(storages.values()) / 2**20

    eager = saved_megabytes(fm._attend_all)
    fast = saved_megabytes(lambda q, k, v: compiled.attend("softmax", q, k, v, fm.projection))
    assert 0 < fast <= eager * 1.01, (fast, eager)


def _loss_and_grads(model, images):
    model.zero_grad(set_to_none=True)
    logits = model(images)
    logits.pow(2).sum().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


COMPILED_FUNCTION = {  # which compiled function each model's layers call
    "Performer": "_packed_core",  # FAVOR+ from the packed q/k/v projection
    "RelativePerformer": "_packed_core",  # ... widened by the position channels inside the compiled function
    "RelativePerformer+content": "_packed_core",
    "ClippedRelativePerformer": "_core",  # its content heads: FAVOR+ on split heads
    "ExactRelativePerformer": "separable_attention",
}


@pytest.mark.parametrize("name", list(COMPILED_FUNCTION))
def test_models_train_alike_compiled_and_eager(name, compiled_on, monkeypatch):
    """Same weights, eval mode (no dropout), float64: logits and every gradient with the compiled cores
    (FAVOR+, and ExactRelativePerformer's separable attention) against eager."""
    from relative_performer.models import create_model

    torch.manual_seed(24)
    model_name, _, content = name.partition("+")
    model = create_model(model=model_name, dim=32, depth=2, heads=4, nb_features=24, clipping_dist=3,
                         content_rel_attn=bool(content)).double().eval()
    images = torch.rand(2, 1, 6, 7, dtype=F64)
    calls = []
    original = compiled.call
    monkeypatch.setattr(compiled, "call", lambda fn, *a: calls.append(fn.__name__) or original(fn, *a))
    fast_logits, fast_grads = _loss_and_grads(model, images)
    assert len(calls) == 2  # one per layer
    assert set(calls) == {COMPILED_FUNCTION[name]}
    compiled.disable()
    slow_logits, slow_grads = _loss_and_grads(model, images)
    assert len(calls) == 2  # none with compiled attention off
    assert (fast_logits - slow_logits).abs().max() <= 1e-10
    assert fast_grads.keys() == slow_grads.keys()
    for key in slow_grads:
        assert (fast_grads[key] - slow_grads[key]).abs().max() <= 1e-9 * max(1.0, slow_grads[key].abs().max().item()), key


@pytest.mark.parametrize("widened", [False, True])
def test_packed_core_matches_split_heads(widened, compiled_on):
    """``attend_packed`` (the packed projection, optionally widened by strategy 1's channels) against
    ``FeatureMap.attend`` on the split and widened heads, float64: outputs and the gradients of the packed
    projection and of the extra channels."""
    from relative_performer.positional.constrained import widen

    generator = torch.Generator().manual_seed(25)
    b, n, h, d, e = 2, 13, 3, 8, 4
    fm = FeatureMap(d + (e if widened else 0), 30).double()
    qkv = (torch.randn(b, n, 3 * h * d, generator=generator, dtype=F64) * 1.5).requires_grad_()
    extras = (None, None)
    if widened:
        extras = (torch.randn(1, h, n, e, generator=generator, dtype=F64).requires_grad_(),
                  torch.randn(1, 1, n, e, generator=generator, dtype=F64).requires_grad_())
    fast = compiled.attend_packed("softmax", qkv, h, fm.projection, *extras)
    assert fast is not None, compiled.unavailable_reason()
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    if widened:
        q, k = widen(q, k, *extras)
    slow = fm._attend_all(q, k, v)
    assert fast.shape == slow.shape == (b, h, n, d)
    assert fast.transpose(1, 2).is_contiguous()  # laid out (b, n, h, e): the head merge is a view
    assert (fast - slow).abs().max() <= 1e-12
    inputs = [qkv] + [t for t in extras if t is not None]
    grad = torch.randn(slow.shape, generator=generator, dtype=F64)
    for a, c in zip(torch.autograd.grad(fast, inputs, grad), torch.autograd.grad(slow, inputs, grad)):
        assert (a - c).abs().max() <= 1e-10 * max(1.0, c.abs().max().item())
        assert c.abs().max() > 0


def test_packed_attention_only_for_plain_favor_heads():
    """``attend_qkv`` bypasses ``attend`` only where ``attend`` is SelfAttention's own: not for softmax heads,
    a subclass's (clipped) or an instance's replacement. (ExactRelativePerformer's layers replace
    ``attend_qkv`` itself.)"""
    import types

    from relative_performer.models import create_model
    from relative_performer.models.blocks import SelfAttention

    def first_attention(**kwargs):
        model = create_model(dim=32, depth=1, heads=4, **kwargs)
        return next(m for m in model.modules() if isinstance(m, SelfAttention))

    assert first_attention(model="Performer").packed_attention()
    assert first_attention(model="RelativePerformer").packed_attention()
    assert not first_attention(model="Performer", no_projection=True).packed_attention()
    assert not first_attention(model="ClippedRelativePerformer").packed_attention()
    patched = first_attention(model="Performer")
    patched.attend = types.MethodType(lambda self, q, k, v, ctx: v, patched)
    assert not patched.packed_attention()
