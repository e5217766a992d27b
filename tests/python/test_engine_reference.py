"""The Rust engine against an independent pure-PyTorch BYOL (reference_byol.py).

Identical initial weights and views go into both; after each compared step the loss, every online
weight, every target weight, the BN statistics and the optimizer state must agree.

Tolerances come from a floor measured in the same test, on the CPU at hand: the same reference run
in fp64 beside the fp32 one. For each tensor, ``floor = max|ref32 - ref64| / scale`` (scale: the
tensor's largest fp64 entry, at least 1e-3), and the engine may differ from the fp32 reference by
``FLOOR_MULTIPLE`` times the larger of that floor and the median floor over all tensors (the
median keeps a tensor that fp32 happens to get nearly exact from demanding more than fp32 can
give). Biases whose true gradient is 0 (``ZERO_GRAD``) hold only rounding noise in the optimizer
state, so their buffers are compared as one concatenated vector.

Measured on an AMD EPYC (AVX-512, no AMX), with the floors these tests compute: the engine's worst
error is 0.09-0.11 of its tolerance on the ConvNet after 5 steps and 0.003 on ResNet-18 after 2.
Mutations checked by hand (applied to the reference, which the comparison treats symmetrically),
each failing the ConvNet cases by a factor of at least 3.5 and the ResNet-18 cases by at least 9.7:
tau one step ahead (661-12,000x the tolerance), no EMA (86-47,000x), weight decay also on biases
and BN parameters (3.5-80x), and the loss gradient's sign flipped with the loss value unchanged
(12,000-1,000,000x).
"""

import copy
import statistics

import pytest
import torch

import byol_rs
from reference_byol import ZERO_GRAD, ReferenceBYOL

# The engine may sit this many floors from the fp32 reference.
FLOOR_MULTIPLE = 10.0
# The smallest scale a tensor's error is measured against (BN biases start at exactly 0).
MIN_SCALE = 1e-3
FP32_EPS = torch.finfo(torch.float32).eps

CASES = {
    "convnet": dict(backbone="convnet", in_channels=1, small_image=False, size=28, batch=16),
    "resnet18-small": dict(backbone="resnet18", in_channels=3, small_image=True, size=32, batch=16),
}


def make_pair(case, optimizer, channels_last=True, **extra):
    c = CASES[case]
    common = dict(in_channels=c["in_channels"], small_image=c["small_image"])
    heads = dict(projector_hidden=64, projection_dim=32, predictor_hidden=64)
    lr = {"lars": 0.2, "sgd": 0.05, "adamw": 1e-3}[optimizer]
    sched = dict(total_steps=8, warmup_steps=2, tau_base=0.9)
    ours = byol_rs.BYOL(c["backbone"], optimizer=optimizer, lr=lr, batch_size=c["batch"], weight_decay=1e-4,
                        **common, **heads, **sched, channels_last=channels_last, **extra)
    ref = ReferenceBYOL(c["backbone"], proj_hidden=64, proj_out=32, pred_hidden=64, optimizer=optimizer,
                        base_lr=lr, batch_size=c["batch"], weight_decay=1e-4, channels_last=channels_last,
                        **common, **sched, **extra)
    ref_params = dict(ref.online_named_parameters())
    ref_buffers = dict(ref.online_named_buffers())
    assert set(ref_params) == set(ours.named_parameters())
    assert set(ref_buffers) == set(ours.named_buffers())
    with torch.no_grad():
        for name, t in ours.named_parameters().items():
            ref_params[name].copy_(t)
        for name, t in ours.named_buffers().items():
            ref_buffers[name].copy_(t)
    ref.copy_online_to_target()
    return ours, ref, c


def fp64_copy(ref):
    """The same reference in float64: the floor's yardstick."""
    ref64 = copy.deepcopy(ref).double()
    ref64._state = {k: v.double() for k, v in ref._state.items()}
    return ref64


