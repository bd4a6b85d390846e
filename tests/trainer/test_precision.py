from __future__ import annotations

import io

import pytest
import torch

from trainer.config import PerformanceConfig
from trainer.precision import MixedPrecision, Precision, make_precision

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model_and_optimizer(device: str = "cpu") -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _train_step(
    precision: Precision, model, optimizer, device: str = "cpu"
) -> tuple[torch.Tensor, bool]:
    x = torch.randn(16, 8, device=device)
    with precision.autocast():
        out = model(x)
    precision.backward(out.float().pow(2).mean())
    precision.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    stepped = precision.step(optimizer)
    precision.update()
    optimizer.zero_grad()
    return out, stepped


def test_no_op_precision_is_plain_training() -> None:
    precision = make_precision(PerformanceConfig(), CPU)
    assert type(precision) is Precision and precision.scaler is None
    model, optimizer = _model_and_optimizer()
    before = model.weight.detach().clone()
    out, stepped = _train_step(precision, model, optimizer)
    assert out.dtype == torch.float32 and stepped
    assert not torch.equal(model.weight, before)
    assert precision.state_dict() is None
    precision.load_state_dict(None)


def test_no_op_refuses_a_scaler_state_unless_not_strict(caplog) -> None:
    state = torch.amp.GradScaler("cpu").state_dict()
    with pytest.raises(
        ValueError,
        match=r"holds a GradScaler state \(scale 65536.0\) but Precision\(\) has no scaler.*strict=False",
    ):
        Precision().load_state_dict(state)
    Precision().load_state_dict(state, strict=False)
    assert "Dropping the checkpoint's GradScaler state" in caplog.text


def test_bf16_on_cpu_autocasts_without_a_scaler() -> None:
    precision = make_precision(PerformanceConfig(use_amp=True), CPU)
    assert isinstance(precision, MixedPrecision) and precision.scaler is None
    assert precision.dtype == torch.bfloat16
    model, optimizer = _model_and_optimizer()
    out, stepped = _train_step(precision, model, optimizer)
    assert out.dtype == torch.bfloat16 and stepped
    assert precision.state_dict() is None


def test_fp16_on_cpu_owns_a_grad_scaler() -> None:
    precision = make_precision(PerformanceConfig(use_amp=True, amp_dtype="float16"), CPU)
    assert isinstance(precision.scaler, torch.amp.GradScaler)
    model, optimizer = _model_and_optimizer()
    out, stepped = _train_step(precision, model, optimizer)
    assert out.dtype == torch.float16 and stepped
    assert precision.state_dict()["scale"] == 65536.0


