"""CACNet (DESIGN 2.4): fused ops against the literal reference, two-phase training parity,
gradient masking, gradcheck, opcheck, torch.compile, checkpoints and bad inputs."""

import math

import pytest
import torch
from torch.library import opcheck

import mmfast
from mmfast.nn import CACNet
from mmfast.ops import cacnet as ops
from mmfast.reference import cacnet as reference
from mmfast.train import (CACNetTrainer, GammaSchedule, load_checkpoint, load_optimizer_state,
                          save_checkpoint)

PASSIVE = {"w_xi_hi", "w_xt_ht", "w_hi_gi", "w_ht_gt"}
CROSS_ACTIVE = {"w_xi_ht", "w_xt_hi", "w_ht_gi", "w_hi_gt"}
OUTPUT = {"w_gi_y", "w_gt_y", "b_y"}
HIDDEN_BIASES = {"b_hi", "b_ht", "b_gi", "b_gt"}


def _problem(batch=13, image_dim=21, text_dim=17, hidden=18, classes=11, activation="relu",
             dtype=torch.float32, device="cpu", seed=0):
    torch.manual_seed(seed)
    model = CACNet(image_dim, text_dim, hidden, classes, activation).to(device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x_img = torch.randn(batch, image_dim, generator=g, dtype=dtype).to(device)
    x_txt = torch.randn(batch, text_dim, generator=g, dtype=dtype).to(device)
    targets = (torch.rand(batch, classes, generator=g) < 0.3).to(device, dtype)
    return model, x_img, x_txt, targets


def _named(model):
    return dict(zip(ops.PARAM_NAMES, model.op_params()))


def _assert_grads_equal(fused, expected, rtol, atol):
    assert set(fused) == set(expected)
    for name in expected:
        torch.testing.assert_close(fused[name], expected[name], rtol=rtol, atol=atol, msg=name)


TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}


# ---- forward
@pytest.mark.parametrize("batch,image_dim,text_dim,hidden,classes", [
    (1, 3, 5, 2, 1), (13, 21, 17, 18, 11), (64, 300, 300, 600, 300), (0, 8, 8, 4, 3),
])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_forward_matches_reference(device, batch, image_dim, text_dim, hidden, classes,
                                   activation):
    model, x_img, x_txt, _ = _problem(batch, image_dim, text_dim, hidden, classes, activation,
                                      device=device)
    logits = model(x_img, x_txt)
    assert logits.shape == (batch, classes)
    expected = reference.full_logits(x_img, x_txt, _named(model), activation)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    with mmfast.backend("reference"):
        torch.testing.assert_close(model(x_img, x_txt), expected, rtol=0, atol=0)


def test_subnetwork_logits_are_their_paths():
    model, x_img, x_txt, _ = _problem()
    p = _named(model)

    def path(x, w1, b1, w2, b2, w_out):
        return torch.relu(torch.relu(x @ p[w1] + p[b1]) @ p[w2] + p[b2]) @ p[w_out] + p["b_y"]

    cases = [
        (model.passive_image_logits(x_img), path(x_img, "w_xi_hi", "b_hi", "w_hi_gi", "b_gi", "w_gi_y")),
        (model.passive_text_logits(x_txt), path(x_txt, "w_xt_ht", "b_ht", "w_ht_gt", "b_gt", "w_gt_y")),
        (model.cross_active_image_logits(x_img), path(x_img, "w_xi_ht", "b_ht", "w_ht_gi", "b_gi", "w_gi_y")),
        (model.cross_active_text_logits(x_txt), path(x_txt, "w_xt_hi", "b_hi", "w_hi_gt", "b_gt", "w_gt_y")),
    ]
    for got, expected in cases:
        torch.testing.assert_close(got, expected)


