"""Counter-based noise: a pure function of its keys, with the distribution LCER relies on."""

from __future__ import annotations

import math

import torch

from lcer_core.noise import mix, stream_logistic, stream_uniform


def test_logistic_noise_is_finite_and_standard_logistic() -> None:
    streams = mix(7, torch.arange(1_000_000))
    x = stream_logistic(streams, 3)
    assert torch.isfinite(x).all()  # the extreme grid points give ±16.6, never ±inf
    assert abs(float(x.mean())) < 0.01
    assert abs(float(x.std()) - math.pi / math.sqrt(3)) < 0.01
    # P(noise < t) = sigmoid(t): the Gumbel-softmax sample is "remove" with prob. sigmoid(diff)
    for t in (-2.0, 0.0, 1.0):
        assert abs(float((x < t).float().mean()) - 1 / (1 + math.exp(-t))) < 0.003


def test_noise_depends_only_on_its_coordinates() -> None:
    a = mix(1, torch.arange(10))
    assert torch.equal(stream_logistic(a, 5), stream_logistic(a.clone(), 5))
    assert torch.equal(stream_logistic(a[3:], 5), stream_logistic(a, 5)[3:])
    assert not torch.equal(stream_logistic(a, 5), stream_logistic(a, 6))
    u = stream_uniform(a, 0)
    assert ((u >= 0) & (u < 1)).all()
