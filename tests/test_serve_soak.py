"""A bounded memory soak of a real `prom-local serve` process (benchmarks/serve_soak.py has the longer
one): rounds of chat, streamed chat, /v1/grade of one record and of a list, and streams abandoned
mid-answer, all at once; the server's RSS must stay flat after the warm-up."""

from __future__ import annotations

import httpx
import pytest

from benchmarks.serve_soak import one_round, rss_mib, soak, store_mib, wait_idle
from serve_support import ServerProcess

pytestmark = pytest.mark.slow

# RSS growth allowed over the soak's rounds, after the warm-up. Measured here: +1.1 MiB over 30
# rounds (180 requests), the allocator settling; a per-request leak of anything sized by the
# model (a logits row is 192 KiB with SmolLM2's vocabulary, a sampler more) would pass this
# within a few rounds.
TOLERANCE_MIB = 12
# The host prompt store holds earlier prompts' KV by design, up to its limit: small here (a few
# records' states), and subtracted from RSS (it reports its bytes in /metrics).
STORE_MIB = 16
# Rounds measured after the warm-up (benchmarks/serve_soak.py runs many more).
ROUNDS = 4


def test_rss_stays_flat_over_a_soak_of_mixed_and_abandoned_requests(smollm2):
    srv = ServerProcess("-m", str(smollm2), "--parallel", "2", "--ctx", "2048", "--gpu-layers", "0",
                        "--max-tokens", "16", "--served-name", "soak", "--host-cache-mib", str(STORE_MIB))
    try:
        srv.wait_ready()
        seen = []
        result = soak(srv.url, srv.proc.pid, warmup=2, rounds=ROUNDS, on_round=lambda k, got, rss: seen.append(got))
        with httpx.Client(timeout=120) as http:
            wait_idle(http, srv.url)  # every abandoned stream's sequence left the engine
            after = one_round(http, srv.url, 99)  # and the server still serves every kind
            wait_idle(http, srv.url)
            final, final_store = rss_mib(srv.proc.pid), store_mib(http, srv.url)
    finally:
        code = srv.stop()
    assert code == 0, srv.log
    for got in seen + [after]:
        complete, streamed, graded, graded_list, *left = got
        assert complete in ("length", "stop") and streamed == "data: [DONE]"
        assert graded in "12345" and all(s in "12345" for s in graded_list.split(","))
        assert left == ["left", "left"]
    assert result["store_after_warmup_mib"] > 0             # the store was in use ...
    assert max(result["stores"] + [final_store]) <= STORE_MIB  # ... and kept within its limit
    growth = (final - final_store) - (result["rss_after_warmup_mib"] - result["store_after_warmup_mib"])
    print(f"\nRSS after warm-up {result['rss_after_warmup_mib']:.1f} MiB, "
          f"after {ROUNDS + 1} more rounds {final:.1f} MiB; "
          f"host prompt store {result['store_after_warmup_mib']:.1f} -> {final_store:.1f} MiB")
    assert growth < TOLERANCE_MIB, (result["samples"], result["stores"])
