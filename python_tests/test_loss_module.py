"""PEDCCLoss: centroids as a buffer or, when fine-tuning, a Parameter; prediction; state_dict."""
import pytest
import torch

import pedcc_kernels as pk
from pedcc_kernels.reference import pedcc_loss_reference


def test_module_matches_functional_reference_and_uses_generated_centroids():
    crit = pk.PEDCCLoss(6, 8, s=10.0, m=0.3, n=2.0, lam=0.5, backend="torch")
    assert "centroids" in dict(crit.named_buffers()) and not crit.finetuning
    torch.testing.assert_close(crit.centroids, pk.generate_centroids(6, 8))
    x = torch.randn(5, 8, dtype=torch.float64)
    y = torch.tensor([0, 5, 2, 3, 3])
    want = pedcc_loss_reference(x, y, crit.centroids.double(), s=10.0, m=0.3, n=2.0, lam=0.5)
    torch.testing.assert_close(crit(x, y), want, rtol=1e-10, atol=1e-12)


def test_finetuning_turns_centroids_into_a_parameter_that_learns():
    crit = pk.PEDCCLoss(4, 5)
    param = crit.start_finetuning()
    assert isinstance(param, torch.nn.Parameter) and crit.finetuning
    assert [n for n, _ in crit.named_parameters()] == ["centroids"]
    before = param.detach().clone()
    opt = torch.optim.SGD([param], lr=0.1)
    crit(torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    opt.step()
    assert not torch.equal(before, crit.centroids.detach())
    crit.stop_finetuning()
    assert not crit.finetuning and "centroids" in dict(crit.named_buffers())
    torch.testing.assert_close(crit.centroids, param.detach())


def test_trainable_flag_and_state_dict_round_trip():
    a = pk.PEDCCLoss(3, 4, trainable=True, seed=1)
    b = pk.PEDCCLoss(3, 4, seed=2)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.centroids, a.centroids.detach())


def test_predict_returns_nearest_centroid_by_cosine():
    crit = pk.PEDCCLoss(5, 7)
    labels = torch.tensor([4, 0, 3, 3, 1])
    feats = 3.0 * crit.centroids[labels] + 0.01 * torch.randn(5, 7)
    assert torch.equal(crit.predict(feats), labels)


def test_wrong_centroid_shape_is_refused():
    with pytest.raises(ValueError, match="centroids"):
        pk.PEDCCLoss(3, 4, centroids=torch.randn(3, 5))
