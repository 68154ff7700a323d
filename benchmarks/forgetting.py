"""Two-task forgetting at matched learning: how much of task A does the base LoRA
keep while it learns task B, with EWC++ on and off, when both arms learn B equally?

Task A and task B are the patterns of two directions of embedding space whose
cosine is 0.5, so their adapter responses compete: B's targets overwrite rows
A's outputs depend on (without protection, learning B undoes part of A). Each
cycle feeds `sona_store.learning.background.learn` (the function every store
cycle calls) four high-quality patterns (0.9) around the task's direction and
two low-quality ones (0.1) in random directions, which push away. The adapter
has the default shape (12 layers, rank 8) at 64 dims instead of 256 (a quarter of the work;
the rule has no dim-dependent constant) and the default rate, base_lora_lr =
1e-4: at that rate a task takes about 10^4 cycles to learn (the time constant
is 1 / (lr * activity)), so each task runs `--cycles` cycles.

Figures, from the adapter's mean response along a task's direction on 32 probes
near it (mean over layers and probes of (out - x) . direction):

- learned_a: A's response after A; learned_b: B's response gained during B;
- lost_a: A's response lost during B; retained_a = 1 - lost_a / learned_a;
- drift_per_b: lost_a / learned_b.

The EWC++ arm runs at the default rate and `--ewc-lambda`; the matched arm runs
without EWC++ (ewc_lambda = 0) at the rate, found by bisection, at which it
learns B as much as the EWC++ arm did; the unmatched arm is EWC++ off at the
default rate. Goal: lost_a(on) <= 0.5 * lost_a(matched off).

    python -m benchmarks.forgetting [--cycles 20000] [--ewc-lambda 2000] [--seeds N] [--output F]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from sona_store import SonaConfig
from sona_store.learning import base_lora
from sona_store.learning.background import ewc_config_for, learn
from sona_store.learning.base_lora import BaseLoraWeights
from sona_store.learning.ewc import EwcState
from sona_store.learning.patterns import ExtractedPattern

DIM = 64
COSINE_AB = 0.5
PROBES = 32
MATCH_TOLERANCE = 0.01  # relative difference in learned_b the bisection stops at
DEFAULTS = SonaConfig()


@dataclasses.dataclass(frozen=True)
class Tasks:
    a: np.ndarray
    b: np.ndarray
    probes_a: np.ndarray
    probes_b: np.ndarray
    bad_a: np.ndarray  # (2, DIM): each task's two low-quality directions
    bad_b: np.ndarray


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def make_tasks(seed: int = 0) -> Tasks:
    rng = np.random.default_rng(seed)
    a = _unit(rng.normal(size=DIM))
    other = rng.normal(size=DIM)
    other = _unit(other - (other @ a) * a)
    b = _unit(COSINE_AB * a + np.sqrt(1 - COSINE_AB**2) * other)

    def probes(d: np.ndarray) -> np.ndarray:
        return np.stack([_unit(d + rng.normal(scale=0.03, size=DIM)) for _ in range(PROBES)])

    bad = [np.stack([_unit(rng.normal(size=DIM)) for _ in range(2)]) for _ in range(2)]
    return Tasks(a, b, probes(a).astype(np.float32), probes(b).astype(np.float32), *bad)


def _patterns(
    direction: np.ndarray, bad_directions: np.ndarray, rng: np.random.Generator
) -> list[ExtractedPattern]:
    def jitter(d: np.ndarray) -> np.ndarray:
        return _unit(d + rng.normal(scale=0.05, size=DIM))

    good = [ExtractedPattern(jitter(direction), 25, 22.5, 0.9) for _ in range(4)]
    bad = [ExtractedPattern(jitter(d), 10, 1.0, 0.1) for d in bad_directions]
    return [
        dataclasses.replace(p, centroid=np.asarray(p.centroid, dtype=np.float32))
        for p in good + bad
    ]


def response(lora: BaseLoraWeights, probes: np.ndarray, direction: np.ndarray) -> float:
    deltas = [base_lora.forward(lora, layer, probes) - probes for layer in range(lora.layers)]
    return float(np.mean(np.stack(deltas) @ direction))


@dataclasses.dataclass
class Phase:
    lora: BaseLoraWeights
    state: EwcState
    boundaries: list[int]


def train(
    start: Phase,
    task: tuple[np.ndarray, np.ndarray],
    cycles: int,
    lr: float,
    ewc_lambda: float,
    seed: int,
) -> Phase:
    rng = np.random.default_rng(seed)
    lora, state, boundaries = start.lora, start.state, list(start.boundaries)
    for i in range(cycles):
        step = learn(
            lora,
            state,
            _patterns(*task, rng),
            lr=lr,
            ewc_lambda=ewc_lambda,
            quality_threshold=DEFAULTS.quality_threshold,
        )
        if step is None:
            continue
        lora, state = step.lora, step.ewc_state
        if step.task_boundary:
            boundaries.append(i)
    return Phase(lora, state, boundaries)


def arm(
    tasks: Tasks, after_a: Phase, cycles: int, lr: float, ewc_lambda: float
) -> dict[str, float]:
    """Learn B from the state after A; the figures of that arm."""
    end = train(after_a, (tasks.b, tasks.bad_b), cycles, lr, ewc_lambda, seed=2)
    learned_a = response(after_a.lora, tasks.probes_a, tasks.a)
    learned_b = response(end.lora, tasks.probes_b, tasks.b) - response(
        after_a.lora, tasks.probes_b, tasks.b
    )
    lost_a = learned_a - response(end.lora, tasks.probes_a, tasks.a)
    return {
        "ewc_lambda": ewc_lambda,
        "lr": lr,
        "learned_a": learned_a,
        "learned_b": learned_b,
        "lost_a": lost_a,
        "retained_a": 1 - lost_a / learned_a,
        "drift_per_b": lost_a / learned_b if learned_b else float("nan"),
        "boundaries_in_b": len(end.boundaries) - len(after_a.boundaries),
        "max_up_row_norm": float(np.linalg.norm(end.lora.up, axis=2).max()),
    }


def matched_off(tasks: Tasks, after_a: Phase, cycles: int, target_b: float) -> dict[str, float]:
    """EWC++ off at the rate that learns B as much as `target_b`: learned_b grows
    monotonically with the rate, nearly in proportion at small rates, so the rate is
    rescaled by target / learned until they agree within MATCH_TOLERANCE, with a
    bisection bracket on log(rate) kept as a safeguard."""
    lo, hi = np.log(1e-12), np.log(DEFAULTS.base_lora_lr)
    result = arm(tasks, after_a, cycles, float(np.exp(hi)), 0.0)
    if result["learned_b"] <= target_b:
        return result  # even the default rate learns no more: nothing to match down to
    log_lr = hi
    for _ in range(30):
        if abs(result["learned_b"] - target_b) <= MATCH_TOLERANCE * abs(target_b):
            break
        if result["learned_b"] > target_b:
            hi = log_lr
        else:
            lo = log_lr
        guess = log_lr + np.log(target_b / result["learned_b"]) if result["learned_b"] > 0 else lo
        log_lr = guess if lo < guess < hi else (lo + hi) / 2
        result = arm(tasks, after_a, cycles, float(np.exp(log_lr)), 0.0)
    return result


def run(cycles: int, ewc_lambda: float, seed: int = 0) -> dict:
    lr = DEFAULTS.base_lora_lr
    tasks = make_tasks(seed)
    lora = base_lora.initial_base_lora(DEFAULTS.base_lora_layers, DEFAULTS.base_lora_rank, DIM)
    start = Phase(lora, EwcState.initial(ewc_config_for(lora.param_count, ewc_lambda)), [])
    after_a = train(start, (tasks.a, tasks.bad_a), cycles, lr, ewc_lambda, seed=1)
    on = arm(tasks, after_a, cycles, lr, ewc_lambda)
    off_matched = matched_off(tasks, after_a, cycles, on["learned_b"])
    off_default = arm(tasks, after_a, cycles, lr, 0.0)
    return {
        "cycles_per_task": cycles,
        "dim": DIM,
        "seed": seed,
        "boundaries_in_a": len(after_a.boundaries),
        "ewc_on": on,
        "ewc_off_matched": off_matched,
        "ewc_off_default_rate": off_default,
        "lost_a_on_over_off_matched": on["lost_a"] / off_matched["lost_a"],
    }


def figures(cycles: int, seeds: int, ewc_lambda: float = DEFAULTS.ewc_lambda) -> list:
    """The runner's figures (`python -m benchmarks`): per seed, lost A with EWC++ on
    over off at matched B, and the drifts per unit of B; their medians."""
    import statistics

    from benchmarks.report import Figure

    runs = [run(cycles, ewc_lambda, seed) for seed in range(seeds)]
    for result in runs:
        print_table(result)
    ratios = [r["lost_a_on_over_off_matched"] for r in runs]

    def median(key: str, arm_name: str) -> float:
        return float(statistics.median(r[arm_name][key] for r in runs))

    def figure(name: str, label: str, values: list[float]) -> Figure:
        return Figure(
            name=name,
            backend="numpy",
            label=label,
            unit="",
            ours=float(statistics.median(values)),
            reps=values,
            details={"runs": runs},
        )

    out = [
        figure(
            "forgetting_lost_a_on_over_off",
            f"lost A, EWC++ on / off at matched B ({cycles} cycles a task)",
            ratios,
        ).check(
            "<= 0.5",
            # Judged only where learning B really undid A without EWC++ (too few
            # cycles leave A unlearned, and B then adds to A's response).
            statistics.median(ratios) <= 0.5
            if all(r["ewc_off_matched"]["lost_a"] > 0 for r in runs)
            else None,
        ),
        figure(
            "forgetting_drift_per_b_on",
            "A lost per unit of B learned, EWC++ on",
            [r["ewc_on"]["drift_per_b"] for r in runs],
        ),
        figure(
            "forgetting_drift_per_b_off",
            "A lost per unit of B learned, EWC++ off (matched)",
            [r["ewc_off_matched"]["drift_per_b"] for r in runs],
        ),
        figure(
            "forgetting_retained_a_off_default",
            "A retained, EWC++ off at the default rate",
            [r["ewc_off_default_rate"]["retained_a"] for r in runs],
        ),
    ]
    out[0].details["median_learned_b_on"] = median("learned_b", "ewc_on")
    return out


def print_table(result: dict) -> None:
    print(
        f"{result['cycles_per_task']} cycles per task, {result['dim']} dims, "
        f"boundaries during A: {result['boundaries_in_a']}"
    )
    head = ("arm", "lambda", "lr", "learned A", "learned B", "lost A", "retained A", "drift/B")
    print("{:22} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>8}".format(*head))
    for name in ("ewc_on", "ewc_off_matched", "ewc_off_default_rate"):
        r = result[name]
        print(
            f"{name:22} {r['ewc_lambda']:7.0f} {r['lr']:9.2e} {r['learned_a']:10.5f} "
            f"{r['learned_b']:10.5f} {r['lost_a']:10.6f} {r['retained_a']:10.4f} "
            f"{r['drift_per_b']:8.3f}"
        )
    print(f"lost A, EWC++ on / off at matched B: {result['lost_a_on_over_off_matched']:.3f}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--ewc-lambda", type=float, default=DEFAULTS.ewc_lambda)
    parser.add_argument("--seeds", type=int, default=1, help="task draws 0..N-1")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    results = [run(args.cycles, args.ewc_lambda, seed) for seed in range(args.seeds)]
    for result in results:
        print_table(result)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
