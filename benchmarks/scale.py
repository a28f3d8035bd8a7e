"""Scale benchmark: vector search at 1M vectors, and the pipeline's memory and time at N and 10 x N patients.

``vectors``: SYNTHETIC 384-d embeddings by default (stated: not real ones): a Gaussian mixture of
4,096 random unit directions, each vector its cluster's direction plus isotropic noise of the same
norm (cosine to its centre about 0.7), L2-normalised, written in chunks to a memory-mapped file;
1,000 queries drawn the same way (not in the index). Clustered data is kind to an IVF index;
``--clusters N`` draws fewer (wider) clusters. ``--data FILE.npy`` uses REAL embeddings instead
(``real-vectors`` below writes them): 1,000 of its rows are held out as the queries (real, no
noise, not in the index); the index holds the other real rows as they are and, up to ``--n``, copies
of them with isotropic noise whose norm is ``--noise-nn`` (default 1.0) times that row's distance to
its nearest other real row: a copy lies about as far from its original as the original's nearest
real neighbour, so the real structure survives (a fixed ``--noise`` of norm 1.0 on unit e5 vectors,
whose pairwise cosines are 0.7-0.9, drowns it and leaves near-random points). ``--n 0``: the real
rows alone. Exact search (FAISS brute force, all vectors) gives the true top 10, and an in-memory
``IndexFlatIP`` over 200,000 of the rows, scaled linearly, is the baseline for latency; the
approximate index is medweave's own (``medweave.retrieve.vectors.VectorIndex``, IVF), built first
(so that the peak RSS printed is the build's), saved, re-opened memory-mapped and queried one query
at a time on one thread. Printed: build time split into k-means and adding, peak memory, index size,
the load average, and per ``nprobe`` recall@10 against exact search with p50/p99 latency per query.
Aim: recall@10 >= 0.95 at p50 <= 2 ms. ``--build-only`` stops after saving the index (kept, with the
data); ``--index DIR`` queries a kept one (the same ``--seed``, ``--clusters``, ``--data`` and
``--noise`` give the same queries): a run split over two sittings.

``real-vectors --out FILE.npy``: the unique real texts of the shared data (``real_texts``: sentences
of the IU X-ray and Open-i reports, PathVQA and VQA-RAD questions, eICU and MIMIC-III demo strings;
23,819 here) encoded as e5-small passages (about 20 texts a second on the 2 cores); resumes where
an interrupted run stopped.

``pipeline``: phantom cohorts of N and 10 x N patients (``medweave.demo.phantom``) through each stage
in its own process (peak RSS of that process alone): cohort build, encode, training data loading,
evaluation; printed: seconds and peak RSS per stage and size, the time ratio (10 = linear) and the
memory ratio (1 = flat). ``--image-size 64`` writes 64 px pictures and encodes them at that size
(``efficientnet-lite0-native``) instead of 128 px resized to 224; ``--text-encoder hashing``
encodes reports by feature hashing (``HashingText`` below, 384-d like e5-small) instead of e5-small,
which costs about 190 ms a report here. Both change what encoding costs, not what the pipeline
holds. ``--work DIR --stages ...`` splits a run over several sittings (each stage's result is kept
in DIR); ``--table`` prints the table of what DIR holds. Chunks (the library's defaults): cohort
build 2,000 patients, encoding and tabular features 2,048 cases, ingest commits 4,000 items or
1,024 files, prediction 512 cases a batch. ``--stages "ingest tables"`` (after ``phantom``) ingests
only the phantom's CSV tables into a store of its own: a table file is one unit, read whole.

    python benchmarks/scale.py vectors --n 1000000      # the 1M run (minutes, ~3 GB)
    python benchmarks/scale.py vectors --n 100000       # a quick run
    python benchmarks/scale.py real-vectors --out /tmp/e5-real.npy
    python benchmarks/scale.py vectors --n 1000000 --data /tmp/e5-real.npy   # real rows + copies with noise
    python benchmarks/scale.py vectors --n 0 --data /tmp/e5-real.npy         # the real rows alone
    python benchmarks/scale.py pipeline --n 300
    python benchmarks/scale.py pipeline --sizes 1000 10000 --image-size 64 --text-encoder hashing --work DIR
    python benchmarks/scale.py arrays --n 20000        # training inputs in memory vs on disk

``arrays``: SYNTHETIC case-level inputs (the phantom experiment's 1,280 + 384 + 192 float32 a case) for
N and 10 x N cases, held in memory or written once to disk (``medweave.encode.arrays``), then one
epoch of ``fit`` and one prediction pass, each run a fresh process: peak RSS, seconds, and the
validation loss and sum of logits (equal for both modes: the same model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 384
CLUSTERS = 4096
K = 10


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, seed: int, centres: np.ndarray, out: np.ndarray | None = None, chunk: int = 50_000,
              noise: float = 1.0):
    """n vectors of the mixture (see the module docstring), written into ``out`` chunk by chunk:
    a random centre plus isotropic noise of norm about ``noise`` (float32 throughout)."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    scale = np.float32(noise / np.sqrt(dim))
    out = np.empty((n, dim), dtype=np.float32) if out is None else out
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, len(centres), m)]
        x += scale * rng.standard_normal((m, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start:start + m] = x
    return out


def exact_topk(data: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000):
    """True top k by inner product (FAISS brute force, ``faiss.knn``), over the memory-mapped data in
    chunks of ``chunk`` rows (bounded memory), merged."""
    import faiss

    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(data), chunk):
        s, top = faiss.knn(queries, np.ascontiguousarray(data[start:start + chunk]), k,
                           metric=faiss.METRIC_INNER_PRODUCT)
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, axis=1), np.take_along_axis(cand_i, order, axis=1)
    return best_s, best_i


