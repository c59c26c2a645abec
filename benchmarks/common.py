"""What the benchmark scripts share: an offline hub to load from by real names,
and the AXON-style step they are measured against.

Example::

    print(host_line())   # host: cpu="AMD EPYC" flags=avx2 no=avx512f,... torch_cpu=AVX2 cpus=2 usable=2 copy_gbps=9.8
    hub = use_offline_hub(None, "axon-bench-hub-")     # HF_HUB_CACHE -> a fresh GPT-2-small-shape hub
    step = axon_style_step(pair.model, pair.sae, pair.hook_name)
    next_token = step(tokens)                            # one full forward over the whole sequence
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")  # what the encode and GEMV kernels can use


def copy_bandwidth(mib: int = 256, reps: int = 5) -> float:
    """Bytes a second one tensor copy moves (median of ``reps``; the count read, as
    the generation benchmark's floor takes it)."""
    import statistics

    import torch

    src = torch.ones(mib * 2**18)
    dst = torch.empty_like(src)
    dst.copy_(src)  # pages in
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return src.numel() * src.element_size() / statistics.median(times)


def host_line() -> str:
    """One line saying where a benchmark ran: CPU model, the SIMD flags that matter
    (present, and absent after ``no=``), torch's CPU capability, CPUs (and those this
    process may use: affinity and cgroup quota) and the measured copy bandwidth."""
    import torch

    sys.path.insert(0, str(ROOT))
    from axon_core.engine import usable_cpus

    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    have = [f for f in FLAGS if f in flags]
    lack = [f for f in FLAGS if f not in flags]
    return (f'host: cpu="{model}" flags={",".join(have) or "-"} no={",".join(lack) or "-"} '
            f"torch_cpu={torch.backends.cpu.get_cpu_capability()} cpus={os.cpu_count()} usable={usable_cpus()} "
            f"copy_gbps={copy_bandwidth() / 1e9:.1f}")


def use_offline_hub(hub: str | None, prefix: str, size: str = "gpt2-small", layers=(8,)) -> Path:
    """Point Hugging Face at ``hub`` (a fresh temporary folder if None), offline,
    writing the ``gpt2`` + ``gpt2-small-res-jb`` hub there first if it holds none.
    Call it before anything imports huggingface_hub (it reads these at import)."""
    path = Path(hub or tempfile.mkdtemp(prefix=prefix))
    os.environ["HF_HUB_CACHE"] = str(path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not (path / "AXON_OFFLINE_HUB.json").exists():
        from scripts.offline_hub import write_offline_hub

        t = time.perf_counter()
        write_offline_hub(path, size, layers=list(layers))
        print(f"wrote {size}-shape offline hub in {time.perf_counter() - t:.1f} s: {path}")
    return path


def axon_style_step(model, sae, hook_name: str):
    """The loop AXON started from: a full ``run_with_hooks`` forward over the
    whole sequence per token, the SAE's encode and top-12 of the last position,
    then a sampled token. Returns ``step(tokens) -> next token id``."""
    import torch

    @torch.inference_mode()
    def step(tokens: torch.Tensor) -> int:
        got = {}

        def grab(act, hook):
            got["resid"] = act

        logits = model.run_with_hooks(tokens[None], fwd_hooks=[(hook_name, grab)])
        sae.encode(got["resid"][0, -1]).topk(12)
        return int(torch.multinomial(logits[0, -1].float().softmax(-1), 1))

    return step


@contextlib.contextmanager
def running_app(hub: Path, work: Path, env: dict | None = None):
    """``python app.py`` on the offline ``hub`` (Neuronpedia unreachable, temp
    and caches under ``work``), as a stranger reaches it: yields ``(proc, url)``
    once the page is served; stops it after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB")}
    environ.update(AXON_OFFLINE_HUB=str(hub), AXON_PORT=str(port), AXON_HOST="127.0.0.1",
                   AXON_LABEL_CACHE=str(work / "labels.sqlite"), AXON_CACHE_DIR=str(work / "cache"),
                   AXON_NEURONPEDIA_URL="http://127.0.0.1:9", AXON_NEURONPEDIA_DATASETS_URL="http://127.0.0.1:9",
                   TMPDIR=str(tmp), GRADIO_TEMP_DIR=str(tmp / "gradio"), GRADIO_ANALYTICS_ENABLED="False",
                   **(env or {}))
    log = open(work / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=environ, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}; see {work / 'app.log'}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
