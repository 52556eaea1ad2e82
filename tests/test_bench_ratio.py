"""The benchmark's estimate of a step-time ratio (benchmarks/_ratio.py): the median over chunk
pairs and its block-bootstrap confidence interval."""
import importlib.util
import random
import statistics
import sys
from pathlib import Path

# loaded by path: putting benchmarks/ on sys.path would let its scripts shadow other modules
_spec = importlib.util.spec_from_file_location("bench_ratio", Path(__file__).resolve().parents[1] / "benchmarks" / "_ratio.py")
_ratio = sys.modules["bench_ratio"] = importlib.util.module_from_spec(_spec)   # (dataclasses look it up)
_spec.loader.exec_module(_ratio)
Paired = _ratio.Paired

TRUE = 1.10


def noisy_blocks(rng: random.Random, blocks: int = 7, pairs: int = 4, block_sd: float = 0.02,
                 pair_sd: float = 0.02, burst: float = 0.0) -> list[list[float]]:
    """Pair ratios around TRUE: a shift shared by a block's pairs (its two model copies), noise
    per pair, and with ``burst`` one chunk per block slowed by that much (either copy's)."""
    out = []
    for _ in range(blocks):
        shift = rng.gauss(0, block_sd)
        ratios = [TRUE + shift + rng.gauss(0, pair_sd) for _ in range(pairs)]
        if burst:
            k = rng.randrange(pairs)
            ratios[k] = ratios[k] * (1 + burst) if rng.random() < 0.5 else ratios[k] / (1 + burst)
        out.append(ratios)
    return out


def test_the_interval_covers_the_true_ratio_about_as_often_as_it_says():
    rng = random.Random(3)
    trials = 200
    hits = sum(p.lo <= TRUE <= p.hi for p in
               (Paired.from_blocks(noisy_blocks(rng, burst=0.3), resamples=400) for _ in range(trials)))
    assert hits / trials >= 0.85


def test_a_burst_in_one_chunk_moves_the_median_less_than_the_block_sums():
    rng = random.Random(5)
    blocks = noisy_blocks(rng, blocks=9, block_sd=0.0, pair_sd=0.005, burst=0.3)
    by_pairs = Paired.from_blocks(blocks).median
    by_means = statistics.median(statistics.fmean(b) for b in blocks)   # what a sum per block sees
    assert abs(by_pairs - TRUE) < 0.01
    assert abs(by_pairs - TRUE) < abs(by_means - TRUE)


def test_pairs_that_share_a_block_widen_the_interval():
    rng = random.Random(11)
    blocks = noisy_blocks(rng, blocks=8, block_sd=0.05, pair_sd=0.005)
    clustered = Paired.from_blocks(blocks)
    as_if_independent = Paired.from_blocks([[r] for b in blocks for r in b])
    assert clustered.hi - clustered.lo > as_if_independent.hi - as_if_independent.lo


def test_a_target_is_met_only_when_the_whole_interval_is_below_it():
    rng = random.Random(2)
    at = lambda level: Paired.from_blocks([[level + rng.gauss(0, 0.003) for _ in range(4)] for _ in range(7)])
    assert (at(1.00).verdict(1.03), at(1.10).verdict(1.03)) == ("met", "not met")
    # blocks spread evenly on both sides of the target: the median is the target itself
    straddling = Paired.from_blocks([[1.03 + 0.004 * (b - 3) + d for d in (-0.02, -0.007, 0.007, 0.02)]
                                     for b in range(7)])
    assert straddling.verdict(1.03) == "undecided"
    few = Paired.from_blocks([[1.00, 1.00], [1.00, 1.01]])
    assert few.verdict(1.03) == "undecided" and "too few blocks" in str(few)
