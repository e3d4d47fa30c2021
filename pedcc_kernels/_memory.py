"""Resident-set measurements on Linux (/proc/self), shared by the demo, the benchmarks and the examples:
the peak RSS of a piece of work in a fresh process, and the primitives the benchmark harness uses."""
import ctypes
import gc
import multiprocessing as mp


def _status_bytes(field_name):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss_bytes():
    """This process's resident set (VmRSS) in bytes, or None where /proc has none."""
    return _status_bytes("VmRSS")


def peak_rss_bytes():
    """This process's peak resident set (VmHWM) in bytes, or None. Unlike getrusage's ru_maxrss,
    which a forked child inherits from its parent, VmHWM belongs to the process's own address space
    and can be reset (reset_peak_rss)."""
    return _status_bytes("VmHWM")


def reset_peak_rss():
    """Set VmHWM back to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_heap():
    """Give freed heap pages back to the OS, so a baseline RSS holds no memory of earlier work that
    the next piece would reuse unseen."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_worker(setup, run, args, queue):
    inputs = setup(*args)
    release_free_heap()
    before = current_rss_bytes() if reset_peak_rss() else peak_rss_bytes()
    run(*inputs)
    queue.put(peak_rss_bytes() - before)


def peak_rss_increase(setup, run, *args, timeout=600):
    """Bytes by which a fresh (spawned) process's peak RSS grows while running run(*setup(*args)).

    setup builds the inputs first, and the peak is reset after it, so the figure is the extra memory
    of the work itself. setup and run must be module-level functions (they are pickled by name).
    """
    if peak_rss_bytes() is None:
        raise RuntimeError("peak RSS needs Linux's /proc/self/status (VmHWM)")
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