def test_full_network_is_one_mlp():
    # The ten subsections are exactly a 2-hidden-layer MLP's weights split in blocks.
    model, x_img, x_txt, _ = _problem()
    p = _named(model)
    w1 = torch.cat([torch.cat([p["w_xi_hi"], p["w_xi_ht"]], 1),
                    torch.cat([p["w_xt_hi"], p["w_xt_ht"]], 1)], 0)
    w2 = torch.cat([torch.cat([p["w_hi_gi"], p["w_hi_gt"]], 1),
                    torch.cat([p["w_ht_gi"], p["w_ht_gt"]], 1)], 0)
    w3 = torch.cat([p["w_gi_y"], p["w_gt_y"]], 0)
    h = torch.relu(torch.cat([x_img, x_txt], 1) @ w1 + torch.cat([p["b_hi"], p["b_ht"]]))
    g = torch.relu(h @ w2 + torch.cat([p["b_gi"], p["b_gt"]]))
    torch.testing.assert_close(model(x_img, x_txt), g @ w3 + p["b_y"])


def test_bce_is_stable_for_large_logits():
    model, x_img, x_txt, targets = _problem(classes=11)
    with torch.no_grad():
        model.b_y.copy_(torch.linspace(-200, 200, 11))  # saturated logits, both signs
    step = ops.cacnet_phase1(x_img, x_txt, targets, model.op_params())
    image_loss, _ = reference.pair_losses("passive", x_img, x_txt, targets, _named(model))
    assert torch.isfinite(step.image_loss).all()
    torch.testing.assert_close(step.image_loss, image_loss.detach(), rtol=1e-5, atol=1e-5)
    assert all(torch.isfinite(g).all() for g in step.grads.values())


