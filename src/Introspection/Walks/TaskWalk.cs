using SEmigrate.Introspection.Kernel;

namespace SEmigrate.Introspection.Walks;

/// <summary>The task list from init_task.tasks. Bounded (at most maxTasks),
/// cycle-checked, and each link's prev checked against where we came from: a forged or broken list
/// ends the walk with a problem, never a hang. A thread-group leader that has exited while its
/// threads run on has no mm of its own: it gets the mm of its first thread that has one (else its
/// threads' memory would be walked by nobody).</summary>
public static class TaskWalk
{
    public sealed record Result(IReadOnlyList<GuestTask> Tasks, string? Problem);

    public static Result Run(AddressSpace space, KernelLayout layout, KernelSymbols symbols, int maxTasks = 1 << 20, WalkBudget? budget = null)
    {
        budget ??= WalkBudget.For(space.Memory.GuestPages);
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
            if (t.Mm == 0 && layout.TaskThreadNode != 0 && LiveThreadMm(space, layout, task, budget) is { } mm)
            {
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
            if (tasks.Count >= maxTasks)
            {
                return new Result(tasks, $"task list: more than {maxTasks} tasks: not a plausible list");
            }
            current = next;
        }
    }

    /// <summary>The mm of the first thread of <paramref name="leader"/>'s group that has one (signal->thread_head,
    /// linked through task.thread_node); null for a kernel thread, or when none has one or the list breaks.</summary>
    private static ulong? LiveThreadMm(AddressSpace space, KernelLayout layout, ulong leader, WalkBudget budget)
    {
        if (!space.TryReadInt32(leader + (ulong)layout.TaskFlags, out var flags) || ((uint)flags & KernelLayout.KernelThreadFlag) != 0
            || !space.TryReadUInt64(leader + (ulong)layout.TaskSignal, out var signal) || signal == 0)
        {
            return null;
        }
        var head = signal + (ulong)layout.SignalThreadHead;
        if (!space.TryReadUInt64(head + (ulong)layout.ListNext, out var node))
        {
            return null;
        }
        for (var steps = 0; node != head && steps < 1 << 16 && budget.Take(); steps++)
        {
            if (!space.TryReadUInt64(node - (ulong)layout.TaskThreadNode + (ulong)layout.TaskMm, out var mm)
                || !space.TryReadUInt64(node + (ulong)layout.ListNext, out var next))
            {
                return null;
            }
            if (mm != 0)
            {
                return mm;
            }
            node = next;
        }
        return null;
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
