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
    public static GuestIntrospection Run(GuestMemory memory, KernelLayout layout)
    {
        var diagnostics = new List<string>(memory.Problems);
        var noFree = new ulong[(memory.PfnLimit + 63) / 64];
        KernelSymbols symbols;
        AddressSpace space;
        try
        {
            (symbols, space) = KernelSymbols.Resolve(memory, layout);
        }
        catch (GuestDataException e)
        {
            diagnostics.Add(e.Message);
            return new GuestIntrospection(null, [], false, [], [], noFree, diagnostics);
        }

        var tasks = TaskWalk.Run(space, layout, symbols, maxTasks: (int)Math.Min(memory.GuestPages, 1 << 22));
        if (tasks.Problem is not null)
        {
            diagnostics.Add(tasks.Problem);
        }
        var processes = tasks.Tasks.Where(t => t.Mm != 0).Select(t => ProcessPages.Run(space, layout, t)).ToList();
        diagnostics.AddRange(processes.Where(p => p.Problem is not null).Select(p => p.Problem!));
        var buddy = BuddyWalk.Run(space, layout, symbols);
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