def _with_zero_grad_joined(state):
    """Optimizer state by parameter, with the ZERO_GRAD buffers concatenated into one entry."""
    out, zero = {}, []
    for key in sorted(state):
        param = key.rsplit(".", 1)[0] if key.endswith(".momentum_buffer") else key
        if param.rsplit(".", 1)[0] in ZERO_GRAD or param in ZERO_GRAD:
            zero.append(state[key].reshape(-1))
        else:
            out[param] = state[key]
    if zero:
        out["<biases with zero true gradient>"] = torch.cat(zero)
    return out


def engine_state(ours):
    out = {f"online {k}": v for k, v in ours.named_parameters().items()}
    out.update({f"target {k}": v for k, v in ours.target_named_parameters().items()})
    out.update({f"online buffer {k}": v for k, v in ours.named_buffers().items()})
    out.update({f"target buffer {k}": v for k, v in ours.target_named_buffers().items()})
    out.update({f"optimizer {k}": v for k, v in _with_zero_grad_joined(ours.optimizer_state()).items()})
    return {k: v.detach().double() for k, v in out.items()}


def reference_state(ref):
    out = {f"online {k}": v for k, v in ref.online_named_parameters()}
    out.update({f"online buffer {k}": v for k, v in ref.online_named_buffers()})
    if not ref.simsiam:  # SimSiam's reference keeps an unused target; the engine has none
        out.update({f"target {k}": v for k, v in ref.target_named_parameters()})
        out.update({f"target buffer {k}": v for k, v in ref.target_named_buffers()})
    # Both sides name optimizer state `param` (momentum) or `param.exp_avg` (AdamW).
    state = {(k + ".momentum_buffer" if not k.endswith((".exp_avg", ".exp_avg_sq")) else k): v
             for k, v in ref.optimizer_state().items()}
    out.update({f"optimizer {k}": v for k, v in _with_zero_grad_joined(state).items()})
    return {k: v.detach().double() for k, v in out.items()}


def scales_of(want64):
    """Each tensor's largest fp64 entry, at least MIN_SCALE: what its errors are relative to."""
    return {k: max(v.abs().max().item(), MIN_SCALE) for k, v in want64.items()}


def relative_errors(got, want, scales):
    return {k: (got[k] - want[k]).abs().max().item() / scales[k] for k in want}


def tolerances(ref, ref64):
    """Per tensor: FLOOR_MULTIPLE x max(its fp32-vs-fp64 floor, the median floor)."""
    want64 = reference_state(ref64)
    scales = scales_of(want64)
    floors = relative_errors(reference_state(ref), want64, scales)
    median = statistics.median(floors.values())
    return {k: FLOOR_MULTIPLE * max(f, median, FP32_EPS) for k, f in floors.items()}, scales


def compare(ours, ref, ref64, skip=()):
    tol, scales = tolerances(ref, ref64)
    errors = relative_errors(engine_state(ours), reference_state(ref), scales)
    skipped = lambda k: k.split(" ")[-1] in skip or (skip and k.startswith("optimizer <"))  # noqa: E731
    bad = {k: (e, tol[k]) for k, e in errors.items() if e > tol[k] and not skipped(k)}
    assert not bad, "engine vs fp32 reference, relative error vs tolerance: " + "; ".join(
        f"{k}: {e:.3g} > {t:.3g}" for k, (e, t) in sorted(bad.items(), key=lambda kv: -kv[1][0] / kv[1][1])[:5])


def step_all(ours, ref, ref64, v1, v2, ema=True):
    """One step on all three; asserts the loss within FLOOR_MULTIPLE of its own fp32 floor."""
    got = ours.step(v1, v2)
    want = ref.step(v1.clone(), v2.clone())
    want64 = ref64.step(v1.double(), v2.double())
    floor = max(abs(want["loss"] - want64["loss"]), FP32_EPS * abs(want64["loss"]))
    assert abs(got["loss"] - want["loss"]) <= FLOOR_MULTIPLE * floor, (got, want, want64)
    # The schedules are closed forms evaluated in double on both sides.
    assert got["lr"] == pytest.approx(want["lr"], rel=1e-12)
    if ema:
        assert got["tau"] == pytest.approx(want["tau"], rel=1e-12)
    return got