# ---- each phase's op against autograd over the reference
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_phase_ops_match_reference(device, dtype, activation):
    model, x_img, x_txt, targets = _problem(activation=activation, dtype=dtype, device=device)
    params, named = model.op_params(), _named(model)
    rtol, atol = TOLERANCES[dtype]

    step = ops.cacnet_phase1(x_img, x_txt, targets, params, activation)
    image_loss, text_loss = reference.pair_losses("passive", x_img, x_txt, targets, named,
                                                  activation)
    torch.testing.assert_close(step.image_loss, image_loss.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(step.text_loss, text_loss.detach(), rtol=rtol, atol=atol)
    _assert_grads_equal(step.grads, reference.gradients(image_loss.mean() + text_loss.mean(), named),
                        rtol, atol)
    assert set(step.grads) == PASSIVE | HIDDEN_BIASES | OUTPUT

    forward = ops.cacnet_phase2_forward(x_img, x_txt, targets, params, activation)
    full_loss = reference.per_sample_loss(reference.full_logits(x_img, x_txt, named, activation),
                                          targets)
    torch.testing.assert_close(forward.full_loss, full_loss.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(forward.passive_image_loss, image_loss.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(forward.passive_text_loss, text_loss.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(forward.beta, reference.beta(full_loss, image_loss, text_loss).detach(),
                               rtol=rtol, atol=atol)

    full_grads = ops.cacnet_phase2_full_backward(x_img, x_txt, targets, params, forward, activation)
    _assert_grads_equal(full_grads, reference.gradients(full_loss.mean(), named), rtol, atol)

    for train_output in (True, False):
        cross = ops.cacnet_phase2_cross_active(x_img, x_txt, targets, params, forward, activation,
                                               train_output)
        image_loss, text_loss = reference.pair_losses("cross_active", x_img, x_txt, targets,
                                                      named, activation, train_output)
        torch.testing.assert_close(cross.image_loss, image_loss.detach(), rtol=rtol, atol=atol)
        torch.testing.assert_close(cross.text_loss, text_loss.detach(), rtol=rtol, atol=atol)
        expected = reference.gradients(image_loss.mean() + text_loss.mean(), named)
        _assert_grads_equal(cross.grads, expected, rtol, atol)
        assert set(cross.grads) == CROSS_ACTIVE | HIDDEN_BIASES | (OUTPUT if train_output else set())


def test_gradcheck_forward():
    model, x_img, x_txt, _ = _problem(5, 4, 3, 6, 3, "tanh", dtype=torch.float64)
    inputs = [x_img.requires_grad_(), x_txt.requires_grad_(), *model.op_params()]

    def logits(x_img, x_txt, *params):
        return ops.cacnet_forward(x_img, x_txt, list(params), "tanh")

    assert torch.autograd.gradcheck(logits, inputs)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_gradcheck_phase_ops(activation):
    # The gradients a phase op returns against central differences of the losses it returns,
    # along random directions in float64.
    model, x_img, x_txt, targets = _problem(6, 5, 4, 6, 3, activation, dtype=torch.float64)
    params = [p.detach() for p in model.op_params()]
    g = torch.Generator().manual_seed(3)

    def phase_objectives(params):
        step1 = ops.cacnet_phase1(x_img, x_txt, targets, params, activation)
        forward = ops.cacnet_phase2_forward(x_img, x_txt, targets, params, activation)
        cross = ops.cacnet_phase2_cross_active(x_img, x_txt, targets, params, forward, activation)
        return {
            "phase1": (step1.image_loss.mean() + step1.text_loss.mean(), step1.grads),
            "full": (forward.full_loss.mean(),
                     ops.cacnet_phase2_full_backward(x_img, x_txt, targets, params, forward,
                                                     activation)),
            "cross_active": (cross.image_loss.mean() + cross.text_loss.mean(), cross.grads),
        }

    analytic = phase_objectives(params)
    eps = 1e-6
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        plus = phase_objectives([p + eps * d for p, d in zip(params, direction)])
        minus = phase_objectives([p - eps * d for p, d in zip(params, direction)])
        by_name = dict(zip(ops.PARAM_NAMES, direction))
        for phase, (_, grads) in analytic.items():
            numeric = (plus[phase][0] - minus[phase][0]) / (2 * eps)
            predicted = sum((grads[n] * by_name[n]).sum() for n in grads)
            # Directions also move the parameters a phase does not train: its loss must not
            # depend on them, which the same comparison checks.
            assert abs(float(numeric - predicted)) <= 1e-7 * max(1.0, abs(float(numeric))), phase


# ---- training: fused against the literal reference
def _train(model, optimizer_factory, batches, gammas, backend, train_output=True):
    optimizer = optimizer_factory(model.parameters())
    trainer = CACNetTrainer(model, optimizer, gamma_schedule=0.5,
                            train_output_in_cross_active=train_output)
    results = []
    with mmfast.backend(backend):
        for (x_img, x_txt, targets), gamma in zip(batches, gammas):
            trainer.gamma = gamma
            results.append(trainer.step(x_img, x_txt, targets))
    return results


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-4),
}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("train_output", [True, False])
def test_training_matches_reference(device, optimizer, train_output):
    iterations = 50
    model, *_ = _problem(20, 40, 30, 32, 24, device=device)
    g = torch.Generator().manual_seed(7)
    batches = [
        (torch.randn(20, 40, generator=g).to(device), torch.randn(20, 30, generator=g).to(device),
         (torch.rand(20, 24, generator=g) < 0.25).float().to(device))
        for _ in range(iterations)
    ]
    # Betas sit near 1/2 (the passive and full losses are alike); gammas on either side of it
    # make both cases occur, far enough from every beta that rounding cannot flip a case.
    gammas = [0.5 + 0.08 * math.cos(1.7 * i) for i in range(iterations)]
    fused_model, reference_model = model, CACNet(40, 30, 32, 24).to(device)
    reference_model.load_state_dict(model.state_dict())
    fused = _train(fused_model, OPTIMIZERS[optimizer], batches, gammas, "fused", train_output)
    literal = _train(reference_model, OPTIMIZERS[optimizer], batches, gammas, "reference",
                     train_output)

    cases = [r["case"] for r in literal]
    assert [r["case"] for r in fused] == cases
    assert {1, 2} <= set(cases), cases
    assert min(abs(r["beta"] - r["gamma"]) for r in literal) > 1e-4
    for f, r in zip(fused, literal):
        assert f["beta"] == pytest.approx(r["beta"], rel=1e-4)
        assert f["loss"] == pytest.approx(r["loss"], rel=1e-4)
    for name, value in fused_model.named_parameters():
        expected = dict(reference_model.named_parameters())[name]
        error = (value - expected).abs().max() / expected.abs().max()
        assert error <= 1e-4, f"{name}: relative error {float(error):.2e}"


class _RecordingSGD(torch.optim.SGD):
    """SGD that records, at each step, which parameters carried a (nonzero) gradient."""

    def __init__(self, named_params, lr):
        self.names = {id(p): n for n, p in named_params}
        super().__init__([p for _, p in named_params], lr=lr)
        self.steps = []

    def step(self, closure=None):
        record = {}
        for group in self.param_groups:
            for p in group["params"]:
                record[self.names[id(p)]] = None if p.grad is None else bool(p.grad.any())
        self.steps.append(record)
        return super().step(closure)


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("case,gamma", [(1, 1.0), (2, 0.0)])
@pytest.mark.parametrize("train_output", [True, False])
def test_gradients_reach_only_the_trained_subsections(backend, case, gamma, train_output):
    model, x_img, x_txt, targets = _problem()
    optimizer = _RecordingSGD(list(model.named_parameters()), lr=0.1)
    trainer = CACNetTrainer(model, optimizer, gamma_schedule=gamma,
                            train_output_in_cross_active=train_output)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with mmfast.backend(backend):
        result = trainer.step(x_img, x_txt, targets)
    assert result["case"] == case
    phase1, phase2 = optimizer.steps

    def trained(record):
        assert all(v is None or v is True for v in record.values()), record  # None, never zero
        return {n for n, v in record.items() if v}

    assert trained(phase1) == PASSIVE | HIDDEN_BIASES | OUTPUT
    if case == 1:
        assert trained(phase2) == set(ops.PARAM_NAMES)
    else:
        assert trained(phase2) == CROSS_ACTIVE | HIDDEN_BIASES | (OUTPUT if train_output else set())
    untouched = set(ops.PARAM_NAMES) - trained(phase1) - trained(phase2)
    for name in untouched:
        assert torch.equal(getattr(model, name), before[name]), name


def test_gamma_one_disables_case_two():
    model, x_img, x_txt, targets = _problem()
    trainer = CACNetTrainer(model, torch.optim.SGD(model.parameters(), lr=0.5), gamma_schedule=1)
    assert {trainer.step(x_img, x_txt, targets)["case"] for _ in range(5)} == {1}


def test_gamma_schedule_follows_the_paper():
    schedule = GammaSchedule()  # 0.4, then linear to 0.8 over the last 100 of 500 epochs
    assert schedule(0, None) == 0.4
    assert [schedule(e, 500) for e in (0, 250, 399)] == [0.4, 0.4, 0.4]
    assert schedule(400, 500) == pytest.approx(0.404)
    assert schedule(449, 500) == pytest.approx(0.6)
    assert schedule(499, 500) == pytest.approx(0.8)
    ramp = [schedule(e, 500) for e in range(400, 500)]
    assert all(a < b for a, b in zip(ramp, ramp[1:]))
    assert GammaSchedule(ramp_epochs=100)(0, 10) == pytest.approx(0.44)  # short runs: all ramp


def test_fit_checkpoints_and_resumes(tmp_path):
    model, x_img, x_txt, targets = _problem(40)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_img, x_txt, targets), batch_size=20
    )
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    schedule = GammaSchedule(0.3, 0.7, ramp_epochs=2)

    def new_trainer():
        fresh = CACNet(21, 17, 18, 11)
        fresh.load_state_dict(initial)
        return CACNetTrainer(fresh, torch.optim.Adam(fresh.parameters(), lr=1e-2), schedule)

    straight = new_trainer()
    history = straight.fit(loader, num_epochs=4, progress=False)
    assert [h["gamma"] for h in history] == pytest.approx([0.3, 0.3, 0.5, 0.7])
    assert all(h["case1_steps"] + h["case2_steps"] == 2 for h in history)

    class Interrupted(Exception):
        pass

    class CrashingLoader:
        """The loader for two epochs; the third never starts."""

        epochs = 0

        def __iter__(self):
            self.epochs += 1
            if self.epochs == 3:
                raise Interrupted
            return iter(loader)

    interrupted = new_trainer()
    with pytest.raises(Interrupted):
        interrupted.fit(CrashingLoader(), num_epochs=4, checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors"]
    resumed = new_trainer()
    resumed.load_checkpoint(tmp_path)
    assert resumed.epoch == 2
    resumed.fit(loader, num_epochs=4, progress=False)
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, straight.model.state_dict()[name], rtol=0, atol=0)

    loaded, _ = load_checkpoint(tmp_path)
    torch.testing.assert_close(loaded(x_img, x_txt), interrupted.model(x_img, x_txt))
    with pytest.raises(ValueError, match="holds a model"):
        CACNetTrainer(CACNet(21, 17, 20, 11), torch.optim.SGD(CACNet().parameters(), lr=1)) \
            .load_checkpoint(tmp_path)


