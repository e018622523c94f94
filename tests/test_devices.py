"""Where shards compute: one device per shard spread over the visible GPUs, the GPU fraction a
Ray shard asks for, where Mult-VAE trains, and what the shards table records (CPU only: CUDA
is stood in for)."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from flows.runner import (
    _gpu_options,
    gpus_per_shard,
    make_task_runner,
    missing_resources,
    placement_resources,
    train_on_gpu,
)
from lcer_core.devices import device_label, shard_device
from lcer_core.errors import InvalidParameterError
from lcer_core.shards import shard_placements


def test_shards_side_by_side_take_the_least_busy_gpu() -> None:
    with shard_device(cuda_devices=3) as a, shard_device(cuda_devices=3) as b:
        with shard_device(cuda_devices=3) as c:
            assert [a, b, c] == [torch.device("cuda", i) for i in range(3)]
        with shard_device(cuda_devices=3) as d:  # c's GPU is free again
            assert d == torch.device("cuda", 2)
    with shard_device(cuda_devices=3) as e:
        assert e == torch.device("cuda", 0)
    with shard_device(cuda_devices=0) as f:
        assert f == torch.device("cpu")
    if not torch.cuda.is_available():
        with shard_device() as g:  # no CUDA here: the CPU, even on a Ray node's logical GPU
            assert g == torch.device("cpu")


def test_a_device_label_names_the_gpu_ray_gave() -> None:
    assert device_label(torch.device("cuda", 1)) == "cuda:1"
    assert device_label(torch.device("cpu"), ["0"]) == "cpu ray-gpu 0"
    assert device_label(torch.device("cuda", 0), ["3"]) == "cuda:0 ray-gpu 3"
    rows = pl.DataFrame({"shard": [0, 0, 1], "uid": [1, 1, 2], "node": ["n"] * 3,
                         "device": ["cpu"] * 3, "placement": ["cpu ray-gpu 0"] * 2 + [None]})  # fmt: skip
    placed = shard_placements(rows)
    assert placed is not None and placed["device"].to_list() == ["cpu ray-gpu 0", "cpu"]


def test_the_gpu_fraction_per_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LCER_RAY_GPUS_PER_SHARD", raising=False)
    assert gpus_per_shard() == 1.0
    assert _gpu_options(1.0) == {"num_gpus": 1.0}  # Ray's fresh worker per GPU task
    monkeypatch.setenv("LCER_RAY_GPUS_PER_SHARD", "0.5")
    assert placement_resources("ray-gpu") == {"CPU": 1.0, "GPU": 0.5}
    assert _gpu_options(0.5) == {"num_gpus": 0.5, "max_calls": 0}  # long-lived workers
    half = {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 0.5}}
    assert missing_resources([half], True, 0.5) is None
    assert "both a GPU and a CPU" in (missing_resources([half], True, 1.0) or "")
    for bad in ("0", "1.5", "half", "nan"):
        monkeypatch.setenv("LCER_RAY_GPUS_PER_SHARD", bad)
        with pytest.raises(InvalidParameterError, match=r"^LCER_RAY_GPUS_PER_SHARD must be"):
            gpus_per_shard()


def test_where_mult_vae_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    for choice in ("", "auto", "here"):  # no Ray cluster with a GPU here: the flow's machine
        monkeypatch.setenv("LCER_TRAIN_ON", choice)
        assert train_on_gpu() is False
    monkeypatch.setenv("LCER_TRAIN_ON", "gpu")
    with pytest.raises(InvalidParameterError, match=r"^LCER_TRAIN_ON=gpu needs --runner ray"):
        train_on_gpu()
    with pytest.raises(InvalidParameterError, match=r"^LCER_TRAIN_ON=gpu needs --runner ray"):
        make_task_runner("threads")  # before the flow starts
    monkeypatch.setenv("LCER_TRAIN_ON", "tpu")
    with pytest.raises(InvalidParameterError, match=r"^LCER_TRAIN_ON must be auto, gpu or here"):
        train_on_gpu()
