#!/usr/bin/env python3
"""imgproc against Sharp, side by side, in one run.

    python3 bench/compare.py [--rounds 5] [--passes 2] [--copies 3]

1. builds the corpus of real photographs (scripts/build-corpus.sh; cached);
2. installs Sharp from npm into bench/.work/sharp (once);
3. builds imgproc-local and imgproc-bench in release mode;
4. runs, round after round, Sharp (concurrency 1) and imgproc with 1 thread,
   both pinned to one CPU (taskset), imgproc with 2 threads, all on the same
   in-memory inputs, and the whole service (`imgproc-local serve` on the
   embedded store, fetching the corpus --copies times from a loopback
   server, with 1 and 2 compression threads,
   timed from sending the upload to receiving its webhook call), rotating
   their order every round so that machine noise hits all of them alike;
   each run is its own process (its peak RSS is its own) and reports its
   fastest of --passes passes; the table shows medians over rounds, and
   each speed ratio is the median of that ratio taken within each round;
5. measures DSSIM of both contenders' outputs against the sources and
   checks that every output decodes with libjpeg-turbo (djpeg);
6. prints the table for the targets and writes bench/results.json and
   bench/engine-figures.json (the inputs of scripts/cost_model.py).
Standard library only.
"""

import argparse
import http.server
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
SHARP_VERSION = "0.35.5"
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".gif"}


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def build(skip):
    if not skip:
        log("cargo build --release -p imgproc-local -p imgproc-bench")
        run(["cargo", "build", "--release", "--locked", "-q", "-p", "imgproc-local", "-p", "imgproc-bench"], cwd=ROOT)
    rel = target_dir() / "release"
    return rel / "imgproc-local", rel / "imgproc-bench"


def corpus(path):
    if not (path.is_dir() and any(p.suffix in IMAGE_EXT for p in path.iterdir())):
        log("building the corpus")
        run([str(ROOT / "scripts" / "build-corpus.sh"), str(path)])
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXT)


def sharp_dir():
    d = WORK / "sharp"
    if not (d / "node_modules" / "sharp" / "package.json").exists():
        log(f"npm install sharp@{SHARP_VERSION} into {d}")
        d.mkdir(parents=True, exist_ok=True)
        (d / "package.json").write_text('{"private": true}\n')
        run(["npm", "install", "--silent", "--no-audit", "--no-fund", f"sharp@{SHARP_VERSION}"], cwd=d)
    shutil.copy(ROOT / "bench" / "sharp-bench.mjs", d / "sharp-bench.mjs")
    return d


# The one-thread contenders run pinned to one CPU: with
# `sharp.concurrency(1)` libvips still runs a helper thread (Sharp used 122%
# of a CPU unpinned on an idle machine), so "one thread" means one CPU's
# worth of work for both.
ONE_CPU = ["taskset", "-c", "0"] if shutil.which("taskset") else []
# --rdo-lambda: None leaves the engine's default.
RDO_LAMBDA = None


