"""FID: the Frechet distance against an independent eigen-decomposition computation, the
statistics pipeline with a tiny stand-in feature extractor, the real-statistics cache, and
the weights lookup that never downloads (the Inception file itself is not in this sandbox)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from gaugan.metrics import fid
from gaugan.pinned import Pin
from tests.support import stand_in_extractor


def independent_frechet(mu1, sigma1, mu2, sigma2):
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), the trace of the square root from
    the eigenvalues of S1 S2 (real and >= 0 for covariance matrices), not scipy's sqrtm."""
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def random_stats(rng, n, d, scale=1.0, shift=0.0):
    features = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * scale + shift
    return fid.FeatureStatistics(features.mean(0), np.cov(features, rowvar=False), n)


def test_frechet_distance_matches_an_independent_computation():
    rng = np.random.default_rng(0)
    a, b = random_stats(rng, 200, 12), random_stats(rng, 300, 12, scale=1.3, shift=0.5)
    expected = independent_frechet(a.mu, a.sigma, b.mu, b.sigma)
    assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert expected > 1.0


def test_frechet_distance_special_cases():
    rng = np.random.default_rng(1)
    a = random_stats(rng, 100, 6)
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = fid.FeatureStatistics(a.mu + 2.0, a.sigma, a.num_images)  # same covariance, mean moved
    assert fid.frechet_distance(a, shifted) == pytest.approx(4.0 * 6, rel=1e-6)
    # two diagonal Gaussians: sum (sqrt(s1) - sqrt(s2))^2 on the diagonal
    d1, d2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    zero = np.zeros(3)
    value = fid.frechet_distance(fid.FeatureStatistics(zero, d1, 2), fid.FeatureStatistics(zero, d2, 2))
    assert value == pytest.approx((1 - 2) ** 2 + 0 + (3 - 1) ** 2)


def test_feature_statistics_equal_numpy_on_the_stacked_features():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator) for n in (3, 5, 2)]
    features = fid.extract_features(batches, stand_in_extractor)
    stats = fid.feature_statistics(features)
    expected = torch.cat([stand_in_extractor(b) for b in batches]).numpy()
    np.testing.assert_allclose(features, expected)
    np.testing.assert_allclose(stats.mu, expected.mean(0))
    np.testing.assert_allclose(stats.sigma, np.cov(expected, rowvar=False))
    assert stats.num_images == 10
    with pytest.raises(ValueError, match="at least 2"):
        fid.feature_statistics(features[:1])


def test_real_features_are_cached_under_a_key_of_the_exact_images(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=generator)]
    features = fid.extract_features(images, stand_in_extractor)
    path = tmp_path / "fid_stats" / "landscapes_8x8.npz"
    key = {"images_sha256": fid.fingerprint_images(images), "pytorch_fid_version": fid.pytorch_fid_version()}
    assert fid.load_cached_features(path, key) is None
    fid.store_features(path, key, features)
    np.testing.assert_array_equal(fid.load_cached_features(path, key), features)
    changed = [images[0].clone()]
    changed[0][0, 0, 0, 0] ^= 1  # one pixel differs: another fingerprint, a miss
    other_key = {**key, "images_sha256": fid.fingerprint_images(changed)}
    assert other_key != key and fid.load_cached_features(path, other_key) is None
    path.write_bytes(b"not an npz")  # a damaged cache is a miss, not trusted
    assert fid.load_cached_features(path, key) is None


