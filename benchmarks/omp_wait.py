"""How torch's OpenMP threads wait, on a quiet machine and on one another process keeps busy.

    python benchmarks/omp_wait.py [--threads 2] [--out FILE]

PyTorch's CPU wheels use GNU OpenMP, whose threads spin (busy-wait) for a while at every
barrier before sleeping. On a machine with as many cores as threads and nothing else running,
that saves a wake-up per operator. When another process wants the same cores (a training run
beside `medscope serve`, two runs of a CV grid, the test suite beside a job), one thread of
each parallel region is descheduled while its partner spins away its time slice, and every
operator waits a scheduler tick.

For each wait policy, in fresh processes (libgomp reads its environment once, when torch is
imported), it measures resnet18 batch-1 inference latency at 224 px (p50 of 30 forwards,
fp32, channels_last) and training images/s at 112 px, batch 64 (fp32, channels_last, AdamW,
``--steps`` timed steps): first on the quiet machine (median of ``--rounds`` rounds, the
policies interleaved), then while a second process with the same policy trains resnet18 on
the same cores (its images/s over the same minutes is reported as well):

- default: neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT set (libgomp spins 300,000 rounds);
- spin-10k: GOMP_SPINCOUNT=10000, what `medscope` sets when the user has set neither;
- passive: OMP_WAIT_POLICY=PASSIVE (threads sleep at once).

Run it on an otherwise quiet machine: the 'quiet' columns assume nothing else runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from machine import RESULT_PREFIX, Report, child_result, describe_machine, positive_int  # noqa: E402

POLICIES = {
    "default": {},
    "spin-10k": {"GOMP_SPINCOUNT": "10000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}

CHILD = r"""
import json, sys, time, torch, timm
import os
task, threads, steps, stop_file, prefix = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                          sys.argv[4], sys.argv[5])
torch.manual_seed(0)
torch.set_num_threads(threads)
cl = torch.channels_last
if task == "infer":
    model = timm.create_model("resnet18", num_classes=5).eval().to(memory_format=cl)
    x = torch.randn(1, 3, 224, 224).to(memory_format=cl)
    times = []
    with torch.inference_mode():
        for i in range(33):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    times = sorted(times[3:])
    print(prefix + json.dumps({"p50_ms": 1e3 * times[len(times) // 2]}), flush=True)
else:
    model = timm.create_model("resnet18", num_classes=5).to(memory_format=cl)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(64, 3, 112, 112).to(memory_format=cl)
    y = torch.randint(0, 5, (64,))
    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    step(); step()
    # task "train": `steps` timed steps; task "load": steps until the stop file appears
    done, start = 0, time.perf_counter()
    while (done < steps) if task == "train" else not os.path.exists(stop_file):
        step()
        done += 1
    rate = 64 * done / (time.perf_counter() - start)
    print(prefix + json.dumps({"img_s": rate}), flush=True)
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count() or 2,
                    help="torch threads of each process (default: all cores)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--rounds", type=positive_int, default=3, help="interleaved quiet rounds")
    ap.add_argument("--steps", type=positive_int, default=20,
                    help="timed training steps per figure")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    report = Report(args.out)
    report("# omp_wait: GNU OpenMP wait policy, quiet machine vs a second busy process")
    report(describe_machine())
    report(f"torch threads per process: {args.threads}")
    policies = args.policies.split(",")
    quiet = {name: {"infer": [], "train": []} for name in policies}
    for r in range(args.rounds):  # interleaved, so drift of the machine hits every policy alike
        for name in policies:
            env = policy_env(name)
            quiet[name]["infer"].append(child(env, "infer", args.threads, args.steps)["p50_ms"])
            quiet[name]["train"].append(child(env, "train", args.threads, args.steps)["img_s"])
            report(f"round {r + 1}, {name}: quiet {quiet[name]['infer'][-1]:.1f} ms, "
                   f"{quiet[name]['train'][-1]:.1f} img/s")
    rows = [{"policy": name, "quiet_infer": statistics.median(quiet[name]["infer"]),
             "quiet_train": statistics.median(quiet[name]["train"]),
             "quiet_train_range": (min(quiet[name]["train"]), max(quiet[name]["train"])),
             **loaded(name, args.threads, args.steps, report)} for name in policies]
    report()
    report("| policy | quiet: infer p50 ms | quiet: train img/s (range) | loaded: infer p50 ms | "
           "loaded: train img/s | the other process meanwhile, img/s |")
    report("|---|---|---|---|---|---|")
    for r in rows:
        low, high = r["quiet_train_range"]
        report(f"| {r['policy']} | {r['quiet_infer']:.1f} | {r['quiet_train']:.1f} "
               f"({low:.1f}-{high:.1f}) | "
               f"{r['loaded_infer']:.1f} | {r['loaded_train']:.1f} | {r['load_rate']:.1f} |")
    report(f"quiet: median of {args.rounds} interleaved rounds; loaded: while a second process "
           "with the same policy trains resnet18 on the same cores; a fair share of the training "
           "figure is half the quiet one")
    report.save()


def policy_env(policy: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    return {**env, **POLICIES[policy]}


def loaded(policy: str, threads: int, steps: int, report: Report) -> dict:
    """Inference p50 and training img/s while a second process of the same policy trains."""
    env = policy_env(policy)
    with tempfile.TemporaryDirectory() as tmp:
        stop = Path(tmp) / "stop"
        load = subprocess.Popen([sys.executable, "-c", CHILD, "load", str(threads), "0",
                                 str(stop), RESULT_PREFIX],
                                env=env, stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(8)  # the load process imports torch and warms up
            row = {"loaded_infer": child(env, "infer", threads, steps)["p50_ms"],
                   "loaded_train": child(env, "train", threads, steps)["img_s"]}
        finally:
            stop.touch()
            out, _ = load.communicate(timeout=600)
    row["load_rate"] = required_result(out, "load")["img_s"]
    report(f"{policy}: loaded {row['loaded_infer']:.1f} ms, {row['loaded_train']:.1f} img/s "
           f"(the other process {row['load_rate']:.1f} img/s)")
    return row


def child(env: dict, task: str, threads: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, task, str(threads), str(steps), "-",
                          RESULT_PREFIX],
                         env=env, capture_output=True, text=True, check=True).stdout
    return required_result(out, task)


def required_result(stdout: str, task: str) -> dict:
    """The child's figures, or one line saying which child printed none."""
    result = child_result(stdout)
    if result is None:
        raise SystemExit(f"omp_wait: the {task} child printed no result line")
    return result


if __name__ == "__main__":
    main()