# Each layout is compared with the reference in the same layout: oneDNN's NHWC backward differs
# from its NCHW one by up to 1.5e-3 relative (ResNet-18 stem BN bias), which is summation order,
# not a bug (benches/RESULTS.md). The engine's own kernels, which sum in other orders, are switched
# off here (BYOL_RS_FUSED_BN=0 and BYOL_RS_WINOGRAD=0: PyTorch's BN and convolution kernels); they
# are judged against fp64 below. ResNet-18 runs 2 steps: the first has lr 0 (warm-up from 0), so the
# second is the first with a weight update and an EMA that moves the target.
@pytest.mark.parametrize(
    "case,steps,channels_last",
    [("convnet", 5, True), ("convnet", 5, False), ("resnet18-small", 2, False), ("resnet18-small", 2, True)],
)
@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_matches_reference(case, steps, channels_last, optimizer, monkeypatch):
    monkeypatch.setenv("BYOL_RS_FUSED_BN", "0")
    monkeypatch.setenv("BYOL_RS_WINOGRAD", "0")
    torch.manual_seed(0)
    ours, ref, c = make_pair(case, optimizer, channels_last=channels_last)
    ref64 = fp64_copy(ref)
    compare(ours, ref, ref64)  # identical start, target included
    shape = (c["batch"], c["in_channels"], c["size"], c["size"])
    for k in range(steps):
        v1, v2 = torch.randn(shape), torch.randn(shape)
        step_all(ours, ref, ref64, v1, v2)
        if k in (0, steps - 1):
            compare(ours, ref, ref64)
    assert ours.step_count == steps


def errors_against_fp64(ours, ref, ref64):
    """Per tensor: the engine's and the fp32 reference's error against the fp64 reference,
    relative to the tensor's scale."""
    want64 = reference_state(ref64)
    scales = scales_of(want64)
    return relative_errors(engine_state(ours), want64, scales), relative_errors(reference_state(ref), want64, scales)


# The fused BN sums in double over its own split of the rows, and the Winograd convolutions
# (ResNet-18's layer 4, 4x4 pixels at 32 px) sum in another order than oneDNN, so neither can
# match PyTorch's kernels bit for bit where the math is ill-conditioned; the engine is judged against
# the same BYOL in fp64 instead, beside PyTorch's own fp32 error (the floor). Both fp32 sides have
# chaotic outliers: a BN bias that a long sum cancels, amplified through the depth, lands 1e-2 off
# fp64 for one seed and 1e-5 for the next (measured: the ConvNet's worst optimizer-state tensor 2e-2
# for the engine at seed 0 and for PyTorch 0.2 at seed 1; ResNet-18's 1-3e-2 on both sides at every
# seed). So per group of tensors, the engine's worst error over 3 seeds must be within
# KERNEL_MULTIPLE x PyTorch's worst in that group, or that many median floors where PyTorch's worst
# is tiny; a wrong kernel is off by order 1 (checked by hand: the fused BN's variance without
# Bessel's correction in the running statistics fails the buffer group by 60x).
KERNEL_MULTIPLE = 4.0


