using SEmigrate.Introspection.Kernel;

namespace SEmigrate.Introspection.Walks;

/// <summary>The task list from init_task.tasks. Bounded (at most maxTasks),
/// cycle-checked, and each link's prev checked against where we came from: a forged or broken list
/// ends the walk with a problem, never a hang.</summary>
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
