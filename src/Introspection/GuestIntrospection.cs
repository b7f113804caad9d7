using SEmigrate.Guest.Memory;
using SEmigrate.Introspection.Kernel;
using SEmigrate.Introspection.Walks;

namespace SEmigrate.Introspection;

/// <summary>Everything read from one guest: its kernel's symbols, tasks, per-zone free pages, each
/// user process's pages, and what went wrong (Diagnostics). Never throws for bad guest data: a walk
/// that breaks leaves a diagnostic and less trust (see Classifier).</summary>
public sealed record GuestIntrospection(
    KernelSymbols? Symbols,
    IReadOnlyList<GuestTask> Tasks,
    bool TaskListComplete,
    IReadOnlyList<BuddyWalk.Zone> Zones,
    IReadOnlyList<ProcessPages.Result> Processes,
    ulong[] FreeBitmap,
    IReadOnlyList<string> Diagnostics)
{
    /// <summary>Walks the guest within <paramref name="budget"/> (default <see cref="WalkBudget.For"/> its size),
    /// stopping at once when <paramref name="ct"/> is cancelled (OperationCanceledException).</summary>
    public static GuestIntrospection Run(GuestMemory memory, KernelLayout layout, CancellationToken ct = default, WalkBudget? budget = null)
    {
        budget ??= WalkBudget.For(memory.GuestPages, ct);
        var diagnostics = new List<string>(memory.Problems);
        var noFree = new ulong[(memory.PfnLimit + 63) / 64];
        KernelSymbols symbols;
        AddressSpace space;
        try
        {
            (symbols, space) = KernelSymbols.Resolve(memory, layout, budget);
        }
        catch (GuestDataException e)
        {
            diagnostics.Add(e.Message);
            return new GuestIntrospection(null, [], false, [], [], noFree, diagnostics);
        }

        var tasks = TaskWalk.Run(space, layout, symbols, maxTasks: (int)Math.Min(memory.GuestPages, 1 << 22), budget);
        if (tasks.Problem is not null)
        {
            diagnostics.Add(tasks.Problem);
        }
        // An mm shared by several tasks (CLONE_VM, or forged to be) is walked once: each of them maps its pages.
        var processes = new List<ProcessPages.Result>();
        foreach (var shared in tasks.Tasks.Where(t => t.Mm != 0).GroupBy(t => t.Mm))
        {
            var walked = ProcessPages.Run(space, layout, shared.First(), budget);
            processes.AddRange(shared.Select(t => walked with { Task = t }));
        }
        diagnostics.AddRange(processes.Where(p => p.Problem is not null).Select(p => p.Problem!).Distinct(StringComparer.Ordinal));
        var buddy = BuddyWalk.Run(space, layout, symbols, budget);
        diagnostics.AddRange(buddy.Problems);

        var mapped = new HashSet<ulong>(processes.SelectMany(p => p.Pfns));
        var both = mapped.Where(pfn => (buddy.FreeBitmap[pfn >> 6] & (1UL << (int)(pfn & 63))) != 0).Take(5).ToList();
        if (both.Count > 0)
        {
            diagnostics.Add($"pages both free and mapped by a process (first: {string.Join(", ", both.Select(p => $"0x{p:x}"))}): kept sealed");
        }
        return new GuestIntrospection(symbols, tasks.Tasks, tasks.Problem is null, buddy.Zones, processes, buddy.FreeBitmap, diagnostics);
    }
}