@pytest.mark.parametrize("case,steps", [("convnet", 5), ("resnet18-small", 2)])
@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_engine_kernels_are_as_accurate_as_pytorch(case, steps, optimizer):
    worst, medians = {}, []
    for seed in range(3):
        torch.manual_seed(0)
        ours, ref, c = make_pair(case, optimizer)
        ref64 = fp64_copy(ref)
        torch.manual_seed(seed)
        shape = (c["batch"], c["in_channels"], c["size"], c["size"])
        for _ in range(steps):
            v1, v2 = torch.randn(shape), torch.randn(shape)
            got = ours.step(v1, v2)["loss"]
            theirs = ref.step(v1.clone(), v2.clone())["loss"]
            want = ref64.step(v1.double(), v2.double())["loss"]
            assert abs(got - want) <= KERNEL_MULTIPLE * max(abs(theirs - want), FP32_EPS * abs(want))
        ours_err, fp32_err = errors_against_fp64(ours, ref, ref64)
        medians.append(statistics.median(fp32_err.values()))
        for name in fp32_err:
            group = name.split()[0]
            w = worst.setdefault(group, [0.0, 0.0])
            w[0], w[1] = max(w[0], ours_err[name]), max(w[1], fp32_err[name])
    floor = statistics.median(medians)
    for group, (ours_err, fp32_err) in worst.items():
        assert ours_err <= KERNEL_MULTIPLE * max(fp32_err, floor), \
            f"{group}: worst {ours_err:.3g} vs PyTorch fp32 {fp32_err:.3g} (median floor {floor:.3g})"


def test_adamw_matches_reference():
    # Biases that feed straight into a BN have a true gradient of 0; Adam scales their
    # rounding noise to a step of about lr with a random sign, so they are left out, and
    # Adam's normalised step amplifies rounding, so the comparison is after one update.
    torch.manual_seed(1)
    ours, ref, c = make_pair("convnet", "adamw", channels_last=False)
    ref64 = fp64_copy(ref)
    for _ in range(2):
        v1, v2 = torch.randn(16, 1, 28, 28), torch.randn(16, 1, 28, 28)
        step_all(ours, ref, ref64, v1, v2)
    compare(ours, ref, ref64, skip=ZERO_GRAD)


def test_ema_of_bn_statistics_matches_reference():
    """Mutation checked by hand: the reference's BN-statistics EMA switched off fails the
    target buffers by orders of magnitude."""
    torch.manual_seed(2)
    ours, ref, c = make_pair("convnet", "lars", ema_bn_stats=True)
    ref64 = fp64_copy(ref)
    for _ in range(2):
        v1, v2 = torch.randn(16, 1, 28, 28), torch.randn(16, 1, 28, 28)
        step_all(ours, ref, ref64, v1, v2)
    compare(ours, ref, ref64)


@pytest.mark.parametrize("optimizer", ["lars", "sgd"])
def test_simsiam_mode_matches_reference(optimizer):
    # momentum=False: the target is the detached online projection; no EMA, no target copy.
    # NCHW: without the EMA, SGD here is sensitive. On some view sequences any two correct
    # runs (ours or the reference, either layout) part by 7e-5 within 6 steps (measured); on
    # these views NCHW stays within 2e-6 of the reference, NHWC does not (5e-4 at step 4).
    torch.manual_seed(3)
    c = CASES["convnet"]
    lr = {"lars": 0.2, "sgd": 0.05}[optimizer]
    kw = dict(in_channels=1, total_steps=8, warmup_steps=2)
    ours = byol_rs.BYOL("convnet", optimizer=optimizer, lr=lr, batch_size=16, projector_hidden=64, projection_dim=32,
                        predictor_hidden=64, momentum=False, channels_last=False, **kw)
    ref = ReferenceBYOL("convnet", proj_hidden=64, proj_out=32, pred_hidden=64, optimizer=optimizer, base_lr=lr,
                        batch_size=16, simsiam=True, **kw)
    with torch.no_grad():
        for name, t in dict(ref.online_named_parameters()).items():
            t.copy_(ours.named_parameters()[name])
    ref64 = fp64_copy(ref)
    assert ours.target_named_parameters() == {} and ours.target_named_buffers() == {}
    for k in range(5):
        v1, v2 = torch.randn(c["batch"], 1, 28, 28), torch.randn(c["batch"], 1, 28, 28)
        assert step_all(ours, ref, ref64, v1, v2, ema=False)["tau"] == 0.0
    compare(ours, ref, ref64)