def test_optimizer_state_round_trips_through_checkpoints(tmp_path):
    model, x_img, x_txt, _ = _problem()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    model(x_img, x_txt).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, model, {"epoch": 1}, optimizer=optimizer)
    loaded, config = load_checkpoint(tmp_path)
    resumed = torch.optim.Adam(loaded.parameters(), lr=1.0)
    load_optimizer_state(tmp_path, resumed)
    assert config["epoch"] == 1 and resumed.param_groups[0]["lr"] == 0.01
    saved_state, resumed_state = optimizer.state_dict()["state"], resumed.state_dict()["state"]
    assert saved_state.keys() == resumed_state.keys()
    for index, values in saved_state.items():
        assert values.keys() == resumed_state[index].keys()
        for key, value in values.items():
            torch.testing.assert_close(resumed_state[index][key], value, rtol=0, atol=0)
    save_checkpoint(tmp_path, model)  # rewritten without: the stale optimizer file is not read
    with pytest.raises(ValueError, match="holds no optimizer state"):
        load_optimizer_state(tmp_path, resumed)


# ---- registration: opcheck, torch.compile
def _op_samples(device="cpu"):
    model, x_img, x_txt, targets = _problem(9, 7, 5, 8, 6, device=device)
    params = [p.detach() for p in model.op_params()]
    logits, hidden1, hidden2 = torch.ops.mmfast.cacnet_forward(x_img, x_txt, params, "relu")
    forward = ops.cacnet_phase2_forward(x_img, x_txt, targets, params)
    m = torch.ops.mmfast
    return [
        (m.cacnet_forward.default, (x_img, x_txt, params, "relu")),
        (m._cacnet_forward_backward.default,
         (torch.randn_like(logits), x_img, x_txt, params, hidden1, hidden2, "relu", True)),
        (m._cacnet_forward_backward.default,
         (torch.randn_like(logits), x_img, x_txt, params, hidden1, hidden2, "relu", False)),
        (m.cacnet_phase1.default, (x_img, x_txt, targets, params, "relu")),
        (m.cacnet_phase2_forward.default, (x_img, x_txt, targets, params, "tanh")),
        (m.cacnet_phase2_full_backward.default,
         (x_img, x_txt, targets, params, forward.hidden1, forward.hidden2, forward.logits, "relu")),
        (m.cacnet_phase2_cross_active.default,
         (x_img, x_txt, targets, params, forward.layer1, "relu", True)),
        (m.cacnet_phase2_cross_active.default,
         (x_img, x_txt, targets, params, forward.layer1, "relu", False)),
    ]


