"""One LGST training step against the official code's first step of CSAD.train (tools/golden_csad.py): the same
stand-in weights, batch, jittered batch, penalty image and dropout generator state give the same losses (to 1e-5),
gradients and updated weights."""

import numpy as np
import pytest
import torch

import golden_csad as gc
from usad.models.csad.lgst_train import make_optimizer, normalise, train_step
from usad.models.csad.segmentor import Segmentor


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    torch.set_num_threads(2)
    rec, man = gc.read_fixture(gc.fixture_folder())
    cfg = gc.our_config(tmp_path_factory.mktemp("csad_step"), man["seed"])
    s = cfg.csad.lgst
    seg = Segmentor(cfg.csad, "cpu")
    lgst = gc.our_lgst(cfg.csad, man["seed"])
    lgst.teacher_mean.copy_(torch.from_numpy(rec["teacher_mean"]).float().view(1, -1, 1, 1))
    lgst.teacher_std.copy_(torch.from_numpy(rec["teacher_std"]).float().view(1, -1, 1, 1))
    params = dict([(f"local.{k}", p) for k, p in lgst.local.named_parameters()] +
                  [(f"global_.{k}", p) for k, p in lgst.global_.named_parameters()])
    before = {n: p.detach().reshape(-1)[rec[f"step_pos__{n}"]].double().numpy() for n, p in params.items()
              if f"step_pos__{n}" in rec}
    u8 = lambda a: normalise(torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255))  # noqa: E731
    opt, _ = make_optimizer(lgst, s, iterations=2)
    lgst.train()
    torch.set_rng_state(torch.from_numpy(rec["step_rng_state"]))
    losses = train_step(lgst, s, lambda x: seg.encode(x)[1:], opt, u8(rec["step_image"]), u8(rec["step_aug"]),
                        u8(rec["step_penalty"]))
    return {"rec": rec, "man": man, "losses": losses, "params": params, "before": before}


def test_same_starting_weights(step):
    assert sorted(step["params"]) == sorted(step["man"]["step_params"])
    for name, values in step["before"].items():
        np.testing.assert_array_equal(values, step["rec"][f"step_before__{name}"], err_msg=name)


def test_losses(step):
    theirs, ours = step["man"]["step_losses"], step["losses"]
    for their_key, our_key in (("loss_st", "local"), ("loss_ae", "global"), ("loss_stae", "fusion"),
                               ("total_loss", "total")):
        assert ours[our_key] == pytest.approx(theirs[their_key], rel=1e-5), their_key


def test_gradients_and_updates(step):
    rec = step["rec"]
    for name, p in step["params"].items():
        pos = rec[f"step_pos__{name}"]
        grad_norm, update_norm = rec[f"step_norms__{name}"]
        assert float(p.grad.double().norm()) == pytest.approx(grad_norm, rel=1e-4), name
        np.testing.assert_allclose(p.grad.reshape(-1)[pos].double().numpy(), rec[f"step_grad__{name}"],
                                   rtol=1e-3, atol=1e-4 * grad_norm / np.sqrt(p.numel()) + 1e-12, err_msg=name)
        after = p.detach().reshape(-1)[pos].double().numpy()
        np.testing.assert_allclose(after, rec[f"step_after__{name}"], rtol=1e-5, atol=1e-7, err_msg=name)
        update = np.linalg.norm(after - step["before"][name])
        assert update <= update_norm * (1 + 1e-3) + 1e-9, name
