"""Runs reference cases through moe-run and compares each with its golden.

  run_cases.py --moe-run PATH --work DIR [--cases a,b] [--opt-levels 0,1]
               [--wrap 'TOOL ARGS'] -- MOE_RUN_FLAGS...

For every case of scripts/moe_reference.py (or those given) and every opt
level: generate the case, run moe-run on it with the flags after `--`, and
compare within the model contract's tolerances. Prints `<case> O<level>:
PASS` or the comparison's report and exits 1 if any case failed.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
REFERENCE = os.path.join(ROOT, "scripts", "moe_reference.py")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--moe-run", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--cases", default="")
    parser.add_argument("--opt-levels", default="0,1")
    parser.add_argument("--wrap", default="", help="command to run moe-run under")
    parser.add_argument("flags", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    flags = [f for f in args.flags if f != "--"]
    cases = args.cases.split(",") if args.cases else subprocess.run(
        [sys.executable, REFERENCE, "gen", "--list"], check=True,
        capture_output=True, text=True).stdout.split()
    failed = 0
    for case in cases:
        out = os.path.join(args.work, case)
        subprocess.run([sys.executable, REFERENCE, "gen", "--case", case, "--out", out],
                       check=True, capture_output=True)
        # bf16 models get the contract's bf16 tolerances (the GPU's tensor
        # cores take bf16 activations).
        with open(os.path.join(out, "config.json")) as f:
            bf16 = json.load(f).get("torch_dtype") == "bfloat16"
        for level in args.opt_levels.split(","):
            actual = os.path.join(out, f"actual-O{level}.safetensors")
            run = shlex.split(args.wrap) + [
                args.moe_run, os.path.join(out, "config.json"), f"--opt-level={level}",
                "--weights", os.path.join(out, "weights.safetensors"),
                "--inputs", os.path.join(out, "inputs.safetensors"),
                "--outputs", actual] + flags
            ran = subprocess.run(run, capture_output=True, text=True)
            if ran.returncode != 0:
                print(f"{case} O{level}: moe-run failed ({ran.returncode}):\n"
                      f"{ran.stdout}{ran.stderr}")
                failed += 1
                continue
            cmp = subprocess.run([sys.executable, REFERENCE, "compare", "--golden",
                                  os.path.join(out, "golden.safetensors"), "--actual",
                                  actual] + (["--bf16"] if bf16 else []),
                                 capture_output=True, text=True)
            verdict = cmp.stdout.strip().splitlines()[-1] if cmp.stdout.strip() else ""
            if cmp.returncode == 0 and verdict == "PASS":
                print(f"{case} O{level}: PASS")
            else:
                print(f"{case} O{level}: FAIL\n{cmp.stdout}{cmp.stderr}")
                failed += 1
    print(f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
