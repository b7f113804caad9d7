using SEmigrate.Guest.Memory;
using SEmigrate.Introspection.Kernel;

namespace SEmigrate.Introspection.Walks;

/// <summary>The physical pages a process's page tables map (user half only), from mm->pgd. Bounded:
/// no more leaf pages than the guest has, and a page table reached twice means a forged tree.</summary>
public static class ProcessPages
{
    private const ulong AddressMask = 0x000f_ffff_ffff_f000;

    public sealed record Result(GuestTask Task, ulong[] Pfns, string? Problem);

    /// <summary>_PAGE_PROTNONE (the global bit, on a non-present entry): a PROT_NONE or NUMA-hinting
    /// mapping, whose page is in memory and the process's all the same.</summary>
    private const ulong ProtNone = 1 << 8;

    private const ulong HugePage = 1 << 7;

    public static Result Run(AddressSpace space, KernelLayout layout, GuestTask task, WalkBudget? budget = null)
    {
        budget ??= WalkBudget.For(space.Memory.GuestPages);
        if (!space.TryReadUInt64(task.Mm + (ulong)layout.MmPgd, out var pgd) || !space.TryTranslate(pgd, out var root))
        {
            return new Result(task, [], $"pid {task.Pid} ({task.Comm}): mm->pgd is not in guest memory");
        }
        var memory = space.Memory;
        var pfns = new List<ulong>();
        var tables = new HashSet<ulong>();
        var limit = memory.GuestPages;
        string? problem = null;
        var levels = space.FiveLevel ? 5 : 4;

        // Explicit stack: (table physical address, level, first index, last index).
        var stack = new Stack<(ulong Table, int Level)>();
        stack.Push((root & AddressMask, levels));
        tables.Add(root & AddressMask);
        while (stack.Count > 0 && problem is null)
        {
            var (table, level) = stack.Pop();
            if (!budget.Take())
            {
                problem = $"pid {task.Pid} ({task.Comm}): {budget.Spent}";
                break;
            }
            var last = level == levels ? 255 : 511; // user half of the top level only
            for (var i = 0; i <= last && problem is null; i++)
            {
                if (!memory.TryReadUInt64(table + (ulong)i * 8, out var entry))
                {
                    problem = $"pid {task.Pid} ({task.Comm}): page table at 0x{table:x} is not in guest memory";
                    break;
                }
                // As the kernel's pte_present and pmd_present see it: a PROT_NONE page is present.
                var present = (entry & 1) != 0 || (level == 1 && (entry & ProtNone) != 0) || (level == 2 && (entry & (ProtNone | HugePage)) != 0);
                if (!present)
                {
                    continue; // empty, or a swap entry: not in memory
                }
                var huge = level is 2 or 3 && (entry & HugePage) != 0;
                if (level == 1 || huge)
                {
                    var span = 1UL << (9 * (level - 1));
                    if (!budget.Take((long)span))
                    {
                        problem = $"pid {task.Pid} ({task.Comm}): {budget.Spent}";
                        break;
                    }
                    var first = (entry & AddressMask) >> GuestMemory.PageShift & ~(span - 1);
                    for (var p = first; p < first + span; p++)
                    {
                        pfns.Add(p);
                    }
                    if ((ulong)pfns.Count > limit)
                    {
                        problem = $"pid {task.Pid} ({task.Comm}): page tables map more pages than the guest has: forged";
                    }
                    continue;
                }
                var next = entry & AddressMask;
                if (!tables.Add(next))
                {
                    problem = $"pid {task.Pid} ({task.Comm}): page table 0x{next:x} is reached twice: forged";
                    break;
                }
                stack.Push((next, level - 1));
            }
        }
        pfns.Sort();
        var distinct = pfns.Distinct().Where(memory.IsGuestPage).ToArray();
        return new Result(task, distinct, problem);
    }
}
