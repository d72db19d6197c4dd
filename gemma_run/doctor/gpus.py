"""CUDA and the GPUs: each GPU's name, memory, compute capability and bf16; peer access and NCCL between them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gemma_run.doctor.base import DoctorContext, Finding, gpu_count, no_gpu_reason

GiB = 2**30


def arch_supported(arch_list: list[str], major: int, minor: int) -> bool:
    """Whether a torch built for ``arch_list`` has code for compute capability major.minor: SASS of the same
    major and a minor <= this GPU's (sm_80 runs on 8.6), or PTX of an older capability (compute_90)."""
    for arch in arch_list:
        kind, _, num = arch.partition("_")
        digits = "".join(ch for ch in num if ch.isdigit())
        if len(digits) < 2:
            continue
        built = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and built[0] == major and built[1] <= minor:
            return True
        if kind == "compute" and built <= (major, minor):
            return True
    return False


def describe_gpu(i: int) -> dict[str, Any]:
    """Name, memory, compute capability and bf16 of GPU ``i``, and whether a kernel runs on it."""
    import torch

    p = torch.cuda.get_device_properties(i)
    free, total = torch.cuda.mem_get_info(i)
    sm = f"sm_{p.major}{p.minor}"
    built_for = arch_supported(torch.cuda.get_arch_list(), p.major, p.minor)
    info = {"index": i, "name": p.name, "total_gib": round(total / GiB, 1), "free_gib": round(free / GiB, 1),
            "compute_capability": f"{p.major}.{p.minor}", "sm": sm, "bf16": p.major >= 8,
            "in_torch_arch_list": built_for, "multiprocessors": p.multi_processor_count}
    try:
        x = torch.arange(1024, device=f"cuda:{i}", dtype=torch.float32)
        info["kernel_ok"] = bool((x * 2).sum().item() == 2 * 1023 * 1024 / 2)
    except RuntimeError as e:  # "no kernel image is available", ECC errors, ...
        info["kernel_ok"] = False
        info["kernel_error"] = str(e).splitlines()[0]
    return info


def cuda_check(ctx: DoctorContext) -> Finding:
    import torch

    n = gpu_count()
    if n == 0:
        return Finding("skip", no_gpu_reason(),
                       fix="on a GPU machine: pip install torch for your CUDA (https://pytorch.org/get-started)",
                       details={"torch": torch.__version__, "cuda": torch.version.cuda})
    gpus = [describe_gpu(i) for i in range(n)]
    details = {"torch": torch.__version__, "cuda": torch.version.cuda, "arch_list": torch.cuda.get_arch_list(),
               "gpus": gpus}
    summary = "; ".join(f"{g['index']}: {g['name']} {g['total_gib']} GiB {g['sm']} "
                        f"{'bf16' if g['bf16'] else 'no bf16'}" for g in gpus)
    broken = [g for g in gpus if not g["kernel_ok"]]
    if broken:
        g = broken[0]
        return Finding("fail", f"GPU {g['index']} ({g['name']}, {g['sm']}) cannot run a kernel: "
                       f"{g.get('kernel_error', 'wrong result')}",
                       fix=f"install a torch built for {g['sm']} (torch.cuda.get_arch_list() lists "
                           f"{', '.join(details['arch_list'])})", details=details)
    no_bf16 = [g for g in gpus if not g["bf16"]]
    if no_bf16:
        return Finding("warn", f"CUDA {torch.version.cuda}, {n} GPU(s) [{summary}]: GPU(s) "
                       f"{', '.join(str(g['index']) for g in no_bf16)} lack bf16, so model.dtype=auto loads fp32 there",
                       fix="model.dtype=float32 on those GPUs (float16 overflows Gemma 3), or quant=4bit to fit",
                       details=details)
    return Finding("pass", f"CUDA {torch.version.cuda}, {n} GPU(s): {summary}", details=details)


