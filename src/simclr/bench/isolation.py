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


def _fresh_process_context(module: str):
    """``forkserver`` where the platform has it, else ``spawn``.

    The fork server is a fresh interpreter that imports torch and ``module`` once and runs nothing; each pipeline's
    process is forked from it, so it starts with the heap of an import and nothing else, as a spawned process does,
    without paying the import again (about 4 s a process on a 2-core CPU: 25 s of the default bench's six). Nothing
    has started a thread pool or touched a device in the server, so forking it is safe.
    """
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torchvision", "simclr.bench", module])  # read at the server's start, once
    return ctx


def run_pipeline(fn: Callable, *args, isolate: bool = True):
    """``fn(*args)``, in a fresh process unless ``isolate`` is False.

    On the CPU a pipeline's speed depends on what ran before it in the same process: glibc serves large blocks
    from whatever free heap an earlier pipeline left (already faulted in) or maps them afresh, and no user's
    training run starts with another pipeline's heap. Each pipeline therefore runs in a process of its own
    (nothing inherited but the arguments; see :func:`_fresh_process_context`), as a user's training run would.
    ``fn`` must be a module-level function; its result comes back pickled. :func:`run_bench` does this on the CPU; on a GPU the pipelines share
    the process, because CUDA's caching allocator holds the same blocks after the warm-up whatever ran before, and
    a fresh CUDA context per pipeline would cost seconds each.

    Raises:
        PipelineError: ``fn`` raised in the child (its exception and the end of its traceback), or the child died.
    """
    if not isolate:
        return fn(*args)
    ctx = _fresh_process_context(fn.__module__)
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