def test_backward_scales_and_unscale_restores_the_gradient() -> None:
    precision = make_precision(PerformanceConfig(use_amp=True, amp_dtype="float16"), CPU)
    weight = torch.nn.Parameter(torch.tensor([2.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    precision.backward((weight * 3.0).sum())
    assert weight.grad.item() == 3.0 * 65536.0
    precision.unscale_(optimizer)
    assert weight.grad.item() == 3.0


def test_inf_gradient_skips_the_step_and_backs_off_the_scale() -> None:
    precision = make_precision(PerformanceConfig(use_amp=True, amp_dtype="float16"), CPU)
    model, optimizer = _model_and_optimizer()
    precision.backward(model(torch.randn(2, 8)).sum())
    model.weight.grad[0, 0] = float("inf")
    before = model.weight.detach().clone()
    assert precision.step(optimizer) is False
    precision.update()
    assert torch.equal(model.weight, before)
    assert precision.state_dict()["scale"] == 32768.0


def test_scaler_state_round_trip_through_weights_only_load() -> None:
    config = PerformanceConfig(use_amp=True, amp_dtype="float16")
    precision = make_precision(config, CPU)
    model, optimizer = _model_and_optimizer()
    for _ in range(3):
        _train_step(precision, model, optimizer)
    precision.backward(model(torch.randn(2, 8)).sum())
    model.weight.grad[0, 0] = float("nan")
    precision.step(optimizer)
    precision.update()
    buffer = io.BytesIO()
    torch.save(precision.state_dict(), buffer)
    buffer.seek(0)
    restored = make_precision(config, CPU)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.state_dict() == precision.state_dict()
    assert restored.state_dict()["scale"] == 32768.0


def test_missing_scaler_state_warns_and_keeps_the_initial_scale(caplog) -> None:
    precision = make_precision(PerformanceConfig(use_amp=True, amp_dtype="float16"), CPU)
    precision.load_state_dict(None)
    assert "holds no GradScaler state" in caplog.text
    assert precision.state_dict()["scale"] == 65536.0


def test_amp_on_an_unsupported_device_raises() -> None:
    with pytest.raises(
        ValueError,
        match=r"supports the device types 'cpu' and 'cuda' \(got 'meta'\).*use_amp=False",
    ):
        make_precision(PerformanceConfig(use_amp=True), torch.device("meta"))
    assert type(make_precision(PerformanceConfig(), "meta")) is Precision


@pytest.mark.gpu
@needs_cuda
def test_fp16_on_cuda_uses_a_cuda_grad_scaler() -> None:
    precision = make_precision(
        PerformanceConfig(use_amp=True, amp_dtype="float16"), torch.device("cuda")
    )
    assert isinstance(precision.scaler, torch.amp.GradScaler)
    model, optimizer = _model_and_optimizer("cuda")
    out, stepped = _train_step(precision, model, optimizer, "cuda")
    assert out.dtype == torch.float16 and stepped
    state = precision.state_dict()
    restored = make_precision(PerformanceConfig(use_amp=True, amp_dtype="float16"), "cuda")
    restored.load_state_dict(state)
    assert restored.state_dict() == state


@pytest.mark.gpu
@needs_cuda
def test_bf16_on_cuda_has_no_scaler() -> None:
    precision = make_precision(PerformanceConfig(use_amp=True, amp_dtype="bfloat16"), "cuda")
    assert precision.scaler is None
    model, optimizer = _model_and_optimizer("cuda")
    out, stepped = _train_step(precision, model, optimizer, "cuda")
    assert out.dtype == torch.bfloat16 and stepped


@pytest.mark.parametrize(
    ("config", "dtype"),
    [
        (PerformanceConfig(), torch.float32),
        (PerformanceConfig(use_amp=True), torch.bfloat16),
        (PerformanceConfig(use_amp=True, amp_dtype="float16"), torch.float16),
    ],
)
def test_forward_and_step_optimizers_equal_the_method_by_method_boundary(config, dtype) -> None:
    """``forward`` and ``step_optimizers`` (what the trainer calls) give bit-identical parameters
    and scaler state to autocast/backward/unscale_/clip/step/update called one by one."""
    runs = []
    for combined in (False, True):
        precision = make_precision(config, CPU)
        torch.manual_seed(0)
        models = [torch.nn.Linear(8, 4), torch.nn.Linear(4, 1)]
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
        for _ in range(3):
            x = torch.randn(16, 8)
            if combined:
                out = precision.forward(torch.nn.Sequential(*models), x)
            else:
                with precision.autocast():
                    out = models[1](models[0](x))
            assert out.dtype == dtype
            precision.backward(out.float().pow(2).mean())
            if combined:
                stepped = precision.step_optimizers(optimizers, [0, 1], 0.5)
            else:
                for optimizer in optimizers:
                    precision.unscale_(optimizer)
                params = [p for m in models for p in m.parameters()]
                torch.nn.utils.clip_grad_norm_(params, 0.5)
                stepped = [i for i, o in enumerate(optimizers) if precision.step(o)]
                precision.update()
            assert list(stepped) == [0, 1]
            for optimizer in optimizers:
                optimizer.zero_grad()
        runs.append(([p.detach().clone() for m in models for p in m.parameters()], precision))
    (plain, first), (combined_params, second) = runs
    assert all(torch.equal(a, b) for a, b in zip(plain, combined_params))
    assert first.state_dict() == second.state_dict()


def test_step_optimizers_leaves_out_an_optimizer_whose_scaled_step_was_skipped() -> None:
    precision = make_precision(PerformanceConfig(use_amp=True, amp_dtype="float16"), CPU)
    models = [torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    x = torch.randn(2, 8)
    precision.backward(models[0](x).sum() + models[1](x).sum())
    models[1].weight.grad[0, 0] = float("inf")
    before = models[1].weight.detach().clone()
    assert precision.step_optimizers(optimizers, [0, 1], None) == [0]
    assert torch.equal(models[1].weight, before)
    assert precision.state_dict()["scale"] == 32768.0  # updated once, backed off