def _latencies(fn, queries: np.ndarray) -> np.ndarray:
    """ms per query, one query at a time on one thread (a second core serves a second query)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    out = np.empty(len(queries))
    for j in range(len(queries)):
        t = time.perf_counter()
        fn(queries[j:j + 1])
        out[j] = time.perf_counter() - t
    faiss.omp_set_num_threads(threads)
    return out * 1000


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def real_texts(root: Path) -> dict[str, str]:
    """Unique real texts of the shared data (``MEDWEAVE_DATA``), text -> the source it came from first:
    the sentences of IU X-ray reports (each section split at . ! ?) and of the Open-i summarisation
    findings and impressions, PathVQA and VQA-RAD questions, eICU diagnosis, treatment, admission-diagnosis and physical-exam
    strings, MIMIC-III demo prescriptions (drug, strength, route). Whitespace collapsed, texts of 3
    characters or fewer dropped."""
    import csv
    import gzip
    import re
    import tarfile
    import xml.etree.ElementTree as ET

    out: dict[str, str] = {}

    def add(source: str, text: str) -> None:
        text = " ".join(str(text).split())
        if len(text) > 3:
            out.setdefault(text, source)

    iu = root / "iu-xray-reports" / "NLMCXR_reports.tgz"
    if iu.is_file():
        with tarfile.open(iu) as tf:
            for member in tf:
                if member.name.endswith(".xml"):
                    for part in ET.parse(tf.extractfile(member)).getroot().iter("AbstractText"):
                        if part.text:
                            for sentence in re.split(r"(?<=[.!?])\s+", part.text):
                                add("iu-xray sentence", sentence)
    for name in ("train.jsonl", "validate.jsonl"):
        path = root / "openi-summ" / name
        for line in path.read_text().splitlines() if path.is_file() else []:
            row = json.loads(line)
            for sentence in re.split(r"(?<=[.!?])\s+", row["inputs"] + " " + row["target"]):
                add("openi-summ sentence", sentence)
    for ds in ("pathvqa", "vqa-rad"):
        path = root / ds / "trainset.json"
        for row in json.loads(path.read_text()) if path.is_file() else []:
            add(f"{ds} question", row["question"])
    eicu = root / "ehr-demo" / "eicu-demo"
    for name, col in (("diagnosis.csv", "diagnosisstring"), ("treatment.csv", "treatmentstring"),
                      ("admissionDx.csv", "admitdxpath"), ("physicalExam.csv", "physicalexampath")):
        if (eicu / name).is_file():
            with open(eicu / name, newline="") as fh:
                for row in csv.DictReader(fh):
                    add("eicu", (row.get(col) or "").replace("|", " / "))
    rx = root / "ehr-demo" / "mimic-iii-demo" / "PRESCRIPTIONS.csv.gz"
    if rx.is_file():
        with gzip.open(rx, "rt", newline="") as fh:
            for row in csv.DictReader(fh):
                add("mimic-iii prescription", f"{row['drug']} {row['prod_strength']} {row['route']}")
    return out


def bench_real_vectors(args) -> None:
    """Encode the shared data's real texts (``real_texts``) as e5-small passages into an .npy (rows in
    the order of a JSON list of [text, source] written beside it): the real embeddings for ``vectors
    --data``."""
    from collections import Counter

    from medweave.encode.text import E5Small
    from medweave.settings import shared_data_dir

    texts = real_texts(Path(args.root) if args.root else shared_data_dir())
    if not texts:
        raise SystemExit("no texts found: set MEDWEAVE_DATA to the shared data folder")
    items = sorted(texts.items())
    if args.limit:
        items = [items[i] for i in np.sort(np.random.default_rng(0).choice(len(items), args.limit, replace=False))]
    print(f"{len(items):,} unique texts: " + ", ".join(f"{k} {v:,}" for k, v in Counter(s for _, s in items).most_common()),
          flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part, progress = out.with_suffix(".part.npy"), out.with_suffix(".progress")
    done = int(progress.read_text()) if part.is_file() and progress.is_file() else 0  # an interrupted run resumes
    arr = np.lib.format.open_memmap(part, mode="r+" if done else "w+", dtype=np.float32, shape=(len(items), 384))
    enc, t0 = E5Small(), time.perf_counter()
    for start in range(done, len(items), args.batch):
        arr[start:start + args.batch] = enc.encode([t for t, _ in items[start:start + args.batch]])
        arr.flush()
        progress.write_text(str(min(len(items), start + args.batch)))
        if ((start - done) // args.batch) % 20 == 0:
            print(f"  {min(len(items), start + args.batch):,} / {len(items):,} in {time.perf_counter() - t0:.0f} s",
                  flush=True)
    del arr
    part.replace(out)
    progress.unlink()
    out.with_suffix(".texts.json").write_text(json.dumps(items))
    print(f"wrote {out} ({len(items):,} x 384, e5-small passages) in {time.perf_counter() - t0:.0f} s; load {_load()}")


def real_split(path: str, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The real embeddings of ``path`` (rows, L2-normalised, exact duplicate rows dropped) split into
    (rows to index, held-out query rows), and facts about them: count, mean pairwise cosine (on a
    sample) and each indexed row's distance to its nearest other indexed row (exact)."""
    import faiss

    x = np.load(path).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x[np.sort(np.unique(x, axis=0, return_index=True)[1])]
    rng = np.random.default_rng(seed)
    held = np.zeros(len(x), dtype=bool)
    held[rng.choice(len(x), size=min(n_queries, len(x) // 10), replace=False)] = True
    rows, queries = np.ascontiguousarray(x[~held]), np.ascontiguousarray(x[held])
    s, _ = faiss.knn(rows, rows, 2, metric=faiss.METRIC_INNER_PRODUCT)
    nn = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * s[:, 1])).astype(np.float32)  # unit rows: |a-b|^2 = 2 - 2 a.b
    pick = rng.choice(len(rows), size=min(2000, len(rows)), replace=False)
    c = rows[pick] @ rows[pick].T
    facts = {"rows": len(rows), "queries": len(queries), "nn": nn,
             "mean_cos": float((c.sum() - len(pick)) / (len(pick) * (len(pick) - 1)))}
    return rows, queries, facts


def real_with_noise(rows: np.ndarray, n: int, noise: np.ndarray, seed: int, out: np.ndarray,
                    chunk: int = 50_000) -> None:
    """``out[:len(rows)]`` = the real rows as they are; every row after that a real row (each used
    about equally often, in a random order) plus isotropic noise of norm about ``noise[row]``,
    L2-normalised."""
    rng = np.random.default_rng(seed)
    m0 = min(n, len(rows))
    out[:m0] = rows[:m0]
    dim = rows.shape[1]
    src = rng.permutation(n - m0) % len(rows) if n > m0 else np.empty(0, dtype=np.int64)
    for start in range(0, len(src), chunk):
        idx = src[start:start + chunk]
        x = rows[idx] + (noise[idx] / np.sqrt(dim))[:, None] * rng.standard_normal((len(idx), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[m0 + start:m0 + start + len(idx)] = x


def bench_vectors(args) -> None:
    import faiss

    from medweave.retrieve.vectors import EXACT_MAX, VectorIndex

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    real = None
    if args.data:  # real embeddings: held-out real rows as queries; the rest as they are, then copies with noise
        rows, real_queries, facts = real_split(args.data, args.queries, args.seed)
        nn = facts["nn"]
        if args.noise is not None:
            noise, how = np.full(len(rows), args.noise, dtype=np.float32), f"norm {args.noise}"
        else:
            noise, how = args.noise_nn * nn, (f"norm {args.noise_nn} x each row's own nearest-neighbour distance "
                                              f"(median {np.median(nn):.3f}, p10 {np.percentile(nn, 10):.3f}, "
                                              f"p90 {np.percentile(nn, 90):.3f})")
        n_want = len(rows) if args.n == 0 else args.n
        real = (rows, noise, real_queries)
        what = (f"REAL: {facts['rows']:,} e5 embeddings from {args.data} (mean pairwise cosine {facts['mean_cos']:.2f})"
                + (", as they are, no noise" if n_want <= len(rows) else
                   f", as they are, then repeated to {n_want:,} rows with isotropic noise of {how}")
                + f"; queries: {facts['queries']:,} real embeddings held out of the index, no noise")
    else:
        centres = rng.standard_normal((args.clusters, DIM)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        noise = 1.0 if args.noise is None else args.noise
        n_want = args.n
        what = f"SYNTHETIC: Gaussian mixture of {args.clusters} clusters, noise of norm {noise}"
    dim = DIM
    if args.index:  # query an index built and saved by an earlier run (--build-only --keep)
        work = Path(args.index)
        data = np.load(work / "vectors.npy", mmap_mode="r")
        gen_s, fresh = None, False
    else:
        work = Path(tempfile.mkdtemp(prefix="medweave-scale-", dir=args.tmp))
        t0 = time.perf_counter()
        data = np.lib.format.open_memmap(work / "vectors.npy", mode="w+", dtype=np.float32, shape=(n_want, dim))
        if real is not None:
            real_with_noise(real[0], n_want, real[1], args.seed + 1, data)
        else:
            synthetic(n_want, args.seed + 1, centres, data, noise=noise)
        data.flush()
        gen_s, fresh = time.perf_counter() - t0, True
    n = len(data)
    queries = real[2] if real is not None else synthetic(args.queries, args.seed + 2, centres, noise=noise)
    print(f"data: {n:,} x {dim} vectors ({what}), {data.nbytes / 2**30:.2f} GiB memory-mapped"
          + (f", generated in {gen_s:.1f} s" if gen_s is not None else f", from {work}")
          + f"; {len(queries)} queries; faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {_load()}", flush=True)
    if n <= EXACT_MAX:
        print(f"note: {n:,} rows <= EXACT_MAX {EXACT_MAX:,}: medweave itself searches these exactly (recall 1); "
              "the approximate index is built here only to measure it", flush=True)

    if fresh:  # built first, so that the process peak RSS printed here is the build's
        rss0 = _rss_mb()
        built = VectorIndex.build(data, kind="ivf", nlist=args.nlist, seed=args.seed)
        build_peak = _peak_mb()
        m = built.meta
        t0 = time.perf_counter()
        built.save(work / "index")
        save_s = time.perf_counter() - t0
        del built
        size_mb = (work / "index" / "index.faiss").stat().st_size / 2**20
        print(f"IVF build: {m['build_seconds']:.1f} s = k-means on {m['train_size']:,} ({m['train_seconds']:.1f} s, "
              f"10 iterations, nlist {m['nlist']}) + add {n:,} ({m['add_seconds']:.1f} s); save {save_s:.1f} s; "
              f"process peak RSS {build_peak:.0f} MB (before build {rss0:.0f} MB; the memory-mapped data counts "
              f"where paged in); index file {size_mb:.0f} MB; load average {_load()}", flush=True)
        if args.build_only:
            print(f"kept in {work}: query it with --index {work} (same --seed/--clusters/--data/--noise)")
            return

    index = VectorIndex.open(work / "index")  # memory-mapped
    nlist = index.meta["nlist"]
    t0 = time.perf_counter()
    _, truth = exact_topk(data, queries, K)
    truth_s = time.perf_counter() - t0
    print(f"exact top {K} for {len(queries)} queries (faiss.knn over chunks of 100,000 rows, "
          f"{faiss.omp_get_max_threads()} threads): {truth_s:.1f} s", flush=True)

    # the baseline: exact search, one query at a time, over an in-memory flat index of a slice scaled up
    flat_n = min(n, 200_000)
    flat = faiss.IndexFlatIP(dim)
    flat.add(np.ascontiguousarray(data[:flat_n]))
    lat_flat = _latencies(lambda q: flat.search(q, K), queries[:100]) * (n / flat_n)
    del flat
    rows = [("exact (IndexFlatIP)", "-", 1.0, np.percentile(lat_flat, 50), np.percentile(lat_flat, 99))]
    for nprobe in args.nprobe:
        lat = _latencies(lambda q: index.search(q, K, nprobe=nprobe), queries)
        _, got = index.search(queries, K, nprobe=nprobe)
        recall = np.mean([len(set(g) & set(t)) / K for g, t in zip(got, truth)])
        rows.append((f"IVF{nlist},Flat (mmap)", str(nprobe), recall, np.percentile(lat, 50), np.percentile(lat, 99)))
    # A/B: the same index with FAISS's per-search prefetch threads back on (its default; medweave's
    # open switches them off), at the default nprobe
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index.index).invlists)
    if isinstance(lists, faiss.OnDiskInvertedLists):
        lists.prefetch_nthread = 32
        lat = _latencies(lambda q: index.search(q, K), queries)
        lists.prefetch_nthread = 0
        rows.append((f"IVF{nlist},Flat (mmap), FAISS prefetch threads on (32)", str(index.nprobe), float("nan"),
                     np.percentile(lat, 50), np.percentile(lat, 99)))
    rss_q = _rss_mb()
    print()
    print(f"| index | nprobe | recall@{K} vs exact | p50 ms/query | p99 ms/query |")
    print("|---|---|---|---|---|")
    for name, nprobe, recall, p50, p99 in rows:
        print(f"| {name} | {nprobe} | {'same' if recall != recall else f'{recall:.3f}'} | {p50:.2f} | {p99:.2f} |")
    print()
    print(f"exact latency: {flat_n:,} rows measured, scaled linearly to {n:,}; "
          f"RSS after opening the index memory-mapped and querying: {rss_q:.0f} MB; process peak {_peak_mb():.0f} MB; "
          f"load average {_load()}")
    if not args.keep and not args.index:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


# --- pipeline at N and 10 x N ---------------------------------------------------------------------

STAGES = ("phantom", "ingest", "cohort", "encode", "train data", "train", "evaluate")


NATIVE_ENCODER = "efficientnet-lite0-native"  # with --image-size: pictures encoded at their own size
HASH_TEXT_ENCODER = "scale-text-hashing"  # with --text-encoder hashing: reports by feature hashing (this file's)


class HashingText:
    """A cheap stand-in for e5-small in scale runs (``--text-encoder hashing``), defined here, not in
    medweave: scikit-learn's ``HashingVectorizer`` (words and word pairs hashed into 384 signed
    buckets, L2-normalised), the same 384-d vectors as e5-small so that every array downstream has the
    same size. e5-small costs about 190 ms a report on these 2 shared cores (12 transformer layers),
    which at 30,000 patients is 80 minutes of encoding that says nothing about memory."""

    name, version, modalities, dim, batch_size = HASH_TEXT_ENCODER, "1", ("text", "qa"), 384, 256

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self._vec = HashingVectorizer(n_features=self.dim, ngram_range=(1, 2), norm="l2", alternate_sign=True)

    def encode(self, inputs) -> np.ndarray:
        return self._vec.transform([str(t) for t in inputs]).toarray().astype(np.float32)

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "dim": self.dim, "modalities": list(self.modalities)}


def _register_bench_encoders() -> None:
    from medweave.encode.base import ENCODERS, Encoder

    if HASH_TEXT_ENCODER not in ENCODERS.names():
        ENCODERS.register(HASH_TEXT_ENCODER, type("ScaleHashingText", (HashingText, Encoder), {}))


def _manifest(root: Path):
    """The phantom's manifest without its per-patient truth, which no stage uses: read whole, the truth
    of 30,000 patients cost every stage's process about 100 MB of peak (json and the truth records),
    the benchmark's, not medweave's. ``manifest-lite.json`` beside the phantom is written once
    (by ``bench_pipeline``, in its own process, before the stages)."""
    from medweave.demo import PhantomManifest

    lite = root / "manifest-lite.json"
    if not lite.exists():
        d = json.loads((root / "phantom" / "manifest.json").read_text(encoding="utf-8"))
        d.pop("patients", None)
        tmp = lite.with_suffix(".tmp")
        tmp.write_text(json.dumps(d), encoding="utf-8")
        tmp.replace(lite)
    return PhantomManifest(root=root / "phantom", patients=[], **json.loads(lite.read_text(encoding="utf-8")))


def _experiment(root: Path, text_encoder: str | None = None) -> dict:
    from medweave.demo.phantom import IMAGE_SIZE
    from medweave.demo.run import phantom_experiment

    manifest = _manifest(root)
    cfg = phantom_experiment(manifest, root / "store", "sequential")
    cfg["train"] = {"epochs": 3, "patience": 3, "seed": 0}
    if manifest.image_size != IMAGE_SIZE:  # small pictures: encoded at their own size, not resized to 224
        cfg.setdefault("encoders", {})["image"] = NATIVE_ENCODER
    if text_encoder == "hashing":
        _register_bench_encoders()
        cfg.setdefault("encoders", {})["text"] = HASH_TEXT_ENCODER
    return cfg


def run_stage(stage: str, root: Path, n: int, image_size: int | None = None, text_encoder: str | None = None) -> dict:
    """One stage in this (fresh) process; returns what it counted."""
    from medweave.config import parse_config

    if stage == "phantom":
        from medweave.demo import generate_phantom

        m = generate_phantom(root / "phantom", n_patients=n, seed=0, **({"image_size": image_size} if image_size else {}))
        return {"files": sum(1 for p in m.path("data").rglob("*") if p.is_file())}
    cfg = parse_config(_experiment(root, text_encoder), "scale")
    from medweave.store import Store
    from medweave.train import pipeline as pl

    if stage == "ingest tables":  # only the phantom's CSV tables, into a store of their own
        import shutil

        from medweave.ingest import ingest

        manifest = _manifest(root)
        shutil.rmtree(root / "store-tables", ignore_errors=True)
        with Store(root / "store-tables", write=True) as st:
            report = ingest([manifest.path("tables")], st, options={"mapping": str(manifest.mapping)}, progress=False)
        shutil.rmtree(root / "store-tables", ignore_errors=True)
        return {"items": report.n_items_added, "largest_table_rows": max(
            sum(1 for _ in open(manifest.path(t), encoding="utf-8")) - 1 for t in manifest.table_files)}
    if stage == "ingest":
        from medweave.demo.run import _demo_key

        _demo_key(root / "store", 0)
        pl.ingest_data(cfg, root / "store", progress=False)
        with Store(root / "store") as st:
            return {"items": int(st.con.execute("SELECT count(*) FROM items").fetchone()[0])}
    with Store(root / "store") as st:
        if stage == "cohort":
            cohort = pl.make_cohort(cfg, st)
            cohort.save(root / "cohort.parquet")
            return {"cases": len(cohort)}
        from medweave.cohort import Cohort
        from medweave.encode import EmbeddingCache

        cohort = Cohort.load(root / "cohort.parquet")
        if stage in ("encode", "train data"):
            # as `medweave train` builds its inputs: written once to a folder beside the store, read by rows
            cache = EmbeddingCache(root / "store-embeddings.duckdb")
            try:
                with pl.arrays_folder(root / "store") as arrays_dir:
                    ds, _, info = pl.build_dataset(cfg, cohort, st, cache, progress=False, arrays_dir=arrays_dir)
            finally:
                cache.close()
            if stage == "train data":  # one pass over the training batches, as fit takes them (shuffled)
                tr = ds.subset(np.flatnonzero(cohort.table["split"].to_numpy() == "train"))
                perm = np.random.default_rng(0).permutation(len(tr))
                for start in range(0, len(tr), cfg.train.batch_size):
                    tr.tensors(perm[start:start + cfg.train.batch_size])
            return {"cases": len(ds), "failures": len(info["failures"])}
    if stage == "train":
        pl.train_experiment(cfg, root / "model", progress=False)
        return {}
    if stage == "evaluate":
        from medweave.evaluate import evaluate_model

        res = evaluate_model(root / "model", n_boot=200, progress=False)  # its test split
        return {"cases": res["cases"], "auroc": round(res["metrics"]["disease"]["auroc"]["value"], 3)}
    raise SystemExit(f"unknown stage {stage!r}")


def _pipeline_sizes(args) -> list[int]:
    return list(args.sizes) if args.sizes else [args.n, 10 * args.n]


def bench_pipeline(args) -> None:
    """Run the stages (each a fresh process) at each size; each result is kept as
    ``WORK/nN/STAGE.json``, so a run can be split over several sittings (``--work DIR --stages ...``)
    and ``--table`` prints the table from what the folder holds."""
    sizes = _pipeline_sizes(args)
    stages = list(args.stages or STAGES)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="medweave-scale-pipe-", dir=args.tmp))
    work.mkdir(parents=True, exist_ok=True)
    if not args.table:
        what = (f"{args.image_size} px pictures encoded at that size ({NATIVE_ENCODER})" if args.image_size
                else "128 px pictures resized to 224 (efficientnet-lite0)")
        what += f", reports by {'e5-small' if args.text_encoder == 'e5' else HASH_TEXT_ENCODER}"
        print(f"phantom cohorts of {', '.join(f'{n:,}' for n in sizes)} patients, {what}; stages {', '.join(stages)}; "
              f"each stage a fresh process (peak RSS its own); {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}; work in {work}", flush=True)
        for n in sizes:
            root = work / f"n{n}"
            root.mkdir(exist_ok=True)
            for stage in stages:
                if stage == "phantom":
                    (root / "manifest-lite.json").unlink(missing_ok=True)
                elif (root / "phantom" / "manifest.json").exists():
                    _manifest(root)  # written here, not in the measured process
                load0 = os.getloadavg()[0]
                t0 = time.perf_counter()
                cmd = [sys.executable, __file__, "stage", stage, "--root", str(root), "--n", str(n)]
                if args.image_size:
                    cmd += ["--image-size", str(args.image_size)]
                cmd += ["--text-encoder", args.text_encoder]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"stage {stage} at {n} failed:\n{proc.stderr[-3000:]}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res.update(wall=time.perf_counter() - t0, load_before=load0, load_after=os.getloadavg()[0],
                           image_size=args.image_size, text_encoder=args.text_encoder, finished=time.strftime("%H:%M:%S", time.gmtime()))
                (root / f"{stage.replace(' ', '_')}.json").write_text(json.dumps(res))
                print(f"  {n:>6} {stage:<11} {res['seconds']:8.1f} s {res['peak_mb']:7.0f} MB  load "
                      f"{load0:.1f}->{res['load_after']:.1f}  {res['counts']}", flush=True)
    _pipeline_table(work, sizes)
    if not (args.keep or args.work):
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _pipeline_table(work: Path, sizes: list[int]) -> None:
    results = {n: {st: json.loads(f.read_text()) for st in STAGES + ("ingest tables",)
                   if (f := work / f"n{n}" / f"{st.replace(' ', '_')}.json").exists()} for n in sizes}
    a, b = sizes[0], sizes[-1]
    done = [st for st in STAGES + ("ingest tables",) if st in results[a] and st in results[b]]
    if a == b:  # one size: no ratios
        for st in done:
            print(f"  {a:,} {st}: {results[a][st]['seconds']:.1f} s, peak {results[a][st]['peak_mb']:.0f} MB")
        return
    if not done:
        print(f"(no stage has results at both {a:,} and {b:,} patients in {work} yet)")
        return
    k = b / a
    print()
    print(f"| stage | s at {a:,} | s at {b:,} | time ratio ({k:g} = linear) | peak MB at {a:,} | peak MB at {b:,} | "
          f"memory ratio (1 = flat) | load at {a:,} | load at {b:,} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for stage in done:
        x, y = results[a][stage], results[b][stage]
        load = lambda r: f"{r['load_before']:.1f}-{r['load_after']:.1f}" if "load_before" in r else "-"  # noqa: E731
        print(f"| {stage} | {x['seconds']:.1f} | {y['seconds']:.1f} | {y['seconds'] / max(x['seconds'], 1e-9):.1f} | "
              f"{x['peak_mb']:.0f} | {y['peak_mb']:.0f} | {y['peak_mb'] / x['peak_mb']:.2f} | {load(x)} | {load(y)} |")
    print()
    print("(seconds: the stage's own work, after importing medweave and torch; peak MB: ru_maxrss of the stage's "
          "process, imports included; load: the 1-minute load average before and after the stage; phantom = "
          "writing the synthetic files, not a medweave stage; train = the "
          "whole `medweave train`: ingest check, cohort, cached encode, 3 epochs, checkpoint; evaluate = "
          "`medweave evaluate` on the test split, 200 bootstrap resamples)")
    for stage in done:
        x, y = results[a][stage], results[b][stage]
        slope = (y["peak_mb"] - x["peak_mb"]) / ((b - a) / 1000)
        print(f"  {stage}: {slope:+.1f} MB of peak per 1,000 more patients")


ARRAY_DIMS = {"image": 1280, "text": 384, "table": 192}  # the phantom experiment's inputs


def arrays_main(args) -> None:
    """One epoch of ``fit`` plus prediction over SYNTHETIC case-level inputs of ``--n`` cases, held in
    memory or written once to disk (``DiskArray``), in this (fresh) process; prints JSON."""
    import torch

    from medweave.encode.arrays import DiskArrayWriter
    from medweave.fuse import HeadSpec
    from medweave.train import Dataset, TrainConfig, build_model, fit, predict_logits

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n, chunk = args.n, 4096
    y = (rng.random(n) < 0.4).astype(np.float32)
    inputs = {}
    t0 = time.perf_counter()
    for m, dim in ARRAY_DIMS.items():  # written chunk by chunk: the data never is in memory whole on disk
        w = DiskArrayWriter(Path(args.root) / f"{m}.npy", n, dim) if args.mode == "disk" else None
        full = None if w else np.empty((n, dim), np.float32)
        for s0 in range(0, n, chunk):
            block = rng.standard_normal((min(chunk, n - s0), dim), dtype=np.float32)
            block[:, 0] += y[s0:s0 + len(block)]
            if w:
                w.append(block)
            else:
                full[s0:s0 + len(block)] = block
        inputs[m] = w.close() if w else full
    write_s = time.perf_counter() - t0
    mods = list(ARRAY_DIMS)
    ds = Dataset([str(i) for i in range(n)], mods, inputs, np.ones((n, len(mods)), bool), {"y": y})
    cut = int(0.9 * n)
    train, valid = ds.subset(np.arange(cut)), ds.subset(np.arange(cut, n))
    model = build_model("sequential", ARRAY_DIMS, [HeadSpec("y")], hidden=32, seed=0)
    t0 = time.perf_counter()
    res = fit(model, train, valid, TrainConfig(epochs=1, batch_size=256, seed=0), progress=False)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = predict_logits(model, ds, batch_size=512)["y"]
    pred_s = time.perf_counter() - t0
    print(json.dumps({"mode": args.mode, "n": n, "write_s": write_s, "fit_s": fit_s, "predict_s": pred_s,
                      "peak_mb": _peak_mb(), "arrays_mb": sum(n * d * 4 for d in ARRAY_DIMS.values()) / 2**20,
                      "valid_loss": res["best_valid_loss"], "logit_sum": float(np.sum(logits))}))


def bench_arrays(args) -> None:
    """Peak RSS of training and prediction with the inputs in memory and on disk at N and 10 x N cases."""
    work = Path(tempfile.mkdtemp(prefix="medweave-scale-arrays-", dir=args.tmp))
    print(f"synthetic case-level inputs ({' + '.join(map(str, ARRAY_DIMS.values()))} float32 a case), one epoch "
          f"of fit (sequential, batch 256) and a prediction pass, each run a fresh process; {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.1f}; work in {work}", flush=True)
    rows = []
    for n in (args.n, 10 * args.n):
        for mode in ("memory", "disk"):
            root = work / f"{mode}-{n}"
            root.mkdir()
            proc = subprocess.run([sys.executable, __file__, "arrays-run", "--mode", mode, "--n", str(n),
                                   "--root", str(root)], capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"arrays {mode} {n} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {mode:<6} {n:>8,} cases: arrays {r['arrays_mb']:7.0f} MB, peak RSS {r['peak_mb']:6.0f} MB, "
                  f"fit {r['fit_s']:.1f} s, predict {r['predict_s']:.1f} s", flush=True)
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    print()
    print("| inputs | cases | arrays MB | peak RSS MB | fit s (1 epoch) | predict s | valid loss | sum of logits |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['n']:,} | {r['arrays_mb']:.0f} | {r['peak_mb']:.0f} | {r['fit_s']:.1f} | "
              f"{r['predict_s']:.1f} | {r['valid_loss']:.6f} | {r['logit_sum']:.4f} |")
    print(f"load after: {os.getloadavg()[0]:.1f}")


def stage_main(args) -> None:
    import medweave.evaluate  # noqa: F401  imports are not the stage's work
    import medweave.train.pipeline  # noqa: F401

    t0 = time.perf_counter()
    counts = run_stage(args.stage, Path(args.root), args.n, args.image_size, args.text_encoder)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb(), "counts": counts}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    v = sub.add_parser("vectors", help="recall@10 and latency of the IVF index against exact search")
    v.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1,000,000); with --data, 0: the real "
                   "rows alone, no noise")
    v.add_argument("--queries", type=int, default=1000)
    v.add_argument("--nlist", type=int, default=None, help="IVF cells (default: about 4 sqrt(n))")
    v.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 48, 64])
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--data", default=None, help="an .npy of real embeddings (rows) to repeat with noise instead of "
                   "the synthetic mixture")
    v.add_argument("--noise", type=float, default=None, help="norm of the noise added to each centre / real row "
                   "(synthetic: default 1.0; with --data the default is --noise-nn)")
    v.add_argument("--noise-nn", type=float, default=1.0, help="with --data: the noise added to a real row has "
                   "this many times the norm of that row's distance to its nearest other real row (default 1.0)")
    v.add_argument("--clusters", type=int, default=CLUSTERS, help=f"synthetic mixture: clusters (default {CLUSTERS}; "
                   "fewer clusters with the same noise is a harder case for IVF)")
    v.add_argument("--threads", type=int, default=None, help="FAISS threads for building and exact search "
                   "(default: FAISS's own, the cores; queries are timed on one thread)")
    v.add_argument("--build-only", action="store_true", help="generate, build and save, then stop (implies --keep): "
                   "a 1M run split over two sittings")
    v.add_argument("--index", default=None, help="a folder kept by --build-only: query its index and data")
    v.add_argument("--tmp", default=None, help="folder for the data and index files (default: system temp)")
    v.add_argument("--keep", action="store_true", help="keep the data and index files")
    r = sub.add_parser("real-vectors", help="encode the shared data's real texts with e5-small into an .npy for "
                       "vectors --data")
    r.add_argument("--out", required=True, help="the .npy to write (a .texts.json beside it lists the texts)")
    r.add_argument("--root", default=None, help="the shared data folder (default: MEDWEAVE_DATA)")
    r.add_argument("--limit", type=int, default=None, help="encode a random sample of this many texts")
    r.add_argument("--batch", type=int, default=64)
    p = sub.add_parser("pipeline", help="peak RSS and time per stage at N and 10 x N phantom patients")
    p.add_argument("--n", type=int, default=300, help="patients in the small cohort (the large one has 10x)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="the cohort sizes instead of N and 10 x N "
                   "(the table compares the first and the last)")
    p.add_argument("--image-size", type=int, default=None, help="phantom pictures of this side in pixels, "
                   f"encoded at that size ({NATIVE_ENCODER}) instead of 128 px resized to 224: encoding costs "
                   "about (size / 224)^2 of the work")
    p.add_argument("--text-encoder", choices=("e5", "hashing"), default="e5", help="reports encoded by e5-small "
                   f"(default) or by feature hashing ({HASH_TEXT_ENCODER}, this file's stand-in: the same 384-d, "
                   "about 1,000x cheaper)")
    p.add_argument("--stages", nargs="+", choices=STAGES + ("ingest tables",), default=None, help="run only these stages (in order; "
                   "later stages need the earlier ones' outputs in --work)")
    p.add_argument("--work", default=None, help="a folder to keep the cohorts and each stage's result in (and to "
                   "continue in): a run split over several sittings")
    p.add_argument("--table", action="store_true", help="run nothing: print the table of what --work holds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None)
    p.add_argument("--keep", action="store_true", help="keep the cohorts, stores and models")
    a = sub.add_parser("arrays", help="peak RSS of training on in-memory vs on-disk inputs at N and 10 x N cases")
    a.add_argument("--n", type=int, default=20_000, help="cases in the small run (the large one has 10x)")
    a.add_argument("--tmp", default=None, help="folder for the on-disk arrays (not a RAM-backed /tmp)")
    ar = sub.add_parser("arrays-run", help=argparse.SUPPRESS)
    ar.add_argument("--mode", choices=("memory", "disk"), required=True)
    ar.add_argument("--n", type=int, required=True)
    ar.add_argument("--root", required=True)
    st = sub.add_parser("stage", help=argparse.SUPPRESS)
    st.add_argument("stage", choices=STAGES + ("ingest tables",))
    st.add_argument("--root", required=True)
    st.add_argument("--n", type=int, required=True)
    st.add_argument("--image-size", type=int, default=None)
    st.add_argument("--text-encoder", choices=("e5", "hashing"), default="e5")
    args = parser.parse_args()
    {"vectors": bench_vectors, "real-vectors": bench_real_vectors, "pipeline": bench_pipeline, "stage": stage_main, "arrays": bench_arrays,
     "arrays-run": arrays_main}[args.part](args)


if __name__ == "__main__":
    main()
