"""models/memory.py: what a model takes before it is loaded, what the machine can give (from
/proc and cgroup files laid out here as the kernel writes them), and the KV budget's split."""

from __future__ import annotations

import pytest
import torch

from chatforge.models.loader import load_model
from chatforge.models.memory import Available, InsufficientMemoryError, available, check_fits, kv_pool_shares, weights_bytes
from chatforge.models.source import resolve_model

GiB = 1024**3


def lay_out(tmp_path, meminfo_kb: int, cgroup_line: str, files: dict[str, str]):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   {meminfo_kb} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    fs = tmp_path / "cgroup"
    for name, text in files.items():
        (fs / name).parent.mkdir(parents=True, exist_ok=True)
        (fs / name).write_text(text)
    return proc, fs


def test_meminfo_alone(tmp_path):
    proc, fs = lay_out(tmp_path, 8 * 1024 * 1024, "0::/", {"memory.max": "max\n", "memory.current": "123\n"})
    assert available(proc, fs) == Available(8 * GiB, "MemAvailable 8.00 GiB")


def test_a_cgroup_v2_limit_lowers_it(tmp_path):
    proc, fs = lay_out(tmp_path, 8 * 1024 * 1024, "0::/jobs/one", {
        "jobs/one/memory.max": f"{4 * GiB}\n", "jobs/one/memory.current": f"{3 * GiB}\n",
        "jobs/one/memory.stat": f"anon 1\ninactive_file {GiB // 2}\n"})
    room = available(proc, fs)
    assert room.bytes == GiB + GiB // 2  # limit - usage + reclaimable page cache
    assert room.how == "cgroup limit 4.00 GiB, 2.50 GiB of it in use"


def test_a_cgroup_v1_limit_lowers_it_and_no_limit_does_not(tmp_path):
    proc, fs = lay_out(tmp_path, 8 * 1024 * 1024, "4:memory:/box", {
        "memory/box/memory.limit_in_bytes": f"{2 * GiB}\n", "memory/box/memory.usage_in_bytes": f"{GiB}\n"})
    assert available(proc, fs).bytes == GiB
    (fs / "memory/box/memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert available(proc, fs).bytes == 8 * GiB


def test_weights_bytes_before_loading(tiny_hf_folder, bundled_gguf):
    folder, hf = tiny_hf_folder("mixtral_4x2")
    source = resolve_model(str(folder))
    expected = sum(t.numel() for t in hf.state_dict().values()) * 4
    assert weights_bytes("hf", source.path, torch.float32) == expected
    assert weights_bytes("hf", source.path, torch.bfloat16) == expected // 2
    model, _ = load_model(resolve_model(str(bundled_gguf)))
    assert weights_bytes("gguf", bundled_gguf, torch.float32) == sum(p.numel() for p in model.parameters()) * 4


def test_check_fits_says_the_numbers():
    check_fits("m", 3 * GiB, GiB, torch.float32, Available(4 * GiB, "MemAvailable 4.00 GiB"))
    with pytest.raises(InsufficientMemoryError) as info:
        check_fits("m", 3 * GiB, GiB + 1, torch.bfloat16, Available(4 * GiB, "MemAvailable 4.00 GiB"))
    assert str(info.value) == ("m needs 4.00 GiB (weights 3.00 GiB in bfloat16, KV cache 1.00 GiB) but only 4.00 GiB "
                               "is available (MemAvailable 4.00 GiB); serve a smaller model or lower engine.kv_cache_mb")


def test_kv_budget_split_holds_the_same_tokens_per_model():
    # Per-token K+V bytes 1000 and 3000: a 4,000,000-byte budget holds 1000 tokens of each.
    assert kv_pool_shares([1000, 3000], [None, None], 4_000_000) == [1_000_000, 3_000_000]
    # A model with its own pool keeps it, outside the shared budget.
    assert kv_pool_shares([1000, 3000], [None, 5_000_000], 4_000_000) == [4_000_000, 5_000_000]
    assert kv_pool_shares([1000], [None], 4_000_000) == [4_000_000]
