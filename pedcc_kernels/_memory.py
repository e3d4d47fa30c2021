"""Peak memory of a piece of work: CUDA allocator peak on GPU, peak RSS of a fresh process on CPU."""
import multiprocessing as mp


def peak_rss_bytes():
    """This process's peak resident set (VmHWM). Unlike getrusage's ru_maxrss, which a spawned child
    inherits from its parent's size at fork time, VmHWM belongs to the process's own address space."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def _rss_worker(setup, run, args, queue):
    inputs = setup(*args)
    before = peak_rss_bytes()
    run(*inputs)
    queue.put(peak_rss_bytes() - before)


def peak_rss_increase(setup, run, *args, timeout=600):
    """Bytes by which a fresh (spawned) process's peak RSS grows while running run(*setup(*args)).

    setup builds the inputs first, so the figure is the extra memory of the work itself. setup and
    run must be module-level functions (they are pickled by name). A new process is used because a
    process's peak RSS never goes down.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_rss_worker, args=(setup, run, args, queue))
    proc.start()
    try:
        result = queue.get(timeout=timeout)
    finally:
        proc.join(timeout=60)
    if proc.exitcode not in (0, None):
        raise RuntimeError(f"memory probe process exited with code {proc.exitcode}")
    return result
