#!/usr/bin/env python3
"""Does NVRTC scale across threads of one process as it does across processes? Compiles the
given CUDA sources to sm_90 cubins (as smelt-cuda's Device::precompile does) one after another,
in N threads of this process, and in N processes, and prints each mode's wall time. No GPU
needed: NVRTC only (NVRTC_LIB, default libnvrtc.so.13; its directory on LD_LIBRARY_PATH so that
libnvrtc-builtins loads). ctypes releases the GIL around each NVRTC call.

usage: nvrtc_scale.py [-j N] [--modes seq,threads,procs] SRC.cu...
Sources: SMELT_CUDA_DUMP=DIR cargo test -p smelt-cuda generated_kernels_compile (README.md)."""
import ctypes, os, queue, subprocess, sys, threading, time

lib = ctypes.CDLL(os.environ.get("NVRTC_LIB", "libnvrtc.so.13"))


def compile_one(path, salt=""):
    """Seconds NVRTC took to compile `path` (with a first line declaring a variable named by
    `salt`) to a cubin. Each mode salts its sources: on the H100 machine a source compiled
    once before came back in 0.1-0.3 s, even with a different first comment line (a cache
    below the preprocessor), which made the later modes look 70-150x faster."""
    src = f"__device__ int smelt_salt_{salt or 'none'};\n".encode() + open(path, "rb").read()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"k.cu", 0, None, None) == 0
    opts = [b"--gpu-architecture=sm_90", b"-std=c++17"]
    t = time.time()
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    dt = time.time() - t
    n = ctypes.c_size_t()
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    if rc != 0:
        sys.exit(f"{path}: nvrtcCompileProgram returned {rc} (libnvrtc-builtins not found?)")
    return dt


def pool(files, jobs, work):
    """Run work(file) for every file on `jobs` threads taking the next file from a queue."""
    q = queue.Queue()
    for f in files:
        q.put(f)
    times = {}

    def worker():
        while True:
            try:
                f = q.get_nowait()
            except queue.Empty:
                return
            times[f] = work(f)

    ts = [threading.Thread(target=worker) for _ in range(min(jobs, len(files)))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return times


def in_child(f):
    t = time.time()
    subprocess.run([sys.executable, __file__, "--one", f, "procs"], check=True)
    return time.time() - t


def main():
    args = sys.argv[1:]
    if args[:1] == ["--one"]:
        compile_one(args[1], args[2])
        return
    jobs = os.cpu_count()
    modes = ["seq", "threads", "procs"]
    while args and args[0].startswith("-"):
        if args[0] == "-j":
            jobs = int(args[1])
            args = args[2:]
        elif args[0] == "--modes":
            modes = args[1].split(",")
            args = args[2:]
        else:
            sys.exit(__doc__)
    files = args
    if not files:
        sys.exit(__doc__)
    # What Rust's available_parallelism() reads: the affinity mask and the cgroup's CPU quota.
    quota = open("/sys/fs/cgroup/cpu.max").read().strip() if os.path.exists("/sys/fs/cgroup/cpu.max") else "-"
    print(f"cpus {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}, cgroup cpu.max {quota}; "
          f"{len(files)} sources, {jobs} at a time")
    compile_one(files[0])  # load NVRTC and its builtins once, outside the timings
    for mode in modes:
        t = time.time()
        c0 = os.times()
        if mode == "seq":
            times = {f: compile_one(f, mode) for f in files}
        elif mode == "threads":
            times = pool(files, jobs, lambda f: compile_one(f, mode))
        elif mode == "procs":
            times = pool(files, jobs, in_child)
        else:
            sys.exit(f"unknown mode {mode}")
        c1 = os.times()
        cpu = sum(c1[i] - c0[i] for i in range(4))
        per = " ".join(f"{times[f]:.1f}" for f in files)
        print(f"{mode:8} wall {time.time() - t:6.2f}s  cpu {cpu:6.1f}s  per source (s): {per}", flush=True)


main()
