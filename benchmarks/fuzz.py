"""Coverage-guided fuzzing (atheris, libFuzzer) of every parse path: adapters, loaders, API bodies.

    python benchmarks/fuzz.py --seconds 60                 # every target, 60 s each, one subprocess each
    python benchmarks/fuzz.py --seconds 30 --targets dicom,nifti
    python benchmarks/fuzz.py --seconds 300 --jobs 2       # two targets at a time (one per core)
    python benchmarks/fuzz.py --replay TARGET FILE...      # run inputs through a target (no atheris)
    python benchmarks/fuzz.py --minimize TARGET CRASHFILE  # libFuzzer's crash minimisation

Each target (``medweave.fuzz.TARGETS``) starts from its seeds (the real files the tests use) and runs in
its own process under libFuzzer with ``-timeout=10`` (an input that takes over 10 s is a hang),
``-rss_limit_mb`` (a memory blow-up) and ``-max_len``; medweave's code is instrumented, so
``cov``/``ft`` are libFuzzer's coverage and feature counters over medweave (``MEDWEAVE_FUZZ_LIBS=1``
also instruments the target's parser library, pydicom, nibabel or wfdb: deeper guidance, minutes of
start-up on a loaded machine). A crash
(any exception but the tool's own refusal, see ``medweave.fuzz.targets``), hang or out-of-memory is a
finding: its input is kept under ``--out``/TARGET/artifacts and the target restarts for the time
left. Prints one row per target and the totals; exits 1 when anything was found.
CPU heavy: run it under ``nice -n 15`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

RSS_LIMIT_MB = 3072
SETUP_ALLOWANCE_S = 600  # imports and instrumentation before libFuzzer's clock starts (slow on a loaded machine)


def _child(name: str, seconds: int, corpus: Path, artifacts: Path, work: Path) -> None:
    """Inside the subprocess: instrument, set the target up, hand it to libFuzzer."""
    import atheris

    # only the modules imported inside this block are instrumented: the target's whole parse path
    from medweave.fuzz.targets import get_target

    target = get_target(name)
    include = list(target.instrument) if os.environ.get("MEDWEAVE_FUZZ_LIBS") == "1" else ["medweave"]
    with atheris.instrument_imports(include=include):
        one_input = target.setup(work)
        for _, data in target.seeds():  # warm up: lazy imports (torch, ...) happen here, not in a timed input
            try:
                one_input(data[: target.max_len])
            except Exception:  # noqa: BLE001  libFuzzer runs the seeds again and reports what they do
                pass
    args = [sys.argv[0], str(corpus), f"-max_total_time={seconds}", "-timeout=10", f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-max_len={target.max_len}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
            "-print_pcs=0", "-reload=0"]
    import hashlib

    def guarded(data: bytes) -> None:
        try:
            one_input(data)
        except BaseException:  # keep the input whatever libFuzzer manages to write, then let it crash
            (artifacts / f"crash-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
            raise

    atheris.Setup(args, guarded)
    atheris.Fuzz()


_STAT_RE = re.compile(r"^#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+)(?: corp: (\d+))?", re.M)
_DONE_RE = re.compile(r"^Done (\d+) runs in (\d+) second", re.M)
_FINAL_RE = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)


def _parse(log: str) -> dict:
    out = {"execs": 0, "cov": 0, "ft": 0, "corpus": 0, "peak_rss_mb": 0}
    stats = _STAT_RE.findall(log)
    if stats:
        last = stats[-1]
        out.update(execs=int(last[0]), cov=int(last[1]), ft=int(last[2]), corpus=int(last[3] or 0))
    done = _DONE_RE.findall(log)
    if done:
        out["execs"] = max(out["execs"], int(done[-1][0]))
    final = dict(_FINAL_RE.findall(log))
    if "number_of_executed_units" in final:
        out["execs"] = max(out["execs"], int(final["number_of_executed_units"]))
    if "peak_rss_mb" in final:
        out["peak_rss_mb"] = int(final["peak_rss_mb"])
    return out


def _finding(log: str, artifacts: Path, before: set[str]) -> dict:
    new = sorted(set(os.listdir(artifacts)) - before)
    kind = "crash"
    if "ERROR: libFuzzer: timeout" in log:
        kind = "hang"
    elif "out-of-memory" in log:
        kind = "oom"
    reason = ""
    m = re.search(r"=== Uncaught Python exception: ===\n(.+)", log)
    if m:
        reason = m.group(1).strip()
    where = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', log)
    return {"kind": kind, "reason": reason[:300], "at": [f"{Path(f).name}:{n} {fn}" for f, n, fn in where[-3:]],
            "artifacts": [str(artifacts / a) for a in new]}


def run_target(name: str, seconds: int, out: Path) -> dict:
    """Fuzz one target for ``seconds`` in subprocesses (restarted after a finding); its row."""
    from medweave.fuzz.targets import get_target

    target = get_target(name)
    base = out / name
    corpus, artifacts = base / "corpus", base / "artifacts"
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    for i, (_, data) in enumerate(target.seeds()):
        (corpus / f"seed-{i:03d}").write_bytes(data[: target.max_len])
    row = {"target": name, "seeds": len(list(corpus.glob("seed-*"))), "execs": 0, "cov": 0, "ft": 0, "corpus": 0,
           "peak_rss_mb": 0, "findings": [], "seconds": 0.0}
    end = time.monotonic() + seconds
    restarts = 0
    while (left := int(end - time.monotonic())) >= 3 and restarts <= 20:
        before = set(os.listdir(artifacts))
        work = Path(tempfile.mkdtemp(prefix=f"mwfuzz-{name}-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        t0 = time.monotonic()
        logfile = base / f"log-{restarts}.txt"
        with open(logfile, "w") as fh:
            proc = subprocess.Popen([sys.executable, __file__, "--child", name, "--seconds", str(left), "--corpus",
                                     str(corpus), "--artifacts", str(artifacts), "--work", str(work)],
                                    stdout=fh, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=left + SETUP_ALLOWANCE_S)
            except subprocess.TimeoutExpired:  # libFuzzer's own -timeout did not end it: a hang outside it
                proc.kill()
                proc.wait()
                fh.write(f"\nERROR: libFuzzer: timeout (killed by benchmarks/fuzz.py after {left + SETUP_ALLOWANCE_S} s)\n")
        row["seconds"] += time.monotonic() - t0
        subprocess.run(["rm", "-rf", str(work)])
        log = logfile.read_text(errors="replace")
        stats = _parse(log)
        row["execs"] += stats["execs"]
        for k in ("cov", "ft", "corpus", "peak_rss_mb"):
            row[k] = max(row[k], stats[k])
        if proc.returncode != 0:
            found = _finding(log, artifacts, before)
            if not found["artifacts"] and not found["reason"]:
                found["reason"] = f"exit {proc.returncode}: " + log.strip().splitlines()[-1][:200] if log.strip() else ""
            row["findings"].append(found)
            restarts += 1
            continue
        break
    return row


def print_table(rows: list[dict], seconds: int) -> None:
    print(f"\n| target | seconds | executions | exec/s | cov | ft | corpus | peak RSS MB | findings |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kinds = {}
        for f in r["findings"]:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        found = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "0"
        rate = r["execs"] / r["seconds"] if r["seconds"] else 0
        print(f"| {r['target']} | {r['seconds']:.0f} | {r['execs']:,} | {rate:,.0f} | {r['cov']:,} | {r['ft']:,} | "
              f"{r['corpus']:,} | {r['peak_rss_mb']:,} | {found} |")
    total = sum(r["execs"] for r in rows)
    n_found = sum(len(r["findings"]) for r in rows)
    print(f"| **total** | {sum(r['seconds'] for r in rows):.0f} | **{total:,}** | | | | | | **{n_found}** |")
    for r in rows:
        for f in r["findings"]:
            print(f"  {r['target']}: {f['kind']}: {f['reason']} at {' < '.join(reversed(f['at']))} "
                  f"-> {', '.join(f['artifacts']) or '(no artifact)'}")


def replay(name: str, files: list[str]) -> int:
    """Run inputs through a target without atheris; print what each does."""
    from medweave.fuzz.targets import get_target

    fn = get_target(name).setup(Path(tempfile.mkdtemp(prefix=f"mwfuzz-{name}-")))
    bad = 0
    for f in files:
        t0 = time.monotonic()
        try:
            fn(Path(f).read_bytes())
            print(f"{f}: ok ({time.monotonic() - t0:.2f} s)")
        except Exception as exc:  # a finding: show it whole
            import traceback

            bad += 1
            print(f"{f}: FINDING after {time.monotonic() - t0:.2f} s")
            traceback.print_exception(exc)
    return 1 if bad else 0


def _libfuzzer_child(name: str, argv: list[str]) -> int:
    """libFuzzer run with the arguments it gave its own re-execution (``minimize``'s steps)."""
    import atheris

    from medweave.fuzz.targets import get_target

    target = get_target(name)
    with atheris.instrument_imports(include=list(target.instrument)):
        fn = target.setup(Path(tempfile.mkdtemp(prefix=f"mwfuzz-{name}-")))
    atheris.Setup(argv, fn)
    atheris.Fuzz()
    return 0


def minimize(name: str, crash: str) -> int:
    """libFuzzer's crash minimisation; writes ``CRASH.min``. libFuzzer runs each step as a new process
    started from its own argv[0], so that is a small script calling this file with this Python."""
    import shlex

    from medweave.fuzz.targets import get_target

    get_target(name)
    folder = Path(tempfile.mkdtemp(prefix="mwfuzz-min-"))
    exe = folder / f"fuzz-{name}"
    exe.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve()))} "
                   f"--libfuzzer {shlex.quote(name)} \"$0\" \"$@\"\n")
    exe.chmod(0o755)
    return subprocess.call([str(exe), "-minimize_crash=1", "-max_total_time=60", "-timeout=10",
                            f"-exact_artifact_path={crash}.min", crash])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="per target")
    ap.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once (one process each)")
    ap.add_argument("--targets", default="", help="comma-separated (default: all)")
    ap.add_argument("--out", default="", help="corpora, artifacts and logs (default: a temporary folder)")
    ap.add_argument("--json", default="", help="also write the rows to this file")
    ap.add_argument("--replay", nargs="+", metavar=("TARGET", "FILE"))
    ap.add_argument("--minimize", nargs=2, metavar=("TARGET", "FILE"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--libfuzzer", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    ap.add_argument("--artifacts", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.libfuzzer:
        return _libfuzzer_child(args.libfuzzer[0], args.libfuzzer[1:])
    if args.child:
        _child(args.child, args.seconds, Path(args.corpus), Path(args.artifacts), Path(args.work))
        return 0
    if args.replay:
        return replay(args.replay[0], args.replay[1:])
    from medweave.fuzz.targets import TARGETS

    if args.minimize:
        return minimize(*args.minimize)
    names = [n for n in args.targets.split(",") if n] or list(TARGETS)
    for n in names:
        if n not in TARGETS:
            ap.error(f"unknown target {n!r}; targets: {', '.join(TARGETS)}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mwfuzz-"))
    t0 = time.time()
    from concurrent.futures import ThreadPoolExecutor

    def one(n: str) -> dict:
        r = run_target(n, args.seconds, out)
        print(f"{n}: {r['execs']:,} executions in {r['seconds']:.0f} s, cov {r['cov']}, {len(r['findings'])} findings",
              flush=True)
        return r

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each target is its own subprocess
        rows = list(pool.map(one, names))
    print(f"\n{len(names)} targets, {args.seconds} s each, {args.jobs} at a time, {time.time() - t0:.0f} s in all; "
          f"load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; corpora, artifacts and logs in {out}")
    print_table(rows, args.seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 1 if any(r["findings"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
