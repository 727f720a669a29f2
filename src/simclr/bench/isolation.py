"""Each pipeline in a fresh process of its own (:func:`run_pipeline`), as a user's run would be: on the CPU, in a
shared process the heap an earlier pipeline left behind changes the speed of the next."""

from __future__ import annotations

from collections.abc import Callable


class PipelineError(RuntimeError):
    """A pipeline failed in its own process (the message carries the child's exception)."""


def _child_main(conn, fn: Callable, args: tuple) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, which decides
        import traceback

        where = "".join(traceback.format_exception(e)[-3:-1]).rstrip()
        conn.send(("error", f"{type(e).__name__}: {e}\n{where}"))
    finally:
        conn.close()


def run_pipeline(fn: Callable, *args, isolate: bool = True):
    """``fn(*args)``, in a fresh process unless ``isolate`` is False.

    On the CPU a pipeline's speed depends on what ran before it in the same process: glibc serves large blocks
    from whatever free heap an earlier pipeline left (already faulted in) or maps them afresh, and no user's
    training run starts with another pipeline's heap. Each pipeline therefore runs in a process of its own
    (``spawn``: nothing inherited but the arguments), as a user's training run would. ``fn`` must be a module-level
    function; its result comes back pickled. :func:`run_bench` does this on the CPU; on a GPU the pipelines share
    the process, because CUDA's caching allocator holds the same blocks after the warm-up whatever ran before, and
    a fresh CUDA context per pipeline would cost seconds each.

    Raises:
        PipelineError: ``fn`` raised in the child (its exception and the end of its traceback), or the child died.
    """
    if not isolate:
        return fn(*args)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child, fn, args), daemon=False)  # DataLoader workers need children
    proc.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:
        proc.join()
        raise PipelineError(f"the benchmark process of {fn.__name__} died (exit code {proc.exitcode}); "
                            "out of memory? try a smaller --batch-size") from None
    finally:
        parent.close()
    proc.join()
    if status == "error":
        raise PipelineError(value)
    return value