@pytest.fixture
def no_download(monkeypatch):
    """Any attempt to download through torch hub fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_missing_weights_are_reported_with_how_to_provide_them(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    lookup = fid.find_inception_weights(None)
    assert not lookup.available and lookup.path is None
    assert "torch hub cache" in lookup.reason and "not found" in lookup.reason
    assert fid.FID_WEIGHTS_URL in lookup.reason and "evaluate.fid_weights" in lookup.reason
    configured = fid.find_inception_weights(tmp_path / "nowhere.pth")
    assert not configured.available and "nowhere.pth" in configured.reason


def test_files_that_are_not_the_published_weights_are_rejected(tmp_path):
    small = tmp_path / "small.pth"
    small.write_bytes(b"x" * 100)
    assert "100 bytes, expected 95,628,359" in fid.check_weights_file(small)
    same_size = tmp_path / "same_size.pth"
    with open(same_size, "wb") as handle:
        handle.truncate(fid.FID_WEIGHTS_PIN.num_bytes)  # right size, wrong content
    assert f"differs from the expected {fid.FID_WEIGHTS_PIN.sha256}" in fid.check_weights_file(same_size)
    assert not fid.find_inception_weights(same_size).available
    with pytest.raises(fid.InceptionWeightsError, match="6726825d"):
        fid.inception_network(same_size)


def compact_fid_inception_file(path: Path) -> Path:
    """A file with every key and shape of pytorch-fid's Inception state dict, in a few KB (each
    tensor one zero expanded to its shape): pytorch-fid's network, built as fid_inception_v3 does."""
    from pytorch_fid import inception as pf

    with torch.device("meta"):
        network = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        network.Mixed_5b, network.Mixed_5c = pf.FIDInceptionA(192, 32), pf.FIDInceptionA(256, 64)
        network.Mixed_5d = pf.FIDInceptionA(288, 64)
        network.Mixed_6b, network.Mixed_6c = pf.FIDInceptionC(768, 128), pf.FIDInceptionC(768, 160)
        network.Mixed_6d, network.Mixed_6e = pf.FIDInceptionC(768, 160), pf.FIDInceptionC(768, 192)
        network.Mixed_7b, network.Mixed_7c = pf.FIDInceptionE_1(1280), pf.FIDInceptionE_2(2048)
    torch.save({key: torch.zeros((), dtype=value.dtype).expand(value.shape)
                for key, value in network.state_dict().items()}, path)
    return path


def test_pytorch_fid_gets_the_verified_file_read_weights_only(tmp_path, monkeypatch, no_download):
    """pytorch-fid's loader (torch hub's, weights_only=False, downloading when uncached) is
    replaced by our weights-only read of the verified file while its network is built."""
    import pytorch_fid.inception

    weights = compact_fid_inception_file(tmp_path / "weights.pth")
    pin = Pin(weights.stat().st_size, hashlib.sha256(weights.read_bytes()).hexdigest())
    monkeypatch.setattr(fid, "FID_WEIGHTS_PIN", pin)  # the compact file plays the published one
    loader = pytorch_fid.inception.load_state_dict_from_url
    network = fid.inception_network(weights)
    assert not network.training and pytorch_fid.inception.load_state_dict_from_url is loader
    assert all(float(value.abs().sum()) == 0 for value in network.state_dict().values() if value.is_floating_point())


def test_version_is_recorded_with_the_metric():
    """Whatever pytorch-fid is installed, its version travels with every FID (and KID) number."""
    from importlib.metadata import version

    from gaugan.metrics.registry import get_metric

    assert fid.pytorch_fid_version() == version("pytorch-fid")
    assert get_metric("fid").protocol["pytorch_fid_version"] == fid.pytorch_fid_version()
    assert fid.pytorch_fid_version() in get_metric("kid").protocol["features"]


def test_feature_extractor_feeds_pytorch_fid_images_in_0_1(monkeypatch):
    """pytorch-fid reads files with ToTensor (uint8 / 255) and its network does the rest; the
    extractor must hand it exactly that and flatten the (B, 2048, 1, 1) pool output."""
    seen = []

    class StandIn(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return [x.mean(dim=(2, 3), keepdim=True).repeat(1, 2, 1, 1)]

    monkeypatch.setattr(fid, "inception_network", lambda weights: StandIn())
    extract = fid.inception_feature_extractor(Path("unused.pth"), torch.device("cpu"))
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    features = extract(images)
    assert seen[0].dtype == torch.float32 and torch.allclose(seen[0][0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]))
    assert features.shape == (2, 6) and features.dtype == torch.float64