def sharp_run(sd, corpus_dir, out, passes, pinned=True):
    res = run((ONE_CPU if pinned else []) + ["node", str(sd / "sharp-bench.mjs"), str(corpus_dir), str(out), str(passes)],
              capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def imgproc_run(binary, files, out, threads, passes, pinned=None, rdo_lambda=None):
    pinned = threads == 1 if pinned is None else pinned
    cmd = (ONE_CPU if pinned else []) + [
        str(binary), "compress", "--json", "--threads", str(threads), "--passes", str(passes), "--out", str(out)]
    rdo_lambda = RDO_LAMBDA if rdo_lambda is None else rdo_lambda
    if rdo_lambda is not None:
        cmd += ["--rdo-lambda", str(rdo_lambda)]
    res = subprocess.run(cmd + [str(f) for f in files], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"imgproc compress failed ({res.returncode}): {res.stderr}\n{res.stdout[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def tool_run(kind, files, passes, pinned):
    """libjpeg-turbo's own tools over the JPEGs, one whole process per file
    as a user would run them: `djpeg` decoding to pixels, `jpegtran -copy
    none -optimize` transcoding losslessly. Per file the fastest of
    `passes`; the total is the sum of those."""
    cmd = {"djpeg": ["djpeg", "-rgb", "-outfile", os.devnull],
           "jpegtran": ["jpegtran", "-copy", "none", "-optimize", "-outfile", os.devnull]}[kind]
    per = {}
    for f in files:
        best = float("inf")
        for _ in range(passes):
            t0 = time.perf_counter()
            subprocess.run((ONE_CPU if pinned else []) + cmd + [str(f)], check=True, capture_output=True)
            best = min(best, time.perf_counter() - t0)
        per[f.name] = best * 1000
    seconds = sum(per.values()) / 1000
    return {"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds, "per_image_ms": per}


def imgproc_whole(binary, files, out, passes, pinned):
    """The engine on `files` as a whole process (start-up included), one
    thread: the fastest of `passes` processes; per image the fastest too."""
    best, per, last = float("inf"), {}, None
    for _ in range(passes):
        t0 = time.perf_counter()
        last = imgproc_run(binary, files, out, 1, 1, pinned=pinned)
        best = min(best, time.perf_counter() - t0)
        for k, v in last["per_image_ms"].items():
            per[k] = min(per.get(k, float("inf")), v)
    return dict(last, seconds=best, images_per_s=len(files) / best, per_image_ms=per)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_folder(folder):
    handler = lambda *a, **kw: QuietHandler(*a, directory=str(folder), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class WebhookReceiver(http.server.ThreadingHTTPServer):
    """Notes when each request's webhook call arrives: the pipeline's clock
    stops there, so the benchmark never polls the service it measures."""

    def __init__(self):
        self.arrived = {}
        self.cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                at = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(204)
                self.end_headers()
                with receiver.cond:
                    receiver.arrived.setdefault(body["request_id"], at)
                    receiver.cond.notify_all()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/done"

    def wait(self, request_id, deadline):
        with self.cond:
            while request_id not in self.arrived:
                if not self.cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise SystemExit(f"no webhook for {request_id} before the deadline")
            return self.arrived[request_id]


def http_json(method, url, body=None, content_type=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def pipeline_run(binary, files, threads, copies, passes, file_server, webhook):
    """Images/s through `imgproc-local serve`, from sending the upload to
    receiving the request's webhook call: the fastest of `passes` requests,
    one after another, in one process."""
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="imgproc-bench-"))
    env = dict(os.environ, ALLOW_PRIVATE_NETWORKS="true", RUST_LOG="warn")
    if RDO_LAMBDA is not None:
        env["JPEG_RDO_LAMBDA"] = str(RDO_LAMBDA)
    proc = subprocess.Popen(
        [str(binary), "serve", "--addr", f"127.0.0.1:{port}", "--data-dir", str(data), "--threads", str(threads)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                http_json("GET", base + "/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"serve did not start: {proc.stderr.read() if proc.poll() is not None else ''}")
                time.sleep(0.05)
        files_base = f"http://127.0.0.1:{file_server.server_address[1]}"
        best = None
        for p in range(passes):
            rows = ["S. No.,Product Name,Input Image Urls"]
            n = 0
            for c in range(copies):
                for f in files:
                    n += 1
                    # Distinct URLs per pass: every image is fetched and compressed again.
                    rows.append(f'{n},"{f.stem} {c}","{files_base}/{f.name}?pass={p}&copy={c}"')
            body = ("\n".join(rows) + "\n").encode()
            upload_url = base + "/v1/requests?" + urllib.parse.urlencode({"webhook_url": webhook.url()})
            started = time.monotonic()
            accepted = http_json("POST", upload_url, body, "text/csv")
            seconds = webhook.wait(accepted["request_id"], started + 600) - started
            status = http_json("GET", base + accepted["status_url"] + "?limit=1")
            progress = status["progress"]
            if status["status"] != "completed" or progress["failed"] or progress["succeeded"] != n:
                raise SystemExit(f"pipeline run: {status['status']}, {progress}")
            if best is None or seconds < best:
                best = seconds
        images = len(files) * copies
        return {"threads": threads, "images": images, "seconds": best, "images_per_s": images / best}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


def dssim(tool, corpus_dir, out, background):
    res = run([str(tool), "dssim", str(corpus_dir), str(out), "--background", background], capture_output=True, text=True)
    return json.loads(res.stdout)


def djpeg_all(folder):
    if not shutil.which("djpeg"):
        return None
    bad = []
    for f in sorted(folder.glob("*.jpg")):
        r = subprocess.run(["djpeg", "-pnm", "-outfile", os.devnull, str(f)], capture_output=True)
        if r.returncode != 0 or r.stderr:
            bad.append(f.name)
    return bad


def rss_of_20mp(binary, files, out):
    """Peak RSS compressing the largest photo alone, and its decoded size."""
    largest = max(files, key=lambda f: f.stat().st_size)
    one = imgproc_run(binary, [largest], out, 1, 1)
    idle = imgproc_run(binary, [ROOT / "examples" / "photos" / "coffee.jpg"], out, 1, 1)
    return largest.name, one["peak_rss_mb"], idle["peak_rss_mb"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--copies", type=int, default=3, help="times the corpus is repeated in the pipeline CSV")
    ap.add_argument("--corpus", type=Path, default=ROOT / "bench" / "corpus")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the whole-service runs (imgproc-local serve)")
    ap.add_argument("--rdo-lambda", type=int, help="λ of the engine's JPEG requantisation (default: the engine's)")
    args = ap.parse_args()
    global RDO_LAMBDA
    RDO_LAMBDA = args.rdo_lambda

    files = corpus(args.corpus)
    jpegs = [f for f in files if f.suffix.lower() in (".jpg", ".jpeg")]
    sd = sharp_dir()
    imgproc, tool = build(args.skip_build)
    outs = {k: Path(tempfile.mkdtemp(prefix=f"bench-{k}-")) for k in ("sharp", "imgproc1", "imgproc2", "misc")}
    server = serve_folder(args.corpus)
    webhook = WebhookReceiver()
    contenders = {
        "sharp": lambda: sharp_run(sd, args.corpus, outs["sharp"], args.passes),
        "imgproc1": lambda: imgproc_run(imgproc, files, outs["imgproc1"], 1, args.passes),
        "imgproc2": lambda: imgproc_run(imgproc, files, outs["imgproc2"], 2, args.passes),
        "sharp_unpinned": lambda: sharp_run(sd, args.corpus, outs["misc"], args.passes, pinned=False),
        # The engine on the JPEGs alone, whole process, against libjpeg-turbo's tools on the same files.
        "imgproc_jpeg": lambda: imgproc_whole(imgproc, jpegs, outs["misc"], args.passes, True),
        "djpeg": lambda: tool_run("djpeg", jpegs, args.passes, True),
        "jpegtran": lambda: tool_run("jpegtran", jpegs, args.passes, True),
        "imgproc_jpeg_unpinned": lambda: imgproc_whole(imgproc, jpegs, outs["misc"], args.passes, False),
        "djpeg_unpinned": lambda: tool_run("djpeg", jpegs, args.passes, False),
        "jpegtran_unpinned": lambda: tool_run("jpegtran", jpegs, args.passes, False),
    }
    if not args.no_pipeline:
        contenders["pipeline1"] = lambda: pipeline_run(imgproc, files, 1, args.copies, args.passes, server, webhook)
        contenders["pipeline2"] = lambda: pipeline_run(imgproc, files, 2, args.copies, args.passes, server, webhook)
    results = {k: [] for k in contenders}
    order = list(contenders)
    try:
        for r in range(args.rounds):
            for name in order:
                results[name].append(contenders[name]())
                log(f"round {r + 1}/{args.rounds} {name}: {results[name][-1]['images_per_s']:.2f} images/s")
            order = order[1:] + order[:1]
    finally:
        server.shutdown()
        webhook.shutdown()
    has_pipe = not args.no_pipeline
    pipe = {t: statistics.median(x["images_per_s"] for x in results[f"pipeline{t}"]) for t in (1, 2)} if has_pipe else {}

    # Speed ratios are taken within each round (the contenders ran minutes
    # apart at most) and the median of those is reported: a slow stretch of
    # the host then hits both sides of a ratio, not one.
    def paired(a, b):
        per_round = [x["images_per_s"] / y["images_per_s"] for x, y in zip(results[a], results[b])]
        return statistics.median(per_round), per_round

    # Time of the engine as a multiple of a tool's time, within each round.
    def time_multiple(a, b):
        per_round = [x["seconds"] / y["seconds"] for x, y in zip(results[a], results[b])]
        return statistics.median(per_round), per_round

    q_sharp = dssim(tool, args.corpus, outs["sharp"], "black")
    q_ours = dssim(tool, args.corpus, outs["imgproc1"], "white")
    undecodable = djpeg_all(outs["imgproc1"])
    larger = [f.name for f in files
              if (outs["imgproc1"] / (f.stem + ".jpg")).exists()
              and (outs["imgproc1"] / (f.stem + ".jpg")).stat().st_size > f.stat().st_size]
    big_name, big_rss, idle_rss = rss_of_20mp(imgproc, files, outs["misc"])

    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in results.items()}
    rss = {k: max(x["peak_rss_mb"] for x in v) for k, v in results.items()
           if results[k] and "peak_rss_mb" in results[k][0] and not k.startswith("pipeline")}
    last = {k: v[-1] for k, v in results.items()}
    bytes_in = last["imgproc1"]["bytes_in"]
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    pairs = {
        "speed": paired("imgproc1", "sharp"),
        "unpinned": paired("imgproc2", "sharp_unpinned"),
        "scaling": paired("imgproc2", "imgproc1"),
    }
    if has_pipe:
        pairs["pipeline1"] = paired("pipeline1", "imgproc1")
        pairs["pipeline2"] = paired("pipeline2", "imgproc2")
    multiples = {
        "djpeg": time_multiple("imgproc_jpeg", "djpeg"),
        "jpegtran": time_multiple("imgproc_jpeg", "jpegtran"),
        "djpeg_unpinned": time_multiple("imgproc_jpeg_unpinned", "djpeg_unpinned"),
        "jpegtran_unpinned": time_multiple("imgproc_jpeg_unpinned", "jpegtran_unpinned"),
    }
    dssim_ratios = {stem: ratio(q_ours["per_image"][stem], q_sharp["per_image"][stem])
                    for stem in q_ours["per_image"] if stem in q_sharp["per_image"]}
    worst_stem = max(dssim_ratios, key=dssim_ratios.get)
    rows = [
        ("total output bytes vs Sharp q50", f"{last['sharp']['bytes_out']:,}", f"{last['imgproc1']['bytes_out']:,}",
         ratio(last["imgproc1"]["bytes_out"], last["sharp"]["bytes_out"]), "≤ 0.85×"),
        ("mean DSSIM vs Sharp (lower is better)", f"{q_sharp['mean_dssim']:.5f}", f"{q_ours['mean_dssim']:.5f}",
         ratio(q_ours["mean_dssim"], q_sharp["mean_dssim"]), "≤ 1.0×"),
        (f"worst image's DSSIM vs Sharp's ({worst_stem})", f"{q_sharp['per_image'][worst_stem]:.5f}",
         f"{q_ours['per_image'][worst_stem]:.5f}", dssim_ratios[worst_stem], "≤ 1.15×"),
        ("mean SSIMULACRA2 vs Sharp (higher is better)", f"{q_sharp['mean_ssimulacra2']:.2f}",
         f"{q_ours['mean_ssimulacra2']:.2f}", ratio(q_ours["mean_ssimulacra2"], q_sharp["mean_ssimulacra2"]), "≥ 1.0×"),
        ("speed, 1 thread pinned (images/s)", f"{med['sharp']:.2f}", f"{med['imgproc1']:.2f}",
         pairs["speed"][0], "≥ 2.0×"),
        ("speed, unpinned wall clock, each alone (images/s)", f"{med['sharp_unpinned']:.2f}", f"{med['imgproc2']:.2f}",
         pairs["unpinned"][0], "≥ 1.5×"),
        ("JPEG path time vs djpeg full decode, pinned (s)", f"{statistics.median(x['seconds'] for x in results['djpeg']):.2f}",
         f"{statistics.median(x['seconds'] for x in results['imgproc_jpeg']):.2f}", multiples["djpeg"][0], "≤ 1.0×"),
        ("JPEG path time vs djpeg full decode, unpinned (s)",
         f"{statistics.median(x['seconds'] for x in results['djpeg_unpinned']):.2f}",
         f"{statistics.median(x['seconds'] for x in results['imgproc_jpeg_unpinned']):.2f}",
         multiples["djpeg_unpinned"][0], "≤ 1.0×"),
        ("JPEG path time vs jpegtran -optimize, pinned (s)",
         f"{statistics.median(x['seconds'] for x in results['jpegtran']):.2f}",
         f"{statistics.median(x['seconds'] for x in results['imgproc_jpeg']):.2f}", multiples["jpegtran"][0], "(report)"),
        ("JPEG path time vs jpegtran -optimize, unpinned (s)",
         f"{statistics.median(x['seconds'] for x in results['jpegtran_unpinned']):.2f}",
         f"{statistics.median(x['seconds'] for x in results['imgproc_jpeg_unpinned']):.2f}",
         multiples["jpegtran_unpinned"][0], "(report)"),
        ("peak RSS (MB)", f"{rss['sharp']:.0f}", f"{rss['imgproc1']:.0f}", ratio(rss["imgproc1"], rss["sharp"]), "≤ 0.5×"),
        ("scaling, 2 threads vs 1 (images/s)", f"{med['imgproc1']:.2f}", f"{med['imgproc2']:.2f}",
         pairs["scaling"][0], "≥ 1.8×"),
    ]
    if has_pipe:
        rows += [
            ("pipeline vs compress, 1 worker (images/s)", f"{med['imgproc1']:.2f}", f"{pipe[1]:.2f}",
             pairs["pipeline1"][0], "≥ 0.9×"),
            ("pipeline vs compress, 2 workers (images/s)", f"{med['imgproc2']:.2f}", f"{pipe[2]:.2f}",
             pairs["pipeline2"][0], "≥ 0.9×"),
        ]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"\ncorpus: {len(files)} files ({len(jpegs)} JPEG), {bytes_in / 1e6:.1f} MB; {args.rounds} rounds × "
          f"{args.passes} passes, interleaved, medians; {last['sharp']['engine']} vs {last['imgproc1']['engine']}; "
          f"load average at the end {load[0]:.1f} on {os.cpu_count()} CPUs\n" if load else "\n")
    print("| target | reference | imgproc | ratio | goal |")
    print("|---|---|---|---|---|")
    for name, a, b, r, goal in rows:
        print(f"| {name} | {a} | {b} | {r:.2f}× | {goal} |")
    print("\nImages/s and seconds: medians over rounds. Ratios: median of the per-round ratios; per round:")
    for name, (_, per_round) in list(pairs.items()) + [(f"time vs {k}", v) for k, v in multiples.items()]:
        print(f"  {name}: " + ", ".join(f"{r:.2f}" for r in per_round))
    print(f"\nLargest photo alone ({big_name}): peak RSS {big_rss:.0f} MB (process baseline {idle_rss:.0f} MB).")
    if undecodable is None:
        print("djpeg not found: libjpeg-turbo decode check skipped (apt-get install libjpeg-turbo-progs).")
    else:
        print(f"libjpeg-turbo (djpeg) decodes {len(list(outs['imgproc1'].glob('*.jpg'))) - len(undecodable)} of "
              f"{len(list(outs['imgproc1'].glob('*.jpg')))} outputs cleanly{': failing ' + ', '.join(undecodable) if undecodable else ''}.")
    print(f"Outputs larger than their input: {len(larger)}{' (' + ', '.join(larger) + ')' if larger else ''}.")

    # Per image, slowest relative to Sharp first.
    fastest = lambda k, name: min(x["per_image_ms"].get(name, float("inf")) for x in results[k])  # noqa: E731
    per = []
    for f in files:
        s_ms, i_ms = fastest("sharp", f.name), fastest("imgproc1", f.name)
        per.append((i_ms / s_ms, f.name, s_ms, i_ms, q_sharp["per_image"].get(f.stem), q_ours["per_image"].get(f.stem),
                    q_sharp["per_image_ssimulacra2"].get(f.stem), q_ours["per_image_ssimulacra2"].get(f.stem)))
    per.sort(reverse=True)
    print("\n| image | Sharp ms | imgproc ms | time ratio | DSSIM Sharp | DSSIM imgproc | SSIMULACRA2 Sharp | SSIMULACRA2 imgproc |")
    print("|---|---|---|---|---|---|---|---|")
    for r, name, s_ms, i_ms, qs, qi, ss, si in per:
        print(f"| {name} | {s_ms:.1f} | {i_ms:.1f} | {r:.2f} | {qs:.5f} | {qi:.5f} | {ss:.2f} | {si:.2f} |")
    # Per JPEG: the engine in-process against one tool process per file.
    print("\n| JPEG | bytes | imgproc ms | djpeg ms | × djpeg | jpegtran ms | × jpegtran |")
    print("|---|---|---|---|---|---|---|")
    per_jpeg = []
    for f in jpegs:
        i_ms, d_ms, t_ms = fastest("imgproc_jpeg", f.name), fastest("djpeg", f.name), fastest("jpegtran", f.name)
        per_jpeg.append((i_ms / d_ms, f, i_ms, d_ms, t_ms))
    per_jpeg.sort(key=lambda x: x[0], reverse=True)
    for r, f, i_ms, d_ms, t_ms in per_jpeg:
        print(f"| {f.name} | {f.stat().st_size:,} | {i_ms:.1f} | {d_ms:.1f} | {r:.2f} | {t_ms:.1f} | {i_ms / t_ms:.2f} |")

    summary = {
        "measured_at": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} vCPU {platform.machine()}",
        "corpus_images": len(files),
        "rows": [{"target": n, "reference": a, "imgproc": b, "ratio": round(r, 3), "goal": g} for n, a, b, r, g in rows],
        "runs": results,
        "pipeline_images_per_s": pipe,
        "per_round_ratios": {k: v[1] for k, v in pairs.items()},
        "per_round_time_multiples": {k: v[1] for k, v in multiples.items()},
        "rdo_lambda": "default" if RDO_LAMBDA is None else RDO_LAMBDA,
        "dssim": {"sharp": q_sharp, "imgproc": q_ours},
    }
    (ROOT / "bench" / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    n_ok = last["imgproc1"]["images"]
    figures = {
        "measured_at": summary["measured_at"],
        "machine": summary["machine"],
        "corpus_images": len(files),
        "mean_input_bytes": round(bytes_in / n_ok),
        "mean_output_bytes": round(last["imgproc1"]["bytes_out"] / n_ok),
        "mean_megapixels": round(mean_megapixels(files), 2),
        "images_per_second_1_thread": round(med["imgproc1"], 2),
        "peak_rss_mb": round(rss["imgproc1"]),
    }
    (ROOT / "bench" / "engine-figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    for d in outs.values():
        shutil.rmtree(d, ignore_errors=True)


def mean_megapixels(files):
    """From the image headers, without decoding (JPEG SOF, PNG IHDR, WebP VP8/VP8L/VP8X)."""
    total = 0.0
    for f in files:
        w, h = image_size(f.read_bytes())
        total += w * h / 1e6
    return total / len(files)


def image_size(b):
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        kind = b[12:16]
        if kind == b"VP8X":
            return 1 + int.from_bytes(b[24:27], "little"), 1 + int.from_bytes(b[27:30], "little")
        if kind == b"VP8L":
            v = int.from_bytes(b[21:25], "little")
            return (v & 0x3FFF) + 1, ((v >> 14) & 0x3FFF) + 1
        return int.from_bytes(b[26:28], "little") & 0x3FFF, int.from_bytes(b[28:30], "little") & 0x3FFF
    if b[:2] == b"\xff\xd8":
        i = 2
        while i < len(b) - 9:
            if b[i] != 0xFF:
                i += 1
                continue
            m = b[i + 1]
            if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7 or m == 0xFF:
                i += 1 if m == 0xFF else 2
                continue
            if m in (0xC0, 0xC1, 0xC2):
                return int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")
            i += 2 + int.from_bytes(b[i + 2:i + 4], "big")
    if b[:3] == b"GIF":
        return int.from_bytes(b[6:8], "little"), int.from_bytes(b[8:10], "little")
    return 0, 0


if __name__ == "__main__":
    main()