@pytest.mark.parametrize("index", range(8))
def test_opcheck(device, index):
    op, args = _op_samples(device)[index]
    opcheck(op, args)
    if op is torch.ops.mmfast.cacnet_forward.default:
        x_img, x_txt, params, activation = args
        grad_args = (x_img.clone().requires_grad_(), x_txt,
                     [p.clone().requires_grad_() for p in params], activation)
        opcheck(op, grad_args)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_inference(compile_backend):
    model, x_img, x_txt, _ = _problem()
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)
    with torch.no_grad():
        expected = torch.sigmoid(model(x_img, x_txt))
        torch.testing.assert_close(torch.sigmoid(compiled(x_img, x_txt)), expected)
    # And trained through autograd in a compiled graph.
    compiled(x_img, x_txt).sum().backward()
    assert model.w_xi_hi.grad is not None and model.w_xi_hi.grad.abs().sum() > 0


# ---- bad input
def test_bad_inputs():
    model, x_img, x_txt, _ = _problem()
    with pytest.raises(ValueError, match=r"x_img must have 2 dimensions, got shape \(273,\)"):
        model(x_img.flatten(), x_txt)
    with pytest.raises(ValueError, match=r"the model takes image features of dim 21, x_img has 20"):
        model(x_img[:, :20], x_txt)
    with pytest.raises(ValueError, match=r"params\[w_xt_ht\] must have shape \(18, 9\), got \(17, 9\)"
                                         r" \(the model takes text features of dim 17, x_txt has 18\)"):
        model(x_img, torch.randn(13, 18))
    with pytest.raises(ValueError, match="x_txt must have 13 rows like x_img, got 12"):
        model(x_img, x_txt[:12])
    with pytest.raises(TypeError, match="x_txt must be one of float32, got torch.float64"):
        model(x_img, x_txt.double())
    with pytest.raises(ValueError, match="activation must be one of"):
        CACNet(activation="gelu")
    with pytest.raises(ValueError, match="hidden must be a positive even int"):
        CACNet(hidden=601)
    with pytest.raises(ValueError, match=r"params must hold 15 tensors, got 14"):
        torch.ops.mmfast.cacnet_forward(x_img, x_txt, model.op_params()[:14], "relu")
    with pytest.raises(ValueError, match=r"params\[4\] must have shape \[9, 9\], got \[9, 8\]"):
        params = model.op_params()
        params[4] = params[4][:, :8]
        torch.ops.mmfast.cacnet_forward(x_img, x_txt, params, "relu")