def p2p_check(ctx: DoctorContext) -> Finding:
    """Peer access between every pair, and a real copy across each pair checked for equality."""
    import torch

    n = gpu_count()
    if n < 2:
        return Finding("skip", f"needs >= 2 GPUs (found {n})", fix="run on a machine with several GPUs")
    pairs, bad = [], []
    mib = 64
    for i in range(n):
        src = torch.arange(mib * 2**18, device=f"cuda:{i}", dtype=torch.float32)
        for j in range(n):
            if i == j:
                continue
            peer = torch.cuda.can_device_access_peer(i, j)
            src[:1024].to(f"cuda:{j}")  # warm-up: the first copy between a pair sets up the path
            torch.cuda.synchronize(i)
            start = time.perf_counter()
            dst = src.to(f"cuda:{j}")
            torch.cuda.synchronize(j)
            seconds = time.perf_counter() - start
            equal = bool(torch.equal(dst.cpu(), src.cpu()))
            pairs.append({"from": i, "to": j, "peer_access": peer, "copy_ok": equal,
                          "gbps": round(mib * 2**20 / seconds / 1e9, 1)})
            if not equal:
                bad.append(f"{i}->{j}")
    no_peer = [f"{p['from']}->{p['to']}" for p in pairs if not p["peer_access"]]
    details = {"pairs": pairs}
    if bad:
        return Finding("fail", f"copies between GPUs are corrupted: {', '.join(bad)}",
                       fix="NCCL_P2P_DISABLE=1 (+env.vars.NCCL_P2P_DISABLE=1), check the IOMMU/ACS settings",
                       details=details)
    slowest = min(p["gbps"] for p in pairs)
    if no_peer:
        return Finding("warn", f"no peer access for {', '.join(no_peer)} (copies go through host memory, "
                       f"slowest {slowest} GB/s); copies correct",
                       fix="expected on PCIe consumer GPUs without NVLink; keep NCCL_P2P_DISABLE=1 "
                           "if NCCL hangs (env=rtx3090x3)", details=details)
    return Finding("pass", f"peer access and correct copies between all {n} GPUs (slowest pair {slowest} GB/s)",
                   details=details)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def allreduce_probe(world: int, backend: str = "nccl", timeout: float = 120.0, mib: float = 64.0) -> dict[str, Any]:
    """Run the all-reduce probe in ``world`` processes; {"ok": bool, ...} or {"error": ..., "hung": bool}."""
    port = _free_port()
    cmd = [sys.executable, "-m", "gemma_run.doctor.allreduce", "--world", str(world), "--port", str(port),
           "--backend", backend, "--mib", str(mib), "--timeout", str(max(10, int(timeout) - 5))]
    # Output to files, not pipes: with NCCL_DEBUG=INFO a rank writes enough to fill a pipe and block.
    with tempfile.TemporaryDirectory(prefix="gemma-run-allreduce-") as tmp:
        logs = [(Path(tmp) / f"{r}.out", Path(tmp) / f"{r}.err") for r in range(world)]
        procs = []
        for r, (out_path, err_path) in enumerate(logs):
            with open(out_path, "w") as out, open(err_path, "w") as err:
                procs.append(subprocess.Popen([*cmd, "--rank", str(r)], stdout=out, stderr=err, text=True))
        deadline = time.monotonic() + timeout
        hung = False
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                hung = True
                break
        if hung:
            for p in procs:  # the probe's own processes, by handle
                if p.poll() is None:
                    p.kill()
                    p.wait()
            return {"ok": False, "hung": True, "error": f"the all-reduce did not finish in {timeout:.0f} s"}
        outputs = [(p.returncode, o.read_text(), e.read_text()) for p, (o, e) in zip(procs, logs, strict=True)]
    failed = [(r, code, err) for r, (code, _out, err) in enumerate(outputs) if code != 0]
    if failed:
        rank, code, err = failed[0]
        last = [line for line in err.strip().splitlines() if line.strip()][-3:]
        return {"ok": False, "hung": False, "error": f"rank {rank} exited {code}: {' | '.join(last)}"}
    line = [ln for ln in outputs[0][1].splitlines() if ln.startswith("{")]
    if not line:
        return {"ok": False, "hung": False, "error": "rank 0 printed no result"}
    return json.loads(line[-1])


def nccl_check(ctx: DoctorContext) -> Finding:
    """A real NCCL all-reduce across every visible GPU, one process per GPU, values checked."""
    import torch

    n = gpu_count()
    if n < 2:
        return Finding("skip", f"needs >= 2 GPUs (found {n})", fix="run on a machine with several GPUs")
    if not torch.distributed.is_nccl_available():
        return Finding("fail", f"torch {torch.__version__} was built without NCCL",
                       fix="install a CUDA build of torch from pytorch.org")
    timeout = float(ctx.cfg.task.nccl_timeout_s)
    r = allreduce_probe(n, "nccl", timeout=timeout)
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "?"
    r["nccl"] = nccl
    if r.get("hung"):
        return Finding("fail", f"NCCL {nccl} all-reduce over {n} GPUs hung ({r['error']})",
                       fix="+env.vars.NCCL_P2P_DISABLE=1 (P2P over PCIe hangs on some boards; env=rtx3090x3 sets "
                           "it); +env.vars.NCCL_DEBUG=INFO shows where it stops", details=r)
    if not r.get("ok"):
        return Finding("fail", f"NCCL {nccl} all-reduce over {n} GPUs failed: {r.get('error') or 'wrong values'}",
                       fix="+env.vars.NCCL_DEBUG=INFO and rerun task.checks=[gpus.nccl]; try NCCL_P2P_DISABLE=1",
                       details=r)
    return Finding("pass", f"NCCL {nccl} all-reduce over {n} GPUs correct, {r['bytes'] / 2**20:.0f} MiB in "
                   f"{r['ms']} ms (bus {r['busbw_gbps']} GB/s)", details=r)


CHECKS = [
    ("gpus.cuda", cuda_check, "CUDA and each GPU: name, memory, compute capability, bf16, a kernel runs"),
    ("gpus.p2p", p2p_check, "peer access and a checked copy between every pair of GPUs"),
    ("gpus.nccl", nccl_check, "a real NCCL all-reduce across all GPUs, one process each"),
]
