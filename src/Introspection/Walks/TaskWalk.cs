using SEmigrate.Introspection.Kernel;

namespace SEmigrate.Introspection.Walks;

/// <summary>The task list from init_task.tasks. Bounded (at most one task per kernel stack the guest could hold),
/// cycle-checked, and each link's prev checked against where we came from: a forged or broken list
/// ends the walk with a problem, never a hang. A thread-group leader that has exited while its
/// threads run on has no mm of its own: it gets the mm of its first thread that has one (else its
/// threads' memory would be walked by nobody).</summary>
public static class TaskWalk
{
    public sealed record Result(IReadOnlyList<GuestTask> Tasks, string? Problem);

    /// <summary>PID_MAX_LIMIT on 64-bit: no more tasks than pids.</summary>
    public const int PidMaxLimit = 1 << 22;

    /// <summary>Every task has a kernel stack of its own, THREAD_SIZE (16 KiB, 4 pages) on x86-64.</summary>
    public const int PagesPerTask = 4;

    /// <summary>Threads walked in one thread group to find an exited leader's mm: the first live thread has it.</summary>
    public const int MaxThreads = 1 << 16;

    /// <summary>Walks at most <paramref name="maxTasks"/> tasks (default: as many as the guest has room for kernel stacks).</summary>
    public static Result Run(AddressSpace space, KernelLayout layout, KernelSymbols symbols, int? maxTasks = null, WalkBudget? budget = null)
    {
        budget ??= WalkBudget.For(space.Memory.GuestPages);
        var max = maxTasks ?? (int)Math.Min(space.Memory.GuestPages / PagesPerTask, PidMaxLimit);
        var tasks = new List<GuestTask>();
        var head = symbols.InitTask + (ulong)layout.TaskTasks;
        var seen = new HashSet<ulong> { head };
        var current = head;
        while (true)
        {
            if (!budget.Take())
            {
                return new Result(tasks, $"task list: {budget.Spent}");
            }
            var task = current - (ulong)layout.TaskTasks;
            if (!TryReadTask(space, layout, task, out var t))
            {
                return new Result(tasks, $"task list: task at 0x{task:x} (after pid {tasks.LastOrDefault()?.Pid}) is not in guest memory");
            }
            if (t.Mm == 0 && layout.TaskThreadNode != 0)
            {
                var (mm, problem) = LiveThreadMm(space, layout, task, budget);
                if (problem is not null)
                {
                    return new Result(tasks, $"task list: pid {t.Pid}'s threads: {problem}");
                }
                t = t with { Mm = mm };
            }
            tasks.Add(t);
            if (!space.TryReadUInt64(current + (ulong)layout.ListNext, out var next))
            {
                return new Result(tasks, $"task list: the link after pid {t.Pid} is not in guest memory");
            }
            if (next == head)
            {
                return new Result(tasks, null);
            }
            if (!space.TryReadUInt64(next + (ulong)layout.ListPrev, out var prev))
            {
                return new Result(tasks, $"task list: pointer 0x{next:x} after pid {t.Pid} is outside guest memory");
            }
            if (prev != current)
            {
                return new Result(tasks, $"task list: the link after pid {t.Pid} to 0x{next:x} does not point back (prev 0x{prev:x}): forged or corrupt");
            }
            if (!seen.Add(next))
            {
                return new Result(tasks, $"task list: cycle at 0x{next:x} after pid {t.Pid}");
            }
            if (tasks.Count >= max)
            {
                return new Result(tasks, $"task list: more than {max} tasks: not a plausible list");
            }
            current = next;
        }
    }

    /// <summary>The mm of the first thread of <paramref name="leader"/>'s group that has one (signal->thread_head,
    /// linked through task.thread_node); 0 for a kernel thread, or when none has one. A list that breaks, or
    /// runs past <see cref="MaxThreads"/> (a cycle), is a problem: whose memory that group maps is unknown.</summary>
    private static (ulong Mm, string? Problem) LiveThreadMm(AddressSpace space, KernelLayout layout, ulong leader, WalkBudget budget)
    {
        if (!space.TryReadInt32(leader + (ulong)layout.TaskFlags, out var flags) || ((uint)flags & KernelLayout.KernelThreadFlag) != 0
            || !space.TryReadUInt64(leader + (ulong)layout.TaskSignal, out var signal) || signal == 0)
        {
            return (0, null);
        }
        var head = signal + (ulong)layout.SignalThreadHead;
        if (!space.TryReadUInt64(head + (ulong)layout.ListNext, out var node))
        {
            return (0, $"thread list at 0x{head:x} is not in guest memory");
        }
        for (var steps = 0; node != head; steps++)
        {
            if (!budget.Take())
            {
                return (0, budget.Spent);
            }
            if (steps >= MaxThreads)
            {
                return (0, $"more than {MaxThreads} threads before one with an mm: a cycle");
            }
            if (!space.TryReadUInt64(node - (ulong)layout.TaskThreadNode + (ulong)layout.TaskMm, out var mm)
                || !space.TryReadUInt64(node + (ulong)layout.ListNext, out var next))
            {
                return (0, $"thread at 0x{node:x} is not in guest memory");
            }
            if (mm != 0)
            {
                return (mm, null);
            }
            node = next;
        }
        return (0, null);
    }

    private static bool TryReadTask(AddressSpace space, KernelLayout layout, ulong task, out GuestTask result)
    {
        result = null!;
        if (!space.TryReadInt32(task + (ulong)layout.TaskPid, out var pid)
            || !space.TryReadUInt64(task + (ulong)layout.TaskMm, out var mm))
        {
            return false;
        }
        Span<byte> comm = stackalloc byte[layout.TaskCommSize];
        if (!space.TryRead(task + (ulong)layout.TaskComm, comm))
        {
            return false;
        }
        var end = comm.IndexOf((byte)0);
        var name = System.Text.Encoding.ASCII.GetString(end < 0 ? comm : comm[..end]);
        result = new GuestTask(pid, name, task, mm);
        return true;
    }
}