def test_forward_rejects_non_finite_input():
    model, x_img, x_txt, _ = _problem()
    inf_img = x_img.clone()
    inf_img[2, 3] = float("inf")
    with pytest.raises(ValueError, match="cacnet_forward: x_img must be finite, but row 2"):
        model(inf_img, x_txt)


def test_fused_step_rejects_what_the_reference_step_rejects():
    """Both paths of CACNetTrainer.step refuse the same inputs with the same message (after the
    name of what checked: the step itself, or the fused kernel), before any parameter moves."""
    model, x_img, x_txt, targets = _problem()
    trainer = CACNetTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    nan_img, inf_txt, bad_targets = x_img.clone(), x_txt.clone(), targets.clone()
    nan_img[5, 1] = float("nan")
    inf_txt[9, 0] = -float("inf")
    bad_targets[12, 3] = 2.0
    # NaN and +inf swapped between the inputs, and a target in [0, 1] that is neither.
    inf_img, nan_txt, half_targets = x_img.clone(), x_txt.clone(), targets.clone()
    inf_img[2, 3] = float("inf")
    nan_txt[6, 0] = float("nan")
    half_targets[4, 2] = 0.5
    cases = [
        ((nan_img, x_txt, targets), ValueError,
         "x_img must be finite, but row 5 has a NaN or infinite value"),
        ((x_img, inf_txt, targets), ValueError,
         "x_txt must be finite, but row 9 has a NaN or infinite value"),
        ((x_img, x_txt, bad_targets), ValueError,
         "targets must hold only 0 and 1, but row 12 has another value"),
        ((inf_img, x_txt, targets), ValueError,
         "x_img must be finite, but row 2 has a NaN or infinite value"),
        ((x_img, nan_txt, targets), ValueError,
         "x_txt must be finite, but row 6 has a NaN or infinite value"),
        ((x_img, x_txt, half_targets), ValueError,
         "targets must hold only 0 and 1, but row 4 has another value"),
        ((x_img, x_txt, targets[:, :10]), ValueError,
         "targets must have shape (13, 11), got (13, 10)"),
        ((x_img, x_txt[:12], targets), ValueError, "x_txt must have 13 rows like x_img, got 12"),
        ((x_img, x_txt.double(), targets), TypeError,
         "x_txt must be one of float32, got torch.float64"),
    ]
    for args, error_type, expected in cases:
        for backend in ("fused", "reference"):
            with mmfast.backend(backend), pytest.raises(error_type) as error:
                trainer.step(*args)
            assert str(error.value).split(": ", 1)[1] == expected, backend
    for name, value in model.named_parameters():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("case", ["fewer rows", "more rows", "other width", "float64",
                                  "hidden1 of another shape"])
