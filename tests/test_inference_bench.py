"""bench/inference.py: every variant measured at every batch x threads setting; the compacted AdapMTL model and
the FLOPs-matched Taylor network are real (smaller, with the dead-filter table), at a tiny width."""

from __future__ import annotations

import json

from bench import inference


def test_inference_bench_reports_compacted_and_matched_variants(tmp_path):
    out = tmp_path / "inf.json"
    assert inference.main(["--width_mult", "0.0625", "--input", "32", "--batch", "1", "2", "--threads", "1",
                           "--warmup", "0", "--repeats", "1", "--num_batches", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    v = r["variants"]
    assert set(v) == {"dense", "adapmtl_sparse", "adapmtl_compact", "taylor_50", "taylor_75", "cosprune_50",
                      "cosprune_75", "taylor_heads_at_adapmtl_flops"}
    assert [(s["batch"], s["threads"]) for s in r["settings"]] == [(1, 1), (2, 1)]
    assert all(set(s["latency_ms"]) == set(v) and s["latency_vs_dense"]["dense"] == 1.0 for s in r["settings"])
    # 90% zeros per component: the compacted model is physically smaller, and the table says where from
    compact = v["adapmtl_compact"]
    assert compact["params"] < v["adapmtl_sparse"]["params"] == v["dense"]["params"]
    assert compact["flops_per_image"] < v["dense"]["flops_per_image"]
    dead = compact["dead_filters"]
    assert set(dead["zero_filters"]) == {"backbone", "segment_semantic", "normal", "depth_zbuffer"}
    assert sum(removed for removed, _ in dead["removed_channels"].values()) > 0
    # Taylor with heads removes the fewest filters that reach the compacted AdapMTL model's FLOPs
    matched = v["taylor_heads_at_adapmtl_flops"]
    if matched["target_reachable"]:
        assert matched["flops_per_image"] <= compact["flops_per_image"] == matched["target_flops"]
        assert matched["head_channels_removed"] > 0
    else:
        assert matched["flops_per_image"] > compact["flops_per_image"]
