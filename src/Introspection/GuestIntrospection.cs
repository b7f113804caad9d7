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

        var tasks = TaskWalk.Run(space, layout, symbols, budget: budget);
        if (tasks.Problem is not null)
        {
            diagnostics.Add(tasks.Problem);
        }
        // An mm shared by several tasks (CLONE_VM, or forged to be: thousands) is walked, and its pages gone
        // through, once: each of them maps its pages (the same array).
        var processes = new List<ProcessPages.Result>();
        var mapped = new HashSet<ulong>();
        foreach (var shared in tasks.Tasks.Where(t => t.Mm != 0).GroupBy(t => t.Mm))
        {
            var walked = ProcessPages.Run(space, layout, shared.First(), budget);
            processes.AddRange(shared.Select(t => walked with { Task = t }));
            mapped.UnionWith(walked.Pfns);
            if (walked.Problem is not null)
            {
                diagnostics.Add(walked.Problem);
            }
        }
        var buddy = BuddyWalk.Run(space, layout, symbols, budget);
        diagnostics.AddRange(buddy.Problems);

        var both = mapped.Where(pfn => (buddy.FreeBitmap[pfn >> 6] & (1UL << (int)(pfn & 63))) != 0).Take(5).ToList();
        if (both.Count > 0)
        {
            diagnostics.Add($"pages both free and mapped by a process (first: {string.Join(", ", both.Select(p => $"0x{p:x}"))}): kept sealed");
        }
        return new GuestIntrospection(symbols, tasks.Tasks, tasks.Problem is null, buddy.Zones, processes, buddy.FreeBitmap, Bounded(diagnostics));
    }

    /// <summary>Diagnostics kept: they travel in workflow payloads and audit events, and a forged guest can
    /// make one for every task or zone it lists.</summary>
    public const int MaxDiagnostics = 64;

    private static List<string> Bounded(List<string> diagnostics) =>
        diagnostics.Count <= MaxDiagnostics
            ? diagnostics
            : [.. diagnostics.Take(MaxDiagnostics), $"and {diagnostics.Count - MaxDiagnostics} more diagnostics"];
}