def test_saved_forward_tensors_must_match_the_call(case):
    """The backward ops index hidden1/hidden2/logits/layer1 by this call's shapes: a forward of
    another batch or model was read out of bounds (segfault, or gradients that changed from
    run to run). Every such tensor is checked, through the wrapper and the raw ops."""
    model, x_img, x_txt, targets = _problem(9, 7, 5, 8, 6)
    params = [p.detach() for p in model.op_params()]
    forward = ops.cacnet_phase2_forward(x_img, x_txt, targets, params)
    other = {"fewer rows": lambda t: t[..., :4, :].contiguous() if t.dim() == 3 else t[:4],
             "more rows": lambda t: torch.cat([t, t], -2),
             "other width": lambda t: torch.cat([t, t], -1),
             "float64": lambda t: t.double(),
             "hidden1 of another shape": lambda t: t}[case]
    saved = forward._replace(hidden1=other(forward.hidden1).contiguous(),
                             hidden2=other(forward.hidden2).contiguous()
                             if case != "hidden1 of another shape" else forward.hidden2,
                             logits=other(forward.logits).contiguous(),
                             layer1=other(forward.layer1).contiguous())
    if case == "hidden1 of another shape":
        saved = forward._replace(hidden1=forward.hidden1[:, :, :3].contiguous())
    error = TypeError if case == "float64" else ValueError
    with pytest.raises(error, match=r"cacnet_phase2_full_backward: (hidden1|logits) must"):
        ops.cacnet_phase2_full_backward(x_img, x_txt, targets, params, saved)
    if case != "hidden1 of another shape":
        with pytest.raises(error, match=r"cacnet_phase2_cross_active: layer1 must"):
            ops.cacnet_phase2_cross_active(x_img, x_txt, targets, params, saved)
    logits = torch.zeros(9, 6)
    with pytest.raises(error, match=r"_cacnet_forward_backward: hidden1 must"):
        torch.ops.mmfast._cacnet_forward_backward(logits, x_img, x_txt, params, saved.hidden1,
                                                  forward.hidden2, "relu", True)


@pytest.mark.cuda
def test_mixed_devices_name_the_argument():
    """x_img on the CPU beside CUDA parameters is an argument error, not a failed CUDA guard."""
    model, x_img, x_txt, _ = _problem()
    params = [p.cuda() for p in model.op_params()]
    with pytest.raises(ValueError, match="x_txt must be on cpu like x_img, got cuda:0"):
        torch.ops.mmfast.cacnet_forward(x_img, x_txt.cuda(), params, "relu")
